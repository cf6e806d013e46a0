"""avo::attention end to end: registry, loader gates, eager and torch.compile(inductor, dynamic) fwd+bwd,
recompute fallback, verify_record and baseline_record."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from avo_inductor.artifact import KernelRecord
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.tiers import as_source_record
from avo_inductor.kernels.loader import load_record, load_source
from avo_inductor.kernels.op import attention, get_kernel, register_kernel
from avo_inductor.kernels.reference import attention_reference, make_inputs, reference_grads, tolerance
from avo_inductor.check.verify import verify_record
from avo_inductor.spec import AttentionSpec, HardwareKey, SoftwareKey

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
CPU = HardwareKey("cpu", "triton-interpreter", (0, 0), 0)


def _record(spec: AttentionSpec, **changes) -> KernelRecord:
    """The baseline as a source-tier record (its rendered text in the record), so tests can edit its source."""
    rec = as_source_record(baseline_record(spec, CPU, SoftwareKey.current()))
    return rec.with_changes(**changes) if changes else rec


def _grads(fn, inp, requires_mask_grad=False):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (inp.q, inp.k, inp.v))
    mask = inp.mask
    if requires_mask_grad:
        mask = mask.detach().clone().requires_grad_(True)
    out = fn(q, k, v, mask)
    do = torch.randn_like(out)
    out.backward(do)
    return out, do, (q.grad, k.grad, v.grad), (mask.grad if requires_mask_grad else None)


def test_unknown_kernel_id_is_a_clear_error():
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(RuntimeError, match="not registered"):
        attention(q, q, q, kernel_id="does-not-exist")
    with pytest.raises(RuntimeError, match="not registered"):
        get_kernel("nope")


def test_loader_rejects_tampered_and_disallowed_sources():
    spec = AttentionSpec(1, 2, 2, 16, 16, 16, dtype="float32")
    rec = _record(spec)
    with pytest.raises(ValueError, match="sha256"):
        load_source(rec.source + "\n", rec.entry_point, rec.bwd_entry_point, rec.launch, sha256=rec.sha256)
    evil = rec.source + "\nimport os\n"
    with pytest.raises(ValueError, match="allowlist"):
        load_source(evil, rec.entry_point, rec.bwd_entry_point, rec.launch)
    with pytest.raises(ValueError, match="entry point"):
        load_source(rec.source, "missing_fn", None, rec.launch)
    with pytest.raises(ValueError, match="launch"):
        load_source(rec.source, rec.entry_point, None, {**rec.launch, "BLOCK_M": 24})
    assert load_record(rec) is load_record(rec)  # cached by kernel id


@pytest.mark.parametrize("compiled", [False, True])
def test_op_forward_backward_matches_reference(compiled):
    spec = AttentionSpec(1, 4, 2, 9, 17, 40, dtype="float32", causal=True, mask="bias", needs_grad=True)
    rec = _record(spec)
    assert rec.launch["pack_gqa"]  # GQA decode: the baseline packs, so the gradients flow through a packed forward
    kid = register_kernel(rec)

    def fn(q, k, v, m):
        return attention(q, k, v, m, kernel_id=kid, causal=True, mask_kind="bias")

    if compiled:
        fn = torch.compile(fn, backend="inductor", dynamic=True, fullgraph=True)
    inp = make_inputs(spec)
    out, do, grads, _ = _grads(fn, inp)
    args = dict(causal=True, mask_kind="bias", mask=inp.mask)
    atol, rtol = tolerance("float32")
    torch.testing.assert_close(out.double(), attention_reference(inp.q, inp.k, inp.v, **args), atol=atol, rtol=rtol)
    gatol, grtol = tolerance("float32", grad=True)
    for g, r in zip(grads, reference_grads(inp.q, inp.k, inp.v, do, **args)):
        torch.testing.assert_close(g.double(), r, atol=gatol, rtol=grtol)
    if compiled:  # a second, different length reuses the dynamic graph
        spec2 = dataclasses.replace(spec, q_len=5, kv_len=18)
        inp2 = make_inputs(spec2)
        out2, _, _, _ = _grads(fn, inp2)
        torch.testing.assert_close(out2.double(), attention_reference(inp2.q, inp2.k, inp2.v, causal=True,
                                   mask_kind="bias", mask=inp2.mask), atol=atol, rtol=rtol)


def test_bias_requiring_grad_uses_recompute_fallback():
    spec = AttentionSpec(1, 2, 2, 9, 17, 16, dtype="float32", mask="bias")
    kid = register_kernel(_record(spec))
    inp = make_inputs(spec)
    out, do, grads, dmask = _grads(lambda q, k, v, m: attention(q, k, v, m, kernel_id=kid, mask_kind="bias"), inp,
                                   requires_mask_grad=True)
    bias = inp.mask.detach().double().requires_grad_(True)
    ref = attention_reference(inp.q, inp.k, inp.v, mask_kind="bias", mask=bias)
    (ref_db,) = torch.autograd.grad(ref, bias, do.double())
    torch.testing.assert_close(dmask.double(), ref_db, atol=1e-4, rtol=1e-4)


def test_kernel_without_backward_uses_recompute_fallback():
    spec = AttentionSpec(1, 4, 1, 9, 17, 16, dtype="float32", causal=True)
    kid = register_kernel(_record(spec, bwd_entry_point=None))
    assert not get_kernel(kid).has_backward
    inp = make_inputs(spec)
    out, do, grads, _ = _grads(lambda q, k, v, m: attention(q, k, v, kernel_id=kid, causal=True), inp)
    for g, r in zip(grads, reference_grads(inp.q, inp.k, inp.v, do, causal=True)):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def test_verify_record_accepts_baseline_and_rejects_a_wrong_kernel():
    spec = AttentionSpec(1, 4, 2, 20, 40, 16, dtype="float16", causal=True, needs_grad=True)
    rec = _record(spec)
    assert rec.operator == "baseline" and rec.genome is not None and rec.bwd_entry_point
    report = verify_record(rec, "cpu")
    assert report.ok, report.problems
    assert report.max_rel_err < 1e-2
    bad_src = rec.source.replace("acc = acc / tl.where(empty, 1.0, l_i)[:, None]",
                                 "acc = acc / tl.where(empty, 1.0, l_i)[:, None] * 1.01")
    assert bad_src != rec.source
    bad = _record(dataclasses.replace(spec, needs_grad=False), source=bad_src, sha256="")
    report = verify_record(bad, "cpu")
    assert not report.ok and any("output (run 1" in p and "max abs err" in p for p in report.problems)
    evil = _record(spec, source=rec.source + "\nimport os\n", sha256="")
    assert not verify_record(evil, "cpu").ok


def _bias_1e3(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A float32 bias ~1e3 whose entries differ by less than bf16's spacing there (4.0): cast to bf16, the
    differences between keys are rounded away; kept in float32, they decide the softmax."""
    g = torch.Generator().manual_seed(seed)
    return 1000.0 + 4.0 * torch.rand(shape, generator=g)


@pytest.mark.parametrize("compiled", [False, True])
def test_float32_bias_keeps_its_precision_with_bf16_q(compiled):
    """The op's side of keeping a bias's precision (the rewrite's side is in test_detect_sdpa.py): a float32 bias
    with bf16 q/k/v goes through the launcher, the fake impl under torch.compile and the Triton backward as
    float32, and matches the float64 reference far better than the bf16-cast bias could."""
    spec = AttentionSpec(1, 2, 2, 16, 24, 16, dtype="bfloat16", mask="bias", needs_grad=True)
    kid = register_kernel(_record(spec))
    assert get_kernel(kid).has_backward

    def fn(q, k, v, m):
        return attention(q, k, v, m, kernel_id=kid, mask_kind="bias")

    if compiled:
        fn = torch.compile(fn, backend="inductor", fullgraph=True)
    inp = make_inputs(spec)
    bias = _bias_1e3((1, 2, 16, 24))
    out, do, grads, _ = _grads(fn, dataclasses.replace(inp, mask=bias))
    assert out.dtype == torch.bfloat16
    ref = attention_reference(inp.q, inp.k, inp.v, mask_kind="bias", mask=bias)
    cast_err = (attention_reference(inp.q, inp.k, inp.v, mask_kind="bias", mask=bias.to(torch.bfloat16)) - ref).abs().max()
    err = (out.double() - ref).abs().max()
    atol, rtol = tolerance("bfloat16")
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    assert err * 10 < cast_err, (err, cast_err)
    gatol, grtol = tolerance("bfloat16", grad=True)
    for g, r in zip(grads, reference_grads(inp.q, inp.k, inp.v, do, mask_kind="bias", mask=bias)):
        torch.testing.assert_close(g.double(), r, atol=gatol, rtol=grtol)


@pytest.mark.parametrize("mask_kind", ["padding", "bool"])
def test_bool_mask_operands_trace_without_a_dtype_view(mask_kind: str) -> None:
    """On CUDA the launcher is traced into Inductor's graph; aten.view.dtype on a bool tensor has no lowering
    there (it broke every padded model under backend="avo"), so bool masks must reach Triton as they are."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from avo_inductor.kernels.launch import mask_operand

    q = torch.randn(2, 4, 9, 16)
    mask = torch.rand(2, 9) > 0.3 if mask_kind == "padding" else torch.rand(2, 1, 9, 9) > 0.3
    graph = make_fx(lambda q, m: mask_operand(q, m, mask_kind, 9)[0])(q, mask)
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert not any("view.dtype" in t for t in targets), targets
    assert mask_operand(q, mask, mask_kind, 9)[0].dtype == torch.bool


def test_eager_launches_skip_the_hop_dispatch_and_tracing_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager calls on real tensors launch the kernel directly (wrap_triton's HOP dispatch costs up to ~1 ms a
    launch, which the search would time as kernel time); fake tensors, as under tracing, still go through it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from avo_inductor.kernels import launch

    calls: list[str] = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda **kw: calls.append("direct")

    def fake_wrap(fn):
        class Wrapped:
            def __getitem__(self, grid):
                return lambda **kw: calls.append("hop")
        return Wrapped()

    monkeypatch.setattr(torch.library, "wrap_triton", fake_wrap)
    launch._launch(Kernel(), (2, 3), Q=torch.randn(2, 2), N=5)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.randn(2, 2))
        launch._launch(Kernel(), (2, 3), Q=fake, N=5)
    assert calls == ["direct", "hop"]
    assert launch._known_multiple(128, 64) and not launch._known_multiple(100, 64)


def test_verification_checks_the_records_lengths_not_its_whole_batch():
    """On a GPU a record is checked at its own lengths, head dims and mask, at batch 2 and 2 kv heads with their
    GQA groups whole (first use runs in the user's process); the ragged small shapes keep the GQA ratio, and a
    training record's cases check its backward."""
    import random

    from avo_inductor.check.cases import verification_cases

    spec = AttentionSpec(4, 32, 8, 4096, 4096, 128, dtype="bfloat16", causal=True, window=1024, needs_grad=True)
    *ragged, own = verification_cases(spec, "cuda", random.Random(0))
    s = own.spec
    assert (s.batch, s.q_heads, s.kv_heads, s.q_len, s.kv_len) == (2, 8, 2, 4096, 4096)
    assert (s.head_dim, s.window, s.causal, s.dtype) == (128, 1024, True, "bfloat16")
    assert all(c.spec.gqa_group == 4 and c.spec.batch == 2 and c.spec.kv_heads == 2 and c.grads for c in ragged)
    assert all(c.spec.q_len != c.spec.kv_len for c in ragged)
    cpu_own = verification_cases(spec, "cpu", random.Random(0))[-1].spec
    assert cpu_own.q_len <= 48 and cpu_own.kv_len <= 96


def test_a_loaded_kernel_whose_source_folder_was_removed_gets_its_file_back(isolated_avo, monkeypatch) -> None:
    """The kernel source folder can vanish while the process lives (a temporary AVO_CACHE_DIR removed, as the
    model benchmark's seeded store does when it ends). The next load of the same kernel imports it afresh in the
    current folder (a removed folder is never made again) or, when only the file went, writes it back in place:
    Inductor reads a user kernel's lines from it (``inspect.getsourcelines``) when it compiles a graph that calls
    the kernel, and readers of ``LoadedKernel.path`` want it."""
    import inspect
    import shutil

    from avo_inductor.settings import reset_settings

    spec = AttentionSpec(1, 2, 1, 9, 9, 16, dtype="float32")
    first = load_record(baseline_record(spec, HardwareKey.current("cpu")))
    assert first.path.is_file()
    shutil.rmtree(first.path.parent)
    monkeypatch.setenv("AVO_CACHE_DIR", str(isolated_avo / "elsewhere"))
    reset_settings()
    again = load_record(baseline_record(spec, HardwareKey.current("cpu")))
    assert again.path.is_file() and "def " in again.path.read_text()
    assert again.path.parent == isolated_avo / "elsewhere" / "kernel_src"  # the removed folder is not made again
    assert inspect.getsourcelines(getattr(again.functions.fwd, "fn", again.functions.fwd))[0]
    assert get_kernel(again.kernel_id).path.is_file()
    again.path.unlink()  # only the file gone: written back in place
    third = load_record(baseline_record(spec, HardwareKey.current("cpu")))
    assert third.path == again.path and third.path.is_file()
