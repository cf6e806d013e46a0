"""Additive biases at the float limits: torch.finfo(dtype).min on whole rows (HF's padding convention), on some keys,
and mixed with -inf, forward and backward against the float64 reference and eager softmax (interpreter, 16 tiles).

A row whose every allowed key carries finfo.min gives mean(v) in eager and in the reference (the scores are absorbed
by the bias); its LSE cannot be exact through the kernels' log2 domain and must be finite and below -1e30 (see
BIAS_FLOOR in flash_v1_fwd.py). The backward cannot recover such a row's 1/N from its LSE: it is checked where the
row's upstream gradient is zero (padded positions of a loss) and for finiteness otherwise.
"""
from __future__ import annotations

import math

import pytest
import torch
from _kernel_cases import call_args, fresh, load, run_forward, snapshot, unchanged

from avo_inductor.kernels import launch
from avo_inductor.kernels.reference import attention_reference, reference_grads, reference_lse, tolerance
from avo_inductor.spec import AttentionSpec

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FLOOR_LSE = -1e30
PATTERNS = ("rows", "keys", "mixed")


def _bias(spec: AttentionSpec, pattern: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias (B, Hq, Nq, Nk) in the spec dtype, floor_rows (B, Hq, Nq) bool: rows whose every key is finfo.min or
    -inf). Random normal bias with finfo.min planted: ``rows`` whole query rows (a padded query position), ``keys``
    whole key columns of batch 1 (key padding: partial rows), ``mixed`` both plus -inf on some keys, including keys
    of the finfo.min rows."""
    dt = spec.torch_dtype
    lo = torch.finfo(dt).min
    bias = torch.randn(spec.batch, spec.q_heads, spec.q_len, spec.kv_len, dtype=torch.float32)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    rows = torch.zeros(spec.batch, spec.q_heads, spec.q_len, dtype=torch.bool)
    if pattern in ("rows", "mixed"):
        pick = torch.randperm(spec.q_len, generator=g)[:4]
        rows[0, :, pick] = True
        rows[1, 1, pick[:2]] = True
        bias[rows] = lo
    if pattern in ("keys", "mixed"):
        bias[1, :, :, -7:] = lo  # the last keys of batch 1 are padding for every query
    if pattern == "mixed":
        inf_keys = torch.randperm(spec.kv_len, generator=g)[:5]
        bias[0, :, :, inf_keys] = float("-inf")
    return bias.to(dt), rows


def _eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, causal: bool) -> torch.Tensor:
    """Eager attention in the input dtype (fp32 softmax for 16-bit inputs, as HF models upcast), GQA by repeat."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias.float()
    if causal:
        nq, nk = s.shape[-2:]
        keep = torch.ones(nq, nk, dtype=torch.bool).tril(nk - nq)
        s = s.masked_fill(~keep, float("-inf"))
    return (torch.softmax(s, -1) @ v.float()).to(q.dtype)


def _setup(dtype: str, causal: bool, pattern: str):
    spec = AttentionSpec(2, 4, 2, 17, 33, 16, dtype=dtype, causal=causal, mask="bias")
    inp = fresh(spec)
    bias, floor_rows = _bias(spec, pattern)
    inp = type(inp)(inp.q, inp.k, inp.v, bias)
    return spec, inp, floor_rows


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_finfo_min_bias_forward_matches_reference_and_eager(dtype, causal, pattern):
    spec, inp, floor_rows = _setup(dtype, causal, pattern)
    kernel = load(spec)
    before = snapshot(inp)
    out, lse = run_forward(kernel, spec, inp)
    ref = attention_reference(inp.q, inp.k, inp.v, mask=inp.mask, **call_args(spec))
    eager = _eager(inp.q, inp.k, inp.v, inp.mask, causal)
    atol, rtol = tolerance(dtype)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(out.double(), eager.double(), atol=2 * atol, rtol=2 * rtol)
    ref_lse = reference_lse(inp.q, inp.k, causal=causal, mask_kind="bias", mask=inp.mask)
    floor = ref_lse < FLOOR_LSE
    if dtype == "float16":  # fp16's finfo.min (-65504) is not absorbed by the scores: ordinary rows
        assert not floor.any()
    else:
        assert floor[floor_rows].all(), "every planted finfo.min row is a floor row in the reference"
        assert torch.isfinite(lse[floor]).all() and (lse[floor] < FLOOR_LSE).all(), lse[floor]
    torch.testing.assert_close(lse[~floor].double(), ref_lse[~floor], atol=atol, rtol=rtol)
    assert unchanged(inp, before)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_finfo_min_bias_backward_matches_reference(dtype, causal, pattern):
    spec, inp, floor_rows = _setup(dtype, causal, pattern)
    kernel = load(spec)
    out, lse = run_forward(kernel, spec, inp)
    do = torch.randn_like(out)
    floor = reference_lse(inp.q, inp.k, causal=causal, mask_kind="bias", mask=inp.mask) < FLOOR_LSE
    do[floor] = 0  # the padded positions' gradient, as a loss that ignores them gives it
    bufs = {n: torch.full_like(t, float("nan")) for n, t in (("dq", inp.q), ("dk", inp.k), ("dv", inp.v))}
    got = launch.backward(kernel.functions, kernel.launch, do, inp.q, inp.k, inp.v, out, lse, inp.mask, **bufs,
                          **call_args(spec))
    refs = reference_grads(inp.q, inp.k, inp.v, do, mask=inp.mask, **call_args(spec))
    atol, rtol = tolerance(dtype, grad=True)
    for name, g, r in zip(("dq", "dk", "dv"), got, refs):
        assert torch.isfinite(g).all(), f"{name} has NaN/inf elements"
        torch.testing.assert_close(g.double(), r, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_finfo_min_rows_with_upstream_gradient_stay_finite(dtype):
    """The documented limit: a finfo.min row's own gradient is dropped (its 1/N is not in its LSE), never NaN/inf;
    every other row's contribution is exact (checked against the reference with that row's do zeroed)."""
    spec, inp, floor_rows = _setup(dtype, True, "rows")
    kernel = load(spec)
    out, lse = run_forward(kernel, spec, inp)
    do = torch.randn_like(out)
    got = launch.backward(kernel.functions, kernel.launch, do, inp.q, inp.k, inp.v, out, lse, inp.mask,
                          **call_args(spec))
    do_kept = do.clone()
    do_kept[reference_lse(inp.q, inp.k, causal=True, mask_kind="bias", mask=inp.mask) < FLOOR_LSE] = 0
    refs = reference_grads(inp.q, inp.k, inp.v, do_kept, mask=inp.mask, **call_args(spec))
    atol, rtol = tolerance(dtype, grad=True)
    for name, g, r in zip(("dq", "dk", "dv"), got, refs):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.double(), r, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
