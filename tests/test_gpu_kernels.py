"""GPU check of the kernel grid: `TRITON_INTERPRET=0 pytest -m gpu tests/test_gpu_kernels.py` on an H100/H200.

TRITON_INTERPRET=0 is needed because tests/conftest.py defaults it to 1 (torch 2.11 wrap_triton rejects
interpreted kernels). Passed on an H100 with torch 2.11 / triton 3.6, together with tests/test_gpu_backend.py:
55 tests in 313 s (2026-11-26, session 8: flash_ws90's TMA bias ring, full and broadcast biases, and the pointer
path beside it; benchmarks/results/nvidia-h100/gpu-tests.log).

Same curated grid as the CPU tests, at bf16 with the realistic default GPU tiles and larger lengths, plus
the op under torch.compile(backend="inductor") where Inductor inlines the user Triton kernels.
"""
from __future__ import annotations


import pytest
import torch

from avo_inductor.kernels import launch
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.loader import load_record
from avo_inductor.kernels.op import attention, get_kernel, register_kernel
from avo_inductor.kernels.reference import attention_reference, make_inputs, reference_grads, tolerance
from avo_inductor.check.verify import verify_record
from avo_inductor.kernels.render import default_genome
from avo_inductor.spec import AttentionSpec, HardwareKey

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# (hq, hkv, nq, nk, d, dv, causal, window, mask, knobs)
GRID = [
    (8, 8, 1000, 1000, 128, 128, True, None, "none", {}),
    (8, 2, 113, 1000, 40, 40, True, None, "none", {}),
    (8, 1, 1000, 113, 111, 111, True, None, "none", {}),
    (4, 4, 1, 4096, 128, 128, False, None, "none", {"kv_splits": 8}),
    (4, 2, 17, 1000, 80, 80, False, None, "bias", {}),
    (4, 4, 513, 513, 96, 96, False, None, "bool", {"exp2": False}),
    (4, 2, 256, 1000, 160, 160, False, None, "padding", {}),
    (4, 4, 777, 777, 64, 64, True, 128, "none", {"lazy_rescale": True}),
    (4, 1, 300, 300, 192, 192, False, None, "alibi", {"persistent": True}),
    (4, 4, 256, 256, 224, 64, True, None, "none", {}),
    (4, 4, 1024, 1024, 64, 64, True, None, "none", {"causal_split": False}),
    # pack_gqa (the default genome packs GQA decode): decode split-kv, short causal decode with ALiBi, packed prefill
    (32, 8, 1, 8192, 128, 128, False, None, "none", {}),
    (8, 2, 5, 1000, 72, 72, True, None, "alibi", {}),
    (8, 1, 113, 1000, 40, 40, True, 64, "bias", {"pack_gqa": True, "persistent": True}),
    # K/V through TMA tensor descriptors; heaviest causal tiles first; the tutorial-shaped backward
    (8, 8, 1000, 1000, 128, 128, True, None, "none", {"use_tma": True, "heavy_first": True}),
    (8, 2, 113, 1000, 64, 64, False, None, "bias", {"use_tma": True}),
    (32, 8, 1, 8192, 128, 128, False, None, "none", {"use_tma": True}),
    (8, 8, 1000, 1000, 128, 128, True, None, "none", {"bwd_transposed": True, "bwd_dq_swap": True, "bwd_block_m": 32,
                                                      "bwd_block_n": 128, "bwd_num_warps": 4, "bwd_num_stages": 3}),
    # dq by fp32 atomics from the dK/dV kernel
    (8, 2, 1000, 1000, 128, 128, True, None, "none", {"bwd_dq_atomic": True}),
    (8, 8, 777, 777, 64, 64, True, 128, "bias", {"bwd_dq_atomic": True, "bwd_transposed": False}),
    # ... through TMA reduce-adds of whole tiles (bwd_dq_tma), both dK/dV forms, an odd head dim
    (8, 2, 1000, 1000, 128, 128, True, None, "none", {"bwd_dq_atomic": True, "bwd_dq_tma": True}),
    (8, 8, 777, 777, 72, 72, False, None, "bias", {"bwd_dq_atomic": True, "bwd_dq_tma": True,
                                                    "bwd_transposed": False}),
    # the next block's QK^T before this block's softmax (dense, and a causal tile's full blocks); padded split-K
    # decode whose last splits start past the last key (4100 keys in 16 splits of 320)
    (8, 8, 1024, 1024, 128, 128, False, None, "none", {"overlap_qk": True}),
    (8, 2, 1000, 1000, 64, 64, True, None, "none", {"overlap_qk": True}),
    (32, 8, 1, 4100, 128, 128, False, None, "padding", {"kv_splits": 16}),
    # split_combine: the last split program of each tile combines (one launch): packed decode, padded splits past
    # the last key, unpacked persistent with several query rows, causal ALiBi
    (32, 8, 1, 8192, 128, 128, False, None, "none", {"split_combine": True}),
    (32, 8, 1, 4100, 128, 128, False, None, "padding", {"kv_splits": 16, "split_combine": True}),
    (8, 8, 5, 1000, 64, 64, True, None, "none", {"kv_splits": 4, "pack_gqa": False, "persistent": True,
                                                 "split_combine": True}),
    (8, 2, 3, 1000, 72, 72, True, None, "alibi", {"kv_splits": 8, "split_combine": True}),
    # flash_ws90 (Gluon, sm_90): ragged lengths, GQA, Nq < Nk and Nq > Nk causal (rows with no key), 1-row queries,
    # 64-key tiles with 4 stages; the backward is flash_v1's on the ws90 forward's LSE
    (8, 8, 1000, 1000, 128, 128, True, None, "none", {"template": "flash_ws90"}),
    (8, 2, 113, 1000, 128, 128, True, None, "none", {"template": "flash_ws90"}),
    (8, 1, 1000, 113, 128, 128, True, None, "none", {"template": "flash_ws90"}),
    (4, 4, 17, 17, 64, 64, False, None, "none", {"template": "flash_ws90"}),
    (4, 2, 1, 777, 128, 128, False, None, "none", {"template": "flash_ws90"}),
    (4, 4, 1000, 1000, 64, 64, True, None, "none", {"template": "flash_ws90", "block_n": 64, "num_stages": 4}),
    # flash_ws90 with an additive bias (full and, through the op's broadcast view, per head) and ALiBi
    (8, 2, 1000, 1000, 128, 128, True, None, "bias", {"template": "flash_ws90"}),
    (4, 4, 777, 777, 128, 128, False, None, "bias", {"template": "flash_ws90", "block_n": 64, "num_stages": 4}),
    (4, 4, 113, 1000, 64, 64, False, None, "alibi", {"template": "flash_ws90"}),
    (8, 1, 1000, 113, 128, 128, True, None, "alibi", {"template": "flash_ws90"}),
    # persistent flash_ws90: programs walk tiles (ragged, GQA, rows without keys, bias), the K/V ring running on
    (8, 2, 1000, 1000, 128, 128, True, None, "none", {"template": "flash_ws90", "persistent": True}),
    (8, 1, 1000, 113, 128, 128, True, None, "none", {"template": "flash_ws90", "persistent": True}),
    (4, 4, 777, 777, 64, 64, False, None, "bias", {"template": "flash_ws90", "persistent": True, "num_stages": 3}),
    # the fused Gluon backward (bwd_ws90) behind either forward: ragged lengths, GQA 4 and 8, Nq < Nk and Nq > Nk
    # causal (rows with no key), one query row, d64 and d128
    (8, 8, 1000, 1000, 128, 128, True, None, "none", {"bwd_ws90": True}),
    (8, 2, 113, 1000, 128, 128, True, None, "none", {"bwd_ws90": True}),
    (8, 1, 1000, 113, 64, 64, True, None, "none", {"bwd_ws90": True}),
    (4, 4, 17, 17, 64, 64, False, None, "none", {"bwd_ws90": True}),
    (4, 2, 1, 777, 128, 128, False, None, "none", {"template": "flash_ws90", "bwd_ws90": True}),
    (8, 2, 1000, 1000, 128, 128, True, None, "none", {"template": "flash_ws90", "bwd_ws90": True}),
    (4, 4, 1024, 1024, 64, 64, False, None, "none", {"template": "flash_ws90", "bwd_ws90": True}),
]


@pytest.mark.parametrize("hq,hkv,nq,nk,d,dv,causal,window,mask,knobs", GRID)
def test_gpu_forward_backward_bf16(hq, hkv, nq, nk, d, dv, causal, window, mask, knobs):
    spec = AttentionSpec(2, hq, hkv, nq, nk, d, v_head_dim=dv, dtype="bfloat16", causal=causal, window=window,
                         mask=mask, needs_grad=True)
    hw = HardwareKey.current("cuda")
    genome = default_genome(spec, hw, knobs.get("template", "flash_v1")).replace(**knobs)
    rec = baseline_record(spec, hw, genome=genome)  # template tier: loads what render(genome, spec) gives
    kernel = load_record(rec)
    inp = make_inputs(spec, "cuda")
    args = dict(scale=None, causal=causal, window=window or 0, mask_kind=mask)
    out = torch.full((2, hq, nq, dv), float("nan"), dtype=torch.bfloat16, device="cuda")
    lse = torch.full((2, hq, nq), float("nan"), device="cuda")
    out, lse = launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, inp.v, inp.mask, out=out, lse=lse, **args)
    ref = attention_reference(inp.q, inp.k, inp.v, mask=inp.mask, **args)
    atol, rtol = tolerance("bfloat16")
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    do = torch.randn_like(out)
    bufs = {n: torch.full_like(t, float("nan")) for n, t in (("dq", inp.q), ("dk", inp.k), ("dv", inp.v))}
    got = launch.backward(kernel.functions, kernel.launch, do, inp.q, inp.k, inp.v, out, lse, inp.mask, **bufs, **args)
    gatol, grtol = tolerance("bfloat16", grad=True)
    for g, r in zip(got, reference_grads(inp.q, inp.k, inp.v, do, mask=inp.mask, **args)):
        torch.testing.assert_close(g.double(), r, atol=gatol, rtol=grtol)


@pytest.mark.parametrize("knobs", [{"template": "flash_ws90"},
                                   {"template": "flash_v1", "use_tma": True, "heavy_first": True,
                                    "bwd_transposed": True}])
def test_gpu_verify_baseline_and_compiled_op(knobs):
    """Verified, then compiled by Inductor: flash_v1 inlined (Inductor's launcher installs the scratch allocator
    TMA descriptors need), flash_ws90's Gluon forward called as an opaque op with flash_v1's backward inlined."""
    spec = AttentionSpec(2, 8, 2, 1000, 1000, 128, dtype="bfloat16", causal=True, needs_grad=True)
    genome = default_genome(spec, HardwareKey.current(), knobs["template"]).replace(**knobs)
    rec = baseline_record(spec, genome=genome)
    report = verify_record(rec, "cuda")
    assert report.ok, report.problems
    kid = register_kernel(rec)
    fn = torch.compile(lambda q, k, v: attention(q, k, v, kernel_id=kid, causal=True), backend="inductor",
                       dynamic=True)
    inp = make_inputs(spec, "cuda")
    q, k, v = (t.clone().requires_grad_(True) for t in (inp.q, inp.k, inp.v))
    out = fn(q, k, v)
    do = torch.randn_like(out)
    out.backward(do)
    atol, rtol = tolerance("bfloat16")
    torch.testing.assert_close(out.double(), attention_reference(inp.q, inp.k, inp.v, causal=True), atol=atol, rtol=rtol)
    gatol, grtol = tolerance("bfloat16", grad=True)
    for g, r in zip((q.grad, k.grad, v.grad), reference_grads(inp.q, inp.k, inp.v, do, causal=True)):
        torch.testing.assert_close(g.double(), r, atol=gatol, rtol=grtol)


def test_gpu_split_combine_compiled_and_replayed():
    """split_combine decode inlined by Inductor (its tickets a zero-filled buffer of the compiled graph) and replayed
    from a CUDA graph, with new inputs every call and replay: partials left by the previous call sit at the same
    addresses, so a combine that ran before its tile's partials were stored would read stale ones and fail."""
    spec = AttentionSpec(2, 32, 8, 1, 8192, 128, dtype="bfloat16")
    genome = default_genome(spec, HardwareKey.current()).replace(split_combine=True)
    assert genome.kv_splits > 1
    kid = register_kernel(baseline_record(spec, genome=genome))
    atol, rtol = tolerance("bfloat16")
    fn = torch.compile(lambda q, k, v: attention(q, k, v, kernel_id=kid), backend="inductor")
    for _ in range(4):
        x = make_inputs(spec, "cuda")
        torch.testing.assert_close(fn(x.q, x.k, x.v).double(), attention_reference(x.q, x.k, x.v), atol=atol,
                                   rtol=rtol)
    kernel = get_kernel(kid)
    static = make_inputs(spec, "cuda")
    call = lambda: launch.forward(kernel.functions, kernel.launch, static.q, static.k, static.v, None,  # noqa: E731
                                  scale=None, causal=False, window=0, mask_kind="none")[0]
    call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    for _ in range(8):
        x = make_inputs(spec, "cuda")
        for name in ("q", "k", "v"):
            getattr(static, name).copy_(getattr(x, name))
        out.fill_(float("nan"))
        graph.replay()
        torch.testing.assert_close(out.double(), attention_reference(x.q, x.k, x.v), atol=atol, rtol=rtol)


def test_gpu_split_combine_on_two_streams_at_once():
    """Two split_combine calls of one launch plan in flight together on two streams: each has its own zeroed
    tickets, so neither combines the other's partials early."""
    spec = AttentionSpec(1, 32, 8, 1, 32768, 128, dtype="bfloat16")
    genome = default_genome(spec, HardwareKey.current()).replace(split_combine=True)
    kernel = load_record(baseline_record(spec, genome=genome))
    inputs = [make_inputs(spec, "cuda", seed=seed) for seed in (1, 2)]
    refs = [attention_reference(x.q, x.k, x.v) for x in inputs]
    streams = [torch.cuda.Stream() for _ in inputs]
    atol, rtol = tolerance("bfloat16")
    torch.cuda.synchronize()
    outs: list[list[torch.Tensor]] = [[], []]
    for _ in range(20):
        for i, (x, stream) in enumerate(zip(inputs, streams, strict=True)):
            with torch.cuda.stream(stream):
                outs[i].append(launch.forward(kernel.functions, kernel.launch, x.q, x.k, x.v, None, scale=None,
                                              causal=False, window=0, mask_kind="none")[0])
    torch.cuda.synchronize()
    for ref, got in zip(refs, outs, strict=True):
        for out in got:
            torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_ws90_reads_strided_inputs_and_writes_every_element(dtype):
    """(B, N, H, D) tensors viewed as (B, H, N, D) (what models pass) go straight to 4-d TMA descriptors; a K/V
    view with a padded head stride too. Outputs poisoned with NaN first."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("flash_ws90 is sm_90 only")
    spec = AttentionSpec(2, 8, 4, 1000, 1000, 128, dtype=str(dtype).split(".")[1], causal=True)
    kernel = load_record(baseline_record(spec, genome=default_genome(spec, HardwareKey.current(), "flash_ws90")))
    torch.manual_seed(1)
    q = torch.randn(2, 1000, 8, 128, device="cuda", dtype=dtype).transpose(1, 2)
    k = torch.randn(2, 1000, 4, 136, device="cuda", dtype=dtype)[..., :128].transpose(1, 2)
    v = torch.randn(2, 4, 1000, 128, device="cuda", dtype=dtype)
    out = torch.full((2, 8, 1000, 128), float("nan"), dtype=dtype, device="cuda")
    lse = torch.full((2, 8, 1000), float("nan"), device="cuda")
    args = dict(scale=None, causal=True, window=0, mask_kind="none")
    launch.forward(kernel.functions, kernel.launch, q, k, v, None, out=out, lse=lse, **args)
    atol, rtol = tolerance(str(dtype).split(".")[1])
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, **args), atol=atol, rtol=rtol)
    assert torch.isfinite(lse).all()


@pytest.mark.parametrize("bias_shape,dtype,causal,ring", [
    ((2, 8, 1000, 1000), torch.bfloat16, True, True),     # full bias, 2000-byte rows, ragged tiles
    ((1, 8, 1024, 1024), torch.bfloat16, False, True),    # broadcast batch (persistent tile loop)
    ((2, 1, 1024, 1024), torch.float16, False, True),     # broadcast head
    ((1024, 1024), torch.bfloat16, True, True),           # one (Nq, Nk) bias for every batch and head
    ((2, 8, 1, 1024), torch.bfloat16, False, False),      # one row for every query: pointer loads
    ((2, 8, 1024, 1024), torch.float32, False, False),    # fp32 bias on bf16 q: pointer loads
])
def test_gpu_ws90_bias_ring_reads_full_and_broadcast_biases(bias_shape, dtype, causal, ring):
    """flash_ws90 streams a TMA-ready bias through each warpgroup's ring (a broadcast batch or head read at index
    0) and falls back to pointer loads for the rest; outputs poisoned with NaN first."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("flash_ws90 is sm_90 only")
    n = bias_shape[-1]
    q_dtype = torch.float16 if dtype == torch.float16 else torch.bfloat16
    name = str(q_dtype).split(".")[1]
    spec = AttentionSpec(2, 8, 2, n, n, 128, dtype=name, causal=causal, mask="bias")
    genome = default_genome(spec, HardwareKey.current(), "flash_ws90")
    kernel = load_record(baseline_record(spec, genome=genome))
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, h, n, 128, device="cuda", dtype=q_dtype) for h in (8, 2, 2))
    bias = torch.randn(bias_shape, device="cuda", dtype=dtype)
    m, strides, _ = launch.mask_operand(q, bias, "bias", n)
    assert (launch._ws90_bias_ring(m, strides, q_dtype, kernel.launch, 128) is not None) == ring
    out = torch.full((2, 8, n, 128), float("nan"), dtype=q_dtype, device="cuda")
    lse = torch.full((2, 8, n), float("nan"), device="cuda")
    args = dict(scale=None, causal=causal, window=0, mask_kind="bias")
    launch.forward(kernel.functions, kernel.launch, q, k, v, bias, out=out, lse=lse, **args)
    atol, rtol = tolerance(name)
    torch.testing.assert_close(out.double(), attention_reference(q, k, v, mask=bias, **args), atol=atol, rtol=rtol)
    assert torch.isfinite(lse).all()


def test_gpu_ws90_op_under_cuda_graphs() -> None:
    """The opaque Gluon op inside torch.compile's CUDA graphs (mode="reduce-overhead", the remedy for its host cost
    on small specs): replays on fresh inputs (cudagraph trees copy them into the graph's buffers) match the
    reference."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("flash_ws90 is sm_90 only")
    spec = AttentionSpec(2, 8, 2, 1000, 1000, 128, dtype="bfloat16", causal=True)
    kid = register_kernel(baseline_record(spec, genome=default_genome(spec, HardwareKey.current(), "flash_ws90")))
    fn = torch.compile(lambda q, k, v: attention(q, k, v, kernel_id=kid, causal=True), backend="inductor",
                       mode="reduce-overhead")
    atol, rtol = tolerance("bfloat16")
    for seed in range(3):
        inp = make_inputs(spec, "cuda", seed=seed)
        out = fn(inp.q, inp.k, inp.v).clone()
        torch.testing.assert_close(out.double(), attention_reference(inp.q, inp.k, inp.v, causal=True), atol=atol,
                                   rtol=rtol)


def test_launch_bound_decode_is_timed_with_cuda_graphs_and_replay_checked() -> None:
    """Decode kernels take ~0.1 ms: per-call events would time the Python launcher, so the evaluator captures
    candidate and baseline in CUDA graphs and checks the timed graph reproduces the kernel's output."""
    from avo_inductor.search.evaluate import SandboxedEvaluator
    from avo_inductor.search.operators import candidate_id, genome_hash
    from avo_inductor.search.types import Candidate

    spec = AttentionSpec(4, 32, 8, 1, 4096, 128, dtype="bfloat16")
    genome = default_genome(spec, HardwareKey.current())
    cand = Candidate(candidate_id(spec, genome_hash(genome)), spec, genome=genome)
    with SandboxedEvaluator(["cuda:0"], timeout_s=300) as ev:
        (result,) = ev.evaluate([cand])
    assert result.ok, result.message
    assert result.extra["timing_method"] == "cuda_graph" and result.speedup is not None
