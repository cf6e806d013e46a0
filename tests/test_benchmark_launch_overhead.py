"""benchmarks.launch_overhead on a machine without CUDA: it refuses with a clear message (it times CUDA
launches; the CPU interpreter has none), and picks flash_ws90 only where that template renders on sm_90."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind

ROOT = Path(__file__).resolve().parents[1]


def test_refuses_without_cuda() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.launch_overhead"], capture_output=True, cwd=ROOT,
                          text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


@pytest.mark.parametrize("capability,mask,expected", [((9, 0), MaskKind.NONE, ["flash_v1", "flash_ws90"]),
                                                      ((10, 0), MaskKind.NONE, ["flash_v1"]),
                                                      ((9, 0), MaskKind.PADDING, ["flash_v1"])])
def test_templates_timed_per_spec(capability, mask, expected) -> None:
    from benchmarks.launch_overhead import templates_for

    spec = AttentionSpec(4, 32, 32, 1024, 1024, 128, mask=mask)
    assert templates_for(spec, HardwareKey("nvidia", "gpu", capability, 132)) == expected
