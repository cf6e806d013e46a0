"""The fused Gluon backward (knob bwd_ws90, templates/flash_ws90_bwd.py) on a machine without a GPU: what render
admits and refuses, where the search may propose it, that the module passes the allowlist and binds the kernel,
which calls the launcher hands it, that a traced backward stays opaque, and that it compiles for sm_90a with this
Triton. Numerics run on the GPU: tests/test_gpu_kernels.py (the bwd_ws90 rows of its grid)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avo_inductor.kernels import launch
from avo_inductor.kernels.loader import load_source, required_functions
from avo_inductor.kernels.render import (
    check_renderable,
    default_genome,
    fused_bwd_problem,
    gluon_hopper_available,
    render,
)
from avo_inductor.search.operators import spec_space
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind

H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
A100 = HardwareKey("nvidia", "NVIDIA A100-SXM4-80GB", (8, 0), 108)
B200 = HardwareKey("nvidia", "NVIDIA B200", (10, 0), 148)
needs_gluon = pytest.mark.skipif(not gluon_hopper_available(), reason="this Triton has no Gluon Hopper API")


def _spec(**kw) -> AttentionSpec:
    base = dict(batch=2, q_heads=8, kv_heads=2, q_len=1000, kv_len=1000, head_dim=128, dtype="bfloat16",
                causal=True, needs_grad=True)
    base.update(kw)
    return AttentionSpec(**base)


@pytest.mark.parametrize("kw", [{}, {"head_dim": 64, "causal": False}, {"dtype": "float16", "q_len": 17},
                                {"q_len": 1000, "kv_len": 113}, {"kv_heads": 8}])
@pytest.mark.parametrize("template", ["flash_v1", "flash_ws90"])
def test_fused_backward_renders_where_it_applies(kw, template):
    spec = _spec(**kw)
    assert fused_bwd_problem(spec) is None
    genome = default_genome(spec, H100, template).replace(bwd_ws90=True)
    source = render(genome, spec)
    assert "def attn_bwd_ws90(" in source.source and source.launch_dict["bwd_ws90"] is True
    assert "attn_bwd_ws90" in required_functions(source.entry_point, source.bwd_entry_point, source.launch_dict)
    # without the knob the module is what it was: no Gluon backward in it
    plain = render(default_genome(spec, H100, template).replace(bwd_ws90=False), spec)
    assert "attn_bwd_ws90" not in plain.source


@pytest.mark.parametrize("kw,problem", [
    ({"dtype": "float32"}, "dtype float32"),
    ({"mask": MaskKind.BIAS}, "mask bias"),
    ({"mask": MaskKind.PADDING}, "mask padding"),
    ({"window": 256}, "window"),
    ({"head_dim": 96}, "head dims 96"),
    ({"head_dim": 128, "v_head_dim": 64}, "head dims 128/64"),
])
def test_fused_backward_refuses_what_it_does_not_implement(kw, problem):
    spec = _spec(**kw)
    assert problem in (fused_bwd_problem(spec) or "")
    with pytest.raises(ValueError, match="bwd_ws90"):
        check_renderable(default_genome(spec, H100, "flash_v1").replace(bwd_ws90=True), spec)


@pytest.mark.parametrize("hardware,kw,offered", [
    (H100, {}, True), (H100, {"head_dim": 64}, True), (H100, {"needs_grad": False}, False),
    (H100, {"mask": MaskKind.BIAS}, False), (A100, {}, False), (B200, {}, False), (None, {}, False)])
def test_search_offers_the_fused_backward_only_on_sm90_for_its_specs(hardware, kw, offered):
    space = spec_space(_spec(**kw), hardware)
    assert (space.get("bwd_ws90", (False,)) == (False, True)) is offered


def test_allowlisted_module_binds_the_fused_kernel():
    spec = _spec()
    rk = render(default_genome(spec, H100, "flash_v1").replace(bwd_ws90=True), spec)
    loaded = load_source(rk.source, rk.entry_point, rk.bwd_entry_point, rk.launch_dict)
    assert loaded.functions.bwd_ws90 is not None and loaded.launch.bwd_ws90
    assert loaded.functions.has_backward  # the Triton backward stays in the module: calls it cannot serve


@pytest.mark.parametrize("change,serves", [
    ({}, True), ({"dtype": torch.float32}, False), ({"d": 96}, False), ({"mask_kind": "bias"}, False),
    ({"window": 64}, False), ({"device": "cpu"}, False)])
def test_launcher_hands_the_fused_kernel_only_calls_it_implements(change, serves, monkeypatch):
    """A record's shape class can reach the launcher with a call outside what render admitted: such a call takes
    the Triton backward of the same module."""
    d = change.get("d", 128)
    q, k, v = (torch.empty(1, 2, 8, d, dtype=change.get("dtype", torch.bfloat16)) for _ in range(3))
    if change.get("device", "cuda") == "cuda":
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    sc = launch._scalars(q, k, v, None, True, change.get("window", 0), change.get("mask_kind", "none"))
    assert launch._fused_bwd_serves(q, k, v, change.get("mask_kind", "none"), sc) is serves


def test_traced_fused_backward_stays_opaque(monkeypatch):
    """Under AOTAutograd a Triton backward decomposes into launches Inductor inlines; a Gluon one cannot go through
    wrap_triton, so the op stays opaque and Inductor calls it as an extern kernel."""
    from avo_inductor.kernels import op
    from avo_inductor.kernels.baseline import baseline_record

    spec = _spec()
    fused = op.register_kernel(baseline_record(spec, H100, genome=default_genome(spec, H100).replace(bwd_ws90=True)))
    plain = op.register_kernel(baseline_record(spec, H100, genome=default_genome(spec, H100).replace(bwd_ws90=False)))
    seen = []
    monkeypatch.setattr(op, "_keep_opaque", lambda *a: seen.append("opaque"))
    monkeypatch.setattr(op, "_decompose_bwd", lambda *a: seen.append("decomposed"))
    for kid in (fused, plain):
        op._bwd_functional(None, None, (), (None,) * 7 + (kid,), {})
    op._bwd_functional(None, None, (), (), {"kernel_id": fused})
    assert seen == ["opaque", "decomposed", "opaque"]


@needs_gluon
@pytest.mark.parametrize("template,head_dim,causal,dtype", [
    ("flash_v1", 128, True, "bfloat16"), ("flash_v1", 64, False, "float16"), ("flash_ws90", 128, False, "bfloat16"),
    ("flash_ws90", 64, True, "bfloat16")])
def test_fused_backward_compiles_for_sm90_without_a_gpu(template, head_dim, causal, dtype):
    """Frontend, layouts, warp specialization and ptxas for sm_90a in a fresh process: async warpgroup MMAs, TMA
    copies and the dq bulk reduce-add, two 4-warp math partitions (256 threads, so the compiler's register cap is
    255 a thread, not the 168 a loader warp would impose), shared memory within the 227 KB a block may use."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_ws90_bwd_compile.py")), template,
                           str(head_dim), str(int(causal)), dtype],
                          capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["reduce_add"] and report["tma"] and report["reqntid"] and report["cubin_bytes"] > 0
    assert report["wgmma"] >= 2 * 5  # five matmuls per warpgroup, each one or more wgmma instructions
    assert 100_000 <= report["shared"] <= 227 * 1024


def test_fused_bwd_probe_cases_are_ones_the_kernel_renders():
    """The GPU probe's numerics cases and training specs are all specs bwd_ws90 renders (a probe case it refused
    would test the Triton backward instead)."""
    from avo_inductor.spec import parse_spec_text
    from benchmarks.probes import fused_bwd

    for hq, hkv, nq, nk, d, causal, dtype in fused_bwd.CHECK_CASES:
        spec = AttentionSpec(2, hq, hkv, nq, nk, d, dtype=dtype, causal=causal, needs_grad=True)
        render(default_genome(spec, H100).replace(bwd_ws90=True), spec)
    lengths = {c[2] for c in fused_bwd.CHECK_CASES} | {c[3] for c in fused_bwd.CHECK_CASES}
    assert {1, 17, 113, 1000} <= lengths and {64, 128} == {c[4] for c in fused_bwd.CHECK_CASES}
    for text in fused_bwd.TRAIN_SPECS.split(";"):
        assert fused_bwd_problem(parse_spec_text(text, needs_grad=True)) is None
