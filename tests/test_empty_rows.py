"""Rows whose every key is masked by a finite fill (transformers' eager ``finfo.min`` masks): eager gives them the
mean of v, and so must the rewritten site, on the avo kernel and on SDPA alike (``detect/empty_rows.py``)."""
from __future__ import annotations

import pytest
import torch

from avo_inductor.detect import rewrite_to_sdpa
from avo_inductor.detect.empty_rows import mean_where_no_key, rows_without_keys
from detect_zoo import avo_rewrite, compile_with

B = 3


def _padding(kv_len: int, g: torch.Generator) -> torch.Tensor:
    """(B, Nk) keep: row 0 unpadded, row 1 left-padded, row 2 with random holes (and at least one key dropped)."""
    keep = torch.ones(B, kv_len, dtype=torch.bool)
    keep[1, : kv_len // 2 + 1] = False
    keep[2] = torch.rand(kv_len, generator=g) < 0.4
    return keep


def _dense_keep(keep: torch.Tensor | None, q_len: int, kv_len: int, causal: bool, window: int) -> torch.Tensor:
    """The (B|1, 1, Nq, Nk) keep-mask the flags and the keep tensor stand for, spelled out."""
    i = torch.arange(q_len)[:, None] + kv_len - q_len
    j = torch.arange(kv_len)[None, :]
    band = torch.ones(q_len, kv_len, dtype=torch.bool)
    if causal:
        band = j <= i
        if window:
            band &= j > i - window
    return band[None, None] if keep is None else keep & band


SHAPES = [(1, 1), (1, 17), (17, 17), (5, 17), (17, 5), (113, 113), (113, 1000)]


@pytest.mark.parametrize(("q_len", "kv_len"), SHAPES)
@pytest.mark.parametrize(("causal", "window"), [(False, 0), (True, 0), (True, 3)])
@pytest.mark.parametrize("keep_form", ["none", "padding", "rows"])
def test_rows_without_keys_matches_the_dense_mask(q_len: int, kv_len: int, causal: bool, window: int,
                                                  keep_form: str) -> None:
    g = torch.Generator().manual_seed(q_len * 1000 + kv_len)
    keep: torch.Tensor | None = None
    if keep_form == "padding":
        keep = _padding(kv_len, g)[:, None, None, :]
    elif keep_form == "rows":
        keep = torch.rand(B, 1, q_len, kv_len, generator=g) < 0.05
    dense = _dense_keep(keep, q_len, kv_len, causal, window)
    want = ~dense.any(dim=-1)  # (B|1, 1, Nq)
    got = rows_without_keys(keep, q_len, kv_len, causal, window, torch.device("cpu"))
    if got is None:
        assert not want.any(), "None promises that no row is empty"
    else:
        assert torch.equal(torch.broadcast_to(got, want.shape), want)


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """transformers' eager attention: the additive finfo.min mask, softmax in float32."""
    groups = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(groups, dim=1) for x in (k, v))
    bias = torch.where(keep, torch.zeros((), dtype=q.dtype), torch.finfo(q.dtype).min)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias
    return torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("q_len", "kv_len", "window"), [(17, 17, 0), (17, 17, 4), (1, 33, 0), (13, 16, 0), (13, 8, 2)])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_mean_where_no_key_gives_eager_rows(dtype: torch.dtype, q_len: int, kv_len: int, window: int,
                                            heads: tuple[int, int]) -> None:
    """Poisoned (NaN) rows where no key is allowed come back as eager's uniform average; every other row as it was."""
    g = torch.Generator().manual_seed(7)
    hq, hkv = heads
    q = torch.randn(B, hq, q_len, 24, generator=g).to(dtype)
    k, v = (torch.randn(B, hkv, kv_len, 24, generator=g).to(dtype) for _ in range(2))
    keep = _padding(kv_len, g)[:, None, None, :]
    if q_len == 1:
        keep[1] = False  # a decode row whose whole batch entry is padding
    dense = _dense_keep(keep, q_len, kv_len, True, window)
    ref = _eager(q.double(), k.double(), v.double(), dense).to(dtype)
    empty = ~dense.any(dim=-1, keepdim=True).expand(B, hq, q_len, 1)
    assert empty.any(), "the case must have rows that see no key"
    poisoned = torch.where(empty, torch.full_like(ref, float("nan")), ref)
    got = mean_where_no_key(poisoned, v, keep, True, window)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    assert torch.equal(got[~empty.expand_as(got)], ref[~empty.expand_as(ref)])


class _EagerAttention(torch.nn.Module):
    """Hand-written causal attention under transformers' eager mask: where(causal & padding, 0, finfo.min) added."""

    def __init__(self, fill: str) -> None:
        super().__init__()
        self.fill = fill

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        i = torch.arange(n, device=q.device)
        keep = (i[None, :] <= i[:, None])[None, None] & pad[:, None, None, :].bool()
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        if self.fill == "masked_fill":
            scores = scores.masked_fill(~keep, torch.finfo(q.dtype).min)
        else:
            fill = torch.finfo(q.dtype).min if self.fill == "min" else float("-inf")
            scores = scores + torch.where(keep, 0.0, fill)
        return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("rewrite", ["sdpa", "avo"])
@pytest.mark.parametrize(("fill", "mean"), [("min", True), ("masked_fill", True), ("-inf", False)])
def test_left_padded_rows_match_eager_forward_and_backward(rewrite: str, fill: str, mean: bool) -> None:
    """Left padding under a causal mask: the pad rows see no key. With a finite fill, eager (and the compiled
    site) gives them the mean of v; with -inf eager gives NaN and the site 0 (SDPA's rule), compared at real rows.
    Gradients: d v agrees everywhere; d q / d k agree where the upstream gradient spares the pad rows (a loss over
    real tokens, as training masks them), since eager routes a pad row's gradient through scores it has discarded."""
    n = 17 if fill != "masked_fill" else 113
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g) for _ in range(3))
    pad = torch.ones(2, n, dtype=torch.long)
    pad[1, :6] = 0
    model = _EagerAttention(fill)
    compiled, seen = compile_with(model, rewrite=avo_rewrite if rewrite == "avo" else rewrite_to_sdpa)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = compiled(*leaves, pad)
    ref = model(*ref_leaves, pad)
    (match,) = seen.matches
    assert match.empty_rows_mean is mean
    real = pad.bool()[:, None, :, None].expand_as(ref)
    rows = torch.ones_like(real) if mean else real
    torch.testing.assert_close(out[rows], ref[rows], atol=1e-5, rtol=1e-5)
    if mean:
        upstream = torch.randn(ref.shape, generator=g) * real  # the pad rows' loss is masked
        out.backward(upstream)
        ref.backward(upstream)
        for got, want in zip(leaves, ref_leaves, strict=True):
            assert got.grad is not None and want.grad is not None
            torch.testing.assert_close(got.grad, want.grad, atol=1e-4, rtol=1e-4)
        dv_only = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        dv_ref = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        full = torch.randn(ref.shape, generator=g)
        compiled(*dv_only, pad).backward(full)
        model(*dv_ref, pad).backward(full)
        torch.testing.assert_close(dv_only[2].grad, dv_ref[2].grad, atol=1e-4, rtol=1e-4)


MIN = torch.finfo(torch.float32).min


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5


def _causal(n: int) -> torch.Tensor:
    i = torch.arange(n)
    return (i[None, :] <= i[:, None])[None, None]


class _Flagged(torch.nn.Module):
    """A causal site whose batch entries are switched off whole: a keep (B, 1, 1, 1) broadcast over the keys."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = torch.where(_causal(q.shape[-2]), _scores(q, k), MIN)
        return torch.softmax(x.masked_fill(~pad[:, :1, None, None].bool(), MIN), -1) @ v


class _DifferentFills(torch.nn.Module):
    """finfo.min above the diagonal, -1e9 at the padding: eager averages over the padded keys alone."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = torch.where(_causal(q.shape[-2]), _scores(q, k), MIN)
        return torch.softmax(x.masked_fill(~pad[:, None, None, :].bool(), -1e9), -1) @ v


class _StackedFills(torch.nn.Module):
    """Two additive finfo.min masks: where both mask a key their sum is -inf."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        causal = _causal(q.shape[-2])
        x = torch.where(causal, _scores(q, k), MIN) + torch.where(causal & pad[:, None, None, :].bool(), 0.0, MIN)
        return torch.softmax(x, -1) @ v


class _MildFillAndBias(torch.nn.Module):
    """masked_fill(-1e4) then a bias: eager's row without keys is a softmax of the bias, not uniform."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        bias = torch.arange(q.shape[-2], dtype=q.dtype) * 0.7
        x = _scores(q, k).masked_fill(~(_causal(q.shape[-2]) & pad[:, None, None, :].bool()), -1e4)
        return torch.softmax(x + bias, -1) @ v


class _HalfBiasOnFloatScores(torch.nn.Module):
    """fp16's finfo.min added to float32 scores does not swamp them: eager's row without keys is softmax(s)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        keep = _causal(q.shape[-2]) & pad[:, None, None, :].bool()
        bias = torch.where(keep, torch.zeros((), dtype=torch.float16), torch.finfo(torch.float16).min)
        return torch.softmax(_scores(q, k) + bias, -1) @ v


class _NanoGPT(torch.nn.Module):
    """nanoGPT's tril buffer and a padding mask, both masked_fill(finfo.min): eager gives the mean."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("tril", torch.tril(torch.ones(1, 1, 64, 64)))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        x = _scores(q, k).masked_fill(self.tril[:, :, :n, :n] == 0, MIN)
        return torch.softmax(x.masked_fill(~pad[:, None, None, :].bool(), MIN), -1) @ v


class _UpcastScoresHalfBias(_HalfBiasOnFloatScores):
    """fp16 q/k, scores upcast to float32, then fp16's finfo.min added: the add runs in float32 (no swamping)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        q, k, v = q.half(), k.half(), v.half()
        keep = _causal(q.shape[-2]) & pad[:, None, None, :].bool()
        bias = torch.where(keep, torch.zeros((), dtype=torch.float16), torch.finfo(torch.float16).min)
        scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5 + bias
        return (torch.softmax(scores, -1).half() @ v).float()


class _FillRoundsToInf(torch.nn.Module):
    """float32's finfo.min written into an fp16 where is -inf there: eager's row without keys is NaN, not a mean."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        keep = _causal(q.shape[-2]) & pad[:, None, None, :].bool()
        bias = torch.where(keep, torch.zeros((), dtype=torch.float16), MIN)
        return torch.softmax(_scores(q, k) + bias, -1) @ v


@pytest.mark.parametrize(("model", "mean"), [
    (_Flagged, True), (_NanoGPT, True),
    (_DifferentFills, False), (_StackedFills, False), (_MildFillAndBias, False), (_HalfBiasOnFloatScores, False),
    (_UpcastScoresHalfBias, False), (_FillRoundsToInf, False),
], ids=lambda x: getattr(x, "__name__", str(x)))
def test_mean_only_where_eager_gives_the_mean(model: type[torch.nn.Module], mean: bool) -> None:
    """The mean is added only where every masked key of such a row sits at one finite score in eager; elsewhere
    those rows keep the kernels' 0 (eager's value there is no mean), and rows with keys match eager either way."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 17, 8, generator=g) for _ in range(3))
    pad = torch.ones(2, 17, dtype=torch.long)
    pad[1, :6] = 0
    if model is _Flagged:
        pad[1] = 0
    m = model()
    compiled, seen = compile_with(m, rewrite=rewrite_to_sdpa)
    with torch.no_grad():
        out, ref = compiled(q, k, v, pad), m(q, k, v, pad)
    (match,) = seen.matches
    assert match.empty_rows_mean is mean
    seen_keys = (_causal(17) & pad[:, None, None, :].bool()).any(dim=-1, keepdim=True).expand_as(ref)
    rows = torch.ones_like(seen_keys) if mean else seen_keys
    tol = 2e-3 if model is _UpcastScoresHalfBias else 1e-5  # fp16 scores: SDPA and eager round them differently
    torch.testing.assert_close(out[rows], ref[rows], atol=tol, rtol=tol)


def test_explain_says_where_the_mean_is_added(seeded: torch.Generator) -> None:
    """explain() names the extra step at an eager-masked site (a miss: SDPA, then the mean)."""
    import avo_inductor

    q, k, v = (torch.randn(2, 2, 17, 8, generator=seeded) for _ in range(3))
    pad = torch.ones(2, 17, dtype=torch.long)
    pad[1, :6] = 0
    (site,) = avo_inductor.explain(_EagerAttention("min"), q, k, v, pad, quiet=True)
    assert "eager's mean of v" in site.reason, site
    (plain,) = avo_inductor.explain(_EagerAttention("-inf"), q, k, v, pad, quiet=True)
    assert "mean of v" not in plain.reason
