"""GPU end to end (-m gpu, H100/H200): the hit path inlines the kernel into Inductor's code; a Llama-style model
with hand-written attention compiles to avo/SDPA and matches eager in bf16, forward and backward."""
from __future__ import annotations

import pytest
import torch

import avo_inductor
from avo_inductor.example_models import ModelConfig, llama_style

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _model(attn: str = "handwritten") -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=512, n_layers=2, n_heads=8, n_kv_heads=2, max_seq_len=1024, attn=attn)
    return llama_style(cfg).cuda().to(torch.bfloat16)


@pytest.mark.parametrize("seq", [113, 512])
def test_hit_path_inlines_the_kernel_and_matches_eager(seq: int) -> None:
    from torch._inductor.utils import run_and_get_code

    from avo_inductor.cache.store import KernelStore
    from avo_inductor.kernels.baseline import baseline_record

    model = _model().eval()
    x = torch.randn(2, seq, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        report = avo_inductor.explain(model, x, quiet=True)
    assert len(report) == 2 and all(s.spec.causal and s.spec.kv_heads == 2 for s in report)
    store = KernelStore.from_settings()
    record = baseline_record(report[0].spec)
    store.put(record)
    with torch.no_grad():
        assert all(s.action == "avo" for s in avo_inductor.explain(model, x, quiet=True))
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(model, backend="avo"), x)
        ref = model(x)
    assert any(record.entry_point in c for c in code), "Inductor's output code must contain the avo kernel"
    assert (out.float() - ref.float()).norm() / ref.float().norm() < 2e-2


def test_training_step_matches_eager_on_miss_and_hit() -> None:
    model = _model()
    x = torch.randn(2, 256, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(2, 256, 512, device="cuda")  # a random projection: the output is RMS-normalised, so a
    ref = torch.autograd.grad((model(x).float() * w).sum(), x)[0]  # loss like mean(out**2) has ~zero gradient
    torch._dynamo.reset()
    got = torch.autograd.grad((torch.compile(model, backend="avo")(x).float() * w).sum(), x)[0]
    err = float((got.float() - ref.float()).norm() / ref.float().norm())
    assert err < 3e-2, f"relative gradient error {err:.3e}"


@pytest.mark.parametrize("mask_kind", ["padding", "bool", "bias", "alibi"])
def test_masked_op_compiles_inline_under_inductor(mask_kind: str) -> None:
    """Every mask operand must survive Inductor's lowering (a bool .view(uint8) once broke padded models)."""
    from torch._inductor.utils import run_and_get_code

    from avo_inductor.kernels.baseline import baseline_record
    from avo_inductor.kernels.op import register_kernel
    from avo_inductor.kernels.reference import attention_reference, make_inputs
    from avo_inductor.spec import AttentionSpec, MaskKind

    spec = AttentionSpec(2, 4, 2, 113, 113, 64, dtype="bfloat16", mask=MaskKind(mask_kind))
    x = make_inputs(spec, "cuda", seed=1)
    record = baseline_record(spec)
    kid = register_kernel(record)

    def f(q, k, v, m):  # type: ignore[no-untyped-def]
        return torch.ops.avo.attention(q, k, v, m, kid, spec.effective_scale, False, 0, mask_kind)

    torch._dynamo.reset()
    out, code = run_and_get_code(torch.compile(f, backend="inductor"), x.q, x.k, x.v, x.mask)
    assert any(record.entry_point in c for c in code)
    ref = attention_reference(x.q, x.k, x.v, scale=spec.effective_scale, mask_kind=mask_kind, mask=x.mask)
    assert torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_class_hit_is_checked_in_the_background_and_then_served() -> None:
    """A record tuned at 256 serves the same model at 113 (a class hit): its check at 113 runs on the worker thread
    while Inductor compiles (backend/deferred.py), the compiled graph calls the record's kernel and matches eager,
    and a recompile reads the stored verdict instead of checking again."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    from avo_inductor.artifact import KernelMetrics
    from avo_inductor.cache.store import KernelStore
    from avo_inductor.kernels.baseline import baseline_record

    model = _model().eval()
    with torch.no_grad():
        tuned = avo_inductor.explain(model, torch.randn(2, 256, 512, device="cuda", dtype=torch.bfloat16),
                                     quiet=True)[0].spec
    metrics = KernelMetrics(median_ms=1.0, speedup=1.0, baseline="flex", baseline_ms=1.0, speedup_vs_fallback=1.5,
                            fallback_ms=1.5)
    record = baseline_record(tuned).with_changes(metrics=metrics)
    KernelStore.from_settings().put(record)
    x = torch.randn(2, 113, 512, device="cuda", dtype=torch.bfloat16)
    counters.clear()
    torch._dynamo.reset()
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(model, backend="avo"), x)
        ref = model(x)
    assert (counters["avo"]["class_hit"], counters["avo"]["class_verified"], counters["avo"]["miss"]) == (2, 1, 0)
    assert any(record.entry_point in c for c in code), "Inductor's output code must contain the class kernel"
    assert (out.float() - ref.float()).norm() / ref.float().norm() < 2e-2
    with torch.no_grad():
        sites = avo_inductor.explain(model, x, quiet=True)
    assert all(s.action == "avo" and s.tuned_at == tuned for s in sites), [s.summary() for s in sites]
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend="avo")(x)
    assert counters["avo"]["class_verified"] == 1


class _EagerMaskAttention(torch.nn.Module):
    """transformers' eager attention under a left-padded batch: where(causal & padding, 0, finfo.min) added."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        i = torch.arange(n, device=q.device)
        keep = (i[None, :] <= i[:, None])[None, None] & pad[:, None, None, :].bool()
        bias = torch.where(keep, torch.zeros((), device=q.device, dtype=q.dtype), torch.finfo(q.dtype).min)
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


@pytest.mark.parametrize("stored", [False, True], ids=["miss", "hit"])
def test_rows_without_keys_match_eager_under_inductor(stored: bool) -> None:
    """Left-padded rows see no key: eager's finfo.min mask gives them the mean of v, and so must the compiled site
    (Inductor, bf16, on SDPA at a miss and the avo kernel at a hit), at every position."""
    from avo_inductor.cache.store import KernelStore
    from avo_inductor.kernels.baseline import baseline_record

    g = torch.Generator(device="cuda").manual_seed(4)
    q = torch.randn(2, 8, 113, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(2, 2, 113, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    pad = torch.ones(2, 113, dtype=torch.long, device="cuda")
    pad[1, :40] = 0
    model = _EagerMaskAttention()
    with torch.no_grad():
        (site,) = avo_inductor.explain(model, q, k, v, pad, quiet=True)
        if stored:
            KernelStore.from_settings().put(baseline_record(site.spec))
        torch._dynamo.reset()
        out = torch.compile(model, backend="avo")(q, k, v, pad)
        ref = model(q.float(), k.float(), v.float(), pad).to(torch.bfloat16)
        (site,) = avo_inductor.explain(model, q, k, v, pad, quiet=True)
    assert site.action == ("avo" if stored else "sdpa"), site
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
