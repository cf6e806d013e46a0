"""flash_ws90 (the Gluon Hopper forward) on a machine without a GPU: which specs get it by default, what it refuses
to render, that its module passes the allowlist and loads, and that it compiles for sm_90 with this Triton
(Triton ships ptxas, so the whole pipeline down to a cubin runs on CPU). Numerics run on the GPU:
tests/test_gpu_kernels.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avo_inductor.kernels import launch
from avo_inductor.kernels.grammar import check_source
from avo_inductor.kernels.loader import load_source
from avo_inductor.kernels.render import (
    check_renderable,
    default_genome,
    gluon_hopper_available,
    render,
    ws90_bias_stages,
    ws90_smem_bytes,
)
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind

H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
B200 = HardwareKey("nvidia", "NVIDIA B200", (10, 0), 148)
CPU = HardwareKey("cpu", "interpreter", (0, 0), 4)
needs_gluon = pytest.mark.skipif(not gluon_hopper_available(), reason="this Triton has no Gluon Hopper API")


def _spec(**kw) -> AttentionSpec:
    base = dict(batch=4, q_heads=16, kv_heads=16, q_len=4000, kv_len=4000, head_dim=128, dtype="bfloat16")
    base.update(kw)
    return AttentionSpec(**base)


@needs_gluon
@pytest.mark.parametrize("kw,hardware,expected", [
    ({}, H100, "flash_ws90"),
    ({"causal": True, "kv_heads": 2, "q_len": 4000, "kv_len": 4000}, H100, "flash_ws90"),
    ({"dtype": "float16", "q_len": 1000, "kv_len": 8192}, H100, "flash_ws90"),
    ({"head_dim": 64}, H100, "flash_v1"),          # d64: flash_v1 measured ahead
    ({"q_len": 1, "kv_len": 8192}, H100, "flash_v1"),  # decode: split-K
    ({"mask": MaskKind.BIAS}, H100, "flash_ws90"),  # 16-byte bias rows: streamed through TMA
    ({"mask": MaskKind.BIAS, "head_dim": 64, "causal": True}, H100, "flash_ws90"),
    ({"mask": MaskKind.BIAS, "q_len": 4001, "kv_len": 4001}, H100, "flash_v1"),  # pointer loads: measured slower
    ({"mask": MaskKind.ALIBI, "causal": True}, H100, "flash_v1"),
    ({"mask": MaskKind.BOOL}, H100, "flash_v1"),
    ({"causal": True, "window": 256}, H100, "flash_v1"),
    ({"dtype": "float32"}, H100, "flash_v1"),
    ({"head_dim": 128, "v_head_dim": 64}, H100, "flash_v1"),
    ({}, B200, "flash_v1"),                        # no wgmma on sm_100
    ({}, CPU, "flash_v1"),
    ({"batch": 4, "q_heads": 32, "kv_heads": 32, "q_len": 1024, "kv_len": 1024}, H100, "flash_ws90"),  # 69 GFLOP
    ({"batch": 2, "q_heads": 32, "kv_heads": 32, "q_len": 1024, "kv_len": 1024}, H100, "flash_v1"),  # host-bound
])
def test_default_genome_picks_ws90_only_where_it_applies(kw, hardware, expected):
    genome = default_genome(_spec(**kw), hardware)
    assert genome.template == expected
    # persistent tile loop only without a causal mask (measured ahead dense, behind causal)
    assert genome.persistent == (expected == "flash_ws90" and not _spec(**kw).causal)
    check_renderable(genome, _spec(**kw))


@pytest.mark.parametrize("kw,knobs,problem", [
    ({"mask": MaskKind.PADDING}, {}, "mask padding"),
    ({"head_dim": 96}, {}, "head dims 96"),
    ({"dtype": "float32"}, {}, "dtype float32"),
    ({}, {"block_m": 128}, "tiles 128x128"),
    ({}, {"num_warps": 8}, "tiles"),
    ({}, {"num_stages": 3}, "3 stages"),       # 2 * (128 + 6 * 128) * 128 bytes: over shared memory at d128
    ({}, {"use_tma": True}, "use_tma"),
    ({}, {"lazy_rescale": True}, "lazy_rescale"),
    ({}, {"kv_splits": 2}, "kv_splits"),
])
def test_ws90_refuses_what_it_does_not_implement(kw, knobs, problem):
    genome = default_genome(_spec(), H100, "flash_ws90").replace(**knobs)
    with pytest.raises(ValueError, match="flash_ws90 cannot render") as info:
        check_renderable(genome, _spec(**kw))
    assert problem in str(info.value)


def test_ws90_stage_budget_follows_shared_memory():
    genome = default_genome(_spec(head_dim=64), H100, "flash_ws90")
    assert ws90_smem_bytes(genome.replace(num_stages=4), 64) == 2 * (128 + 8 * 128) * 64
    check_renderable(genome.replace(num_stages=4), _spec(head_dim=64))  # 147 KB fits at d64


def test_bias_ring_depth_follows_shared_memory():
    """Two stages of both warpgroups' bias tiles where they fit beside Q/K/V (d128 with 128-key tiles: 160 + 64 of
    the 227 KB), one where only one fits, none where Q/K/V alone fill the budget (pointer loads then)."""
    assert ws90_bias_stages(64, 128, 2, 128) == 2
    assert ws90_bias_stages(64, 128, 2, 136) == 1  # 170 KB of Q/K/V: one 32 KB stage and the 16 KB scratch
    assert ws90_bias_stages(64, 128, 3, 64) == 2
    assert ws90_bias_stages(64, 64, 4, 128) == 2
    assert ws90_bias_stages(64, 128, 3, 128) == 0


def _ring(bias: torch.Tensor, dtype: torch.dtype = torch.bfloat16, n: int = 1024) -> launch.BiasRing | None:
    cfg = launch.LaunchConfig.from_dict({"grid": "ws90", "BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4,
                                         "num_stages": 2})
    q = torch.empty(2, 8, n, 128, dtype=dtype)
    m, strides, code = launch.mask_operand(q, bias, "bias", n)
    assert code == 1
    return launch._ws90_bias_ring(m, strides, dtype, cfg, 128)


@pytest.mark.parametrize("shape,expected", [
    ((2, 8, 1024, 1024), launch.BiasRing(2, False, False)),
    ((1, 8, 1024, 1024), launch.BiasRing(2, True, False)),
    ((2, 1, 1024, 1024), launch.BiasRing(2, False, True)),
    ((1024, 1024), launch.BiasRing(2, True, True)),
    ((2, 8, 1, 1024), None),  # one row for every query (stride 0): not a TMA tile
])
def test_bias_ring_takes_tma_ready_biases_and_broadcasts(shape, expected):
    assert _ring(torch.randn(shape, dtype=torch.bfloat16)) == expected


def test_bias_ring_refuses_what_tma_cannot_read():
    assert _ring(torch.randn(2, 8, 1024, 1024, dtype=torch.float32)) is None  # not q's 16-bit type
    assert _ring(torch.randn(2, 8, 1000, 1001, dtype=torch.bfloat16)[..., :1000], n=1000) is None  # 2002-byte rows
    assert _ring(torch.randn(2, 8, 1024, 1024, dtype=torch.bfloat16).transpose(2, 3)) is None  # keys not unit stride
    unaligned = torch.randn(2 * 8 * 1024 * 1024 + 1, dtype=torch.bfloat16)[1:].view(2, 8, 1024, 1024)
    assert _ring(unaligned) is None
    assert _ring(torch.randn(2, 8, 1000, 1000, dtype=torch.bfloat16), n=1000) is not None  # 2000-byte rows: 16 x 125


def _ws90_plan(bias: torch.Tensor | None, n: int = 1024) -> launch.ForwardPlan:
    cfg = launch.LaunchConfig.from_dict({"grid": "ws90", "BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4,
                                         "num_stages": 2})
    q, k, v = (torch.randn(2, h, n, 128, dtype=torch.bfloat16) for h in (8, 2, 2))
    kind = "none" if bias is None else "bias"
    m, strides, code = launch.mask_operand(q, bias, kind, n)
    return launch._plan_forward(launch.KernelFunctions(fwd=object()), cfg, {"q": q, "k": k, "v": v, "mask": m},
                                strides, code, scale=None, causal=False, window=0, mask_kind=kind)


@needs_gluon
def test_ws90_plan_passes_the_bias_ring_or_none():
    """The plan names what the kernel gets: a bias descriptor over the mask role with the ring's constexprs, or
    B_DESC None (no bias, or a bias TMA cannot read: pointer loads)."""
    plan = _ws90_plan(torch.randn(8, 1024, 1024, dtype=torch.bfloat16))  # broadcast batch
    (launched,) = plan.launches
    assert plan.descriptors["b_desc"].source == "mask" and plan.descriptors["b_desc"].block == (1, 1, 64, 128)
    assert launched.tensors["B_DESC"] == "b_desc" and "B_DESC" not in launched.static
    assert (launched.static["BIAS_TMA"], launched.static["BIAS_STAGES"], launched.static["BIAS_BCAST_B"],
            launched.static["BIAS_BCAST_H"], launched.static["MASK_KIND"]) == (True, 2, True, False, 1)
    for plan in (_ws90_plan(None), _ws90_plan(torch.randn(2, 8, 1024, 1024, dtype=torch.float32))):
        (launched,) = plan.launches
        assert "b_desc" not in plan.descriptors and launched.static["B_DESC"] is None
        assert launched.static["BIAS_TMA"] is False and "B_DESC" not in launched.tensors


@needs_gluon
def test_ws90_descriptor_reads_a_broadcast_dimension_at_size_one():
    bias = torch.broadcast_to(torch.randn(8, 1024, 1024, dtype=torch.bfloat16), (2, 8, 1024, 1024))
    spec = launch.DescriptorSpec("mask", (1, 1, 64, 128), launch._ws90_layout((1, 1, 64, 128), torch.bfloat16))
    desc = launch._ws90_descriptor(bias, spec)
    assert list(desc.shape) == [1, 8, 1024, 1024]
    assert list(desc.strides) == [8 * 1024 * 1024, 1024 * 1024, 1024, 1]


def test_a_pinned_template_is_kept_on_every_device():
    """A pinned family is what the caller gets, also where the default would differ (benchmarks' --template)."""
    assert default_genome(_spec(), CPU, "flash_ws90").template == "flash_ws90"
    assert default_genome(_spec(), B200, "flash_ws90").template == "flash_ws90"
    assert default_genome(_spec(), H100, "flash_v1").template == "flash_v1"
    with pytest.raises(ValueError, match="unknown kernel template"):
        default_genome(_spec(), CPU, "flash_v9")


def test_unknown_pinned_template_is_refused():
    with pytest.raises(ValueError, match="unknown kernel template"):
        default_genome(_spec(), H100, "flash_v9")


@needs_gluon
def test_rendered_module_passes_the_allowlist_and_loads():
    spec = _spec(causal=True, needs_grad=True)
    rk = render(default_genome(spec, H100), spec)
    assert rk.entry_point == "attn_fwd_ws90" and rk.launch_dict["grid"] == "ws90"
    assert render(default_genome(spec, H100).replace(persistent=True), spec).launch.grid == "ws90_persistent"
    assert check_source(rk.source, ("attn_fwd_ws90", "attn_bwd_dkdv", "attn_bwd_dq")) == []
    kernel = load_source(rk.source, rk.entry_point, rk.bwd_entry_point, rk.launch_dict)
    assert type(kernel.functions.fwd).__name__ == "GluonJITFunction"
    assert kernel.functions.has_backward  # training runs flash_v1's backward on the ws90 forward's LSE


def test_allowlist_admits_gluon_but_nothing_else_from_triton_experimental():
    ok = "from triton.experimental import gluon\nfrom triton.experimental.gluon import language as gl\n"
    assert check_source(ok) == []
    bad = check_source("from triton.experimental import gluon, other\n")
    assert bad and "only gluon" in bad[0].message


def test_ws90_launch_config_is_validated():
    good = {"grid": "ws90", "BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2}
    assert launch.LaunchConfig.from_dict(good).grid == "ws90"
    for bad in ({"num_warps": 8}, {"kv_splits": 2}, {"pack_gqa": True}):
        with pytest.raises(ValueError):
            launch.LaunchConfig.from_dict({**good, **bad})


@needs_gluon
@pytest.mark.parametrize("head_dim,block_n,stages,causal,mask_kind,persistent,bias_tma", [
    (128, 128, 2, True, 0, False, False), (64, 128, 3, False, 3, False, False), (128, 64, 4, False, 1, False, False),
    (128, 128, 2, False, 0, True, False), (128, 128, 2, True, 1, True, False), (128, 128, 2, False, 1, True, True),
    (64, 128, 3, True, 1, False, True)])
def test_ws90_compiles_for_sm90_without_a_gpu(head_dim, block_n, stages, causal, mask_kind, persistent, bias_tma):
    """Frontend, layouts, warp specialization and ptxas for sm_90a (in a fresh process without the suite's
    TRITON_INTERPRET): FA3's register split (setmaxnreg to 240 for the math warpgroups), async warpgroup MMAs,
    TMA copies, shared memory within the 227 KB a block may use."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    argv = [str(a) for a in (head_dim, block_n, stages, int(causal), mask_kind, int(persistent), int(bias_tma))]
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_ws90_compile.py")), *argv],
                          capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["math_regs_240"] and report["wgmma"] and report["tma"] and report["cubin_bytes"] > 0
    genome = default_genome(_spec(head_dim=head_dim), H100, "flash_ws90").replace(block_n=block_n, num_stages=stages)
    ring = 2 * 2 * 64 * block_n * ws90_bias_stages(64, block_n, stages, head_dim) if bias_tma else 0
    assert ws90_smem_bytes(genome, head_dim) + ring <= report["shared"] <= 227 * 1024


def test_search_space_follows_the_ws90_template():
    """Mutations of a flash_ws90 genome stay in what it renders: no flash_v1-only forward knob, fixed warpgroup
    shape; exp2/causal_split only when the spec trains (they shape the borrowed backward)."""
    import random

    from avo_inductor.search.operators import crossover, mutate, spec_space

    spec = _spec(causal=True)
    space = spec_space(spec, H100, "flash_ws90")
    assert space["block_m"] == (64,) and space["num_warps"] == (4,) and space["block_n"] == (64, 128)
    assert not {"use_tma", "kv_splits", "overlap_qk", "exp2"} & set(space) and space["persistent"] == (False, True)
    assert "exp2" in spec_space(_spec(causal=True, needs_grad=True), H100, "flash_ws90")
    genome = default_genome(spec, H100)
    rng = random.Random(0)
    for _ in range(50):
        child = mutate(genome, spec, rng, 2, H100)
        assert child.template == "flash_ws90" and child.block_m == 64 and not child.use_tma
    flash_v1 = default_genome(spec, H100, "flash_v1")
    assert crossover(genome, flash_v1, spec, rng, H100) == genome


def test_full_rank_descriptors_copy_only_what_tma_cannot_read():
    """flash_ws90's 4-d descriptors: a (B, N, H, D) view passes as is; a broadcast (stride-0) head, a padded row
    stride that is not 16-byte aligned, and an aligned-shape view at an odd offset are copied to fresh memory."""
    base = torch.randn(2, 40, 4, 64, dtype=torch.bfloat16)
    view = base.transpose(1, 2)
    assert launch._for_descriptors(view, full_rank=True) is view
    expanded = torch.randn(2, 1, 40, 64, dtype=torch.bfloat16).expand(2, 4, 40, 64)
    assert launch._for_descriptors(expanded) is expanded  # the (N, D)-tile rule allows a broadcast head
    copied = launch._for_descriptors(expanded, full_rank=True)
    assert copied is not expanded and copied.stride(1) > 0 and torch.equal(copied, expanded)
    padded = torch.randn(2, 4, 40, 68, dtype=torch.bfloat16)[..., :64]
    assert launch._for_descriptors(padded, full_rank=True).is_contiguous()
    offset = torch.randn(2 * 4 * 40 * 64 + 1, dtype=torch.bfloat16)[1:].view(2, 4, 40, 64)
    fresh = launch._for_descriptors(offset, full_rank=True)
    assert fresh.data_ptr() % 16 == 0 and torch.equal(fresh, offset)


@needs_gluon
@pytest.mark.parametrize("needs_grad", [False, True])
def test_traced_ws90_forward_becomes_the_direct_op(monkeypatch: pytest.MonkeyPatch, needs_grad: bool) -> None:
    """AOTAutograd's forward graph calls a Gluon forward through avo::attention_fwd_direct (a plain library op:
    none of custom_op's per-call Python layers) with the arguments the public op got, for inference and for
    training graphs. The functional rule is the one CUDA registers (this machine runs the interpreter's)."""
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    from avo_inductor.kernels import op
    from avo_inductor.kernels.baseline import baseline_record

    spec = _spec(q_len=1024, kv_len=1024, causal=True)
    kid = op.register_kernel(baseline_record(spec, H100, genome=default_genome(spec, H100, "flash_ws90")))
    monkeypatch.setitem(op.attention_fwd._torch_dispatch_fns, FunctionalTensorMode, op._fwd_functional)
    graphs = []

    class Traced(Exception):
        """Raised instead of running the graph: a Gluon kernel has no CPU launch."""

    def keep(gm, _inputs):
        graphs.append(gm)

        def run(*_args):
            raise Traced
        return run

    fn = aot_function(lambda q, k, v: op.attention(q, k, v, kernel_id=kid, causal=True, scale=0.25),
                      fw_compiler=keep, bw_compiler=keep)
    q, k, v = (torch.randn(1, 2, 64, 128, dtype=torch.bfloat16, requires_grad=needs_grad) for _ in range(3))
    with pytest.raises(Traced):
        fn(q, k, v)
    calls = [n for n in graphs[0].graph.nodes if n.op == "call_function" and "avo" in str(n.target)]
    assert [str(n.target) for n in calls] == ["avo.attention_fwd_direct.default"]
    assert calls[0].args[4:] == (kid, 0.25, True, 0, "none")
