"""benchmarks.variants end to end on the CPU interpreter: every variant is checked against SDPA before it
is timed, and a variant that cannot render is reported in its cell instead of stopping the run."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_variants_table_checks_each_variant_and_reports_failures(tmp_path: Path) -> None:
    variants = {"default": {}, "tiles-16x32": {"block_n": 32}, "v9": {"template": "flash_v9"}}
    env = {**os.environ, "TRITON_INTERPRET": "1", "AVO_CACHE_DIR": str(tmp_path / "store")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.variants", "--specs", "1,2,2,40,16,causal",
                           "--variants", json.dumps(variants), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = list(csv.DictReader(open(tmp_path / "variants.csv")))
    assert row["spec"].startswith("1,2,2,40,40,16")
    assert float(row["default"]) >= 0 and float(row["tiles-16x32"]) >= 0  # checked against SDPA, then timed
    assert row["v9"].startswith("err: ValueError") and "flash_v9" in row["v9"]
    assert "sdpa" in row


def test_variants_training_checks_gradients(tmp_path: Path) -> None:
    """--training: each provider runs forward + backward, gradients checked against SDPA's, timed as 3.5x FLOPs."""
    variants = {"default": {}, "transposed": {"bwd_transposed": True, "heavy_first": True}}
    env = {**os.environ, "TRITON_INTERPRET": "1", "AVO_CACHE_DIR": str(tmp_path / "store")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.variants", "--specs", "1,2,2,33,16,causal",
                           "--variants", json.dumps(variants), "--training", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = list(csv.DictReader(open(tmp_path / "variants-training.csv")))
    assert row["spec"].endswith(" train")
    assert float(row["default"]) >= 0 and float(row["transposed"]) >= 0  # timed (interpreter: ~0 TFLOP/s)
    assert not any(key.endswith(" check") for key in row), row  # gradients agree with SDPA's


def test_variants_take_masked_and_decode_specs(tmp_path: Path) -> None:
    """Masked (ALiBi, padding) and decode specs in attention.py's spec text: mask tensors reach the variants and
    SDPA alike, and a split-K decode variant (kv_splits) agrees with SDPA."""
    variants = {"default": {}, "splits 2": {"kv_splits": 2}}
    env = {**os.environ, "TRITON_INTERPRET": "1", "AVO_CACHE_DIR": str(tmp_path / "store")}
    specs = "1,4,4,33,16,alibi;2,2,2,17,40,16,padding;2,4,2,1,113,16,none"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.variants", "--specs", specs,
                           "--variants", json.dumps(variants), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "variants.csv")))
    assert [r["spec"].split(" ")[0] for r in rows] == ["1,4,4,33,33,16", "2,2,2,17,40,16", "2,4,2,1,113,16"]
    for row in rows:
        assert float(row["default"]) >= 0, row
        assert not row.get("default check"), row  # agrees with SDPA given the same mask
    assert float(rows[2]["splits 2"]) >= 0 and not rows[2].get("splits 2 check"), rows[2]
