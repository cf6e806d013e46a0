"""The one float64 attention reference used by tests, benchmarks and the evaluator, plus input generation.

Semantics every avo kernel must match (and the launcher ABI relies on):
- causal and sliding window are bottom-right aligned like SDPA's ``is_causal``: with ``off = Nk - Nq``, query i
  attends key j iff ``j <= i + off`` (causal) and ``j > i + off - window`` (window). A window implies the causal
  upper bound (the spec defines the window as keys in ``(i - window, i]``).
- mask kinds: "bias" additive float broadcastable to (B, Hq, Nq, Nk); "bool" keep-mask (True = attend)
  broadcastable to (B, Hq, Nq, Nk); "padding" (B, Nk) keep-mask over keys; "alibi" slopes (Hq,) with
  bias[h, i, j] = -slope[h] * |i + off - j| (distance in the same bottom-right aligned frame).
- a query row with no allowed key (all masked, or all bias -inf) outputs 0, not NaN. SDPA returns NaN there;
  zero is what a flash kernel naturally produces and what the gradient of such a row (0) agrees with.
- GQA/MQA: q head h reads kv head h // (Hq // Hkv).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..spec import AttentionSpec, MaskKind

MASK_KINDS = tuple(m.value for m in MaskKind)

# (atol, rtol) of the forward output against float64, per dtype: ~4 ulps of the dtype (fp16 eps 9.8e-4,
# bf16 eps 7.8e-3), since P is rounded to the input dtype before the P @ V dot. Measured on the interpreter
# (d=160, Nq=113, causal+window): bf16 max err 1.7e-2, fp16 6e-4. fp32 assumes ieee dots (no tf32).
_FWD_TOL = {torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2), torch.float32: (2e-5, 2e-5)}
_GRAD_SCALE = 4.0  # gradients go through two more matmuls in the input dtype (P and dS are rounded)


def tolerance(dtype: torch.dtype | str, grad: bool = False) -> tuple[float, float]:
    """(atol, rtol) for comparing a kernel's output (``grad``: its gradients) with the float64 reference."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype not in _FWD_TOL:
        raise ValueError(f"no tolerance for dtype {dtype}; expected one of {list(_FWD_TOL)}")
    atol, rtol = _FWD_TOL[dtype]
    return (atol * _GRAD_SCALE, rtol * _GRAD_SCALE) if grad else (atol, rtol)


def allowed_keys(nq: int, nk: int, causal: bool, window: int | None,
                 device: torch.device | str = "cpu") -> torch.Tensor | None:
    """(Nq, Nk) bool keep-mask of the causal / window structure (bottom-right aligned), None if unrestricted."""
    window = window or None
    if not causal and window is None:
        return None
    i = torch.arange(nq, device=device)[:, None] + (nk - nq)
    j = torch.arange(nk, device=device)[None, :]
    keep = j <= i
    if window is not None:
        keep = keep & (j > i - window)
    return keep


def additive_mask(
    b: int, h: int, nq: int, nk: int, *, causal: bool = False, window: int | None = None,
    mask_kind: str = "none", mask: torch.Tensor | None = None, dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """Everything but the scores as one additive tensor broadcastable to (B, H, Nq, Nk); -inf = masked.

    Used by the reference (float64), the recompute fallback (float32) and the built-in baselines (the input
    dtype). Always built in float32 (float64 when ``dtype`` is float64) and cast to ``dtype`` once at the end:
    built directly in bf16, ALiBi's positions (arange up to N) are not exact integers above 256, the distances
    come out wrong and SDPA given that mask computes other attention (H100: max error 2.9 at N=2048).
    None when nothing is masked.
    """
    target = dtype
    dtype = torch.float64 if target == torch.float64 else torch.float32  # the working precision
    kind = MaskKind(mask_kind)
    out: torch.Tensor | None = None
    if mask is None:
        if kind is not MaskKind.NONE:
            raise ValueError(f"mask_kind={kind.value!r} needs a mask tensor")
    elif kind is MaskKind.BIAS:
        if mask.dtype == torch.bool:
            raise ValueError("mask_kind='bias' needs a float tensor; got a bool mask (use mask_kind='bool')")
        out = mask
    elif kind in (MaskKind.BOOL, MaskKind.PADDING):
        keep = mask.to(torch.bool)
        if kind is MaskKind.PADDING:
            if keep.dim() != 2:
                raise ValueError(f"padding mask must be (B, Nk); got shape {tuple(mask.shape)}")
            keep = keep[:, None, None, :]
        zero = torch.zeros((), dtype=dtype, device=device)
        out = torch.where(keep, zero, torch.full((), -math.inf, dtype=dtype, device=device))
    elif kind is MaskKind.ALIBI:
        i = torch.arange(nq, device=device, dtype=dtype)[:, None] + (nk - nq)
        j = torch.arange(nk, device=device, dtype=dtype)[None, :]
        out = -mask.to(dtype).reshape(1, h, 1, 1) * (i - j).abs()
    structural = allowed_keys(nq, nk, causal, window, device)
    if kind is MaskKind.BIAS and structural is None and mask is not None:
        return mask.to(target)  # nothing is added: a cast suffices (an fp32 copy of a 4x32x4096^2 bias is 8.6 GB)
    if structural is not None:
        s = torch.zeros((nq, nk), dtype=dtype, device=device).masked_fill(~structural, -math.inf)
        out = s if out is None else out.to(dtype) + s
    return None if out is None else out.to(target)


def attention_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, causal: bool = False,
    window: int | None = None, mask_kind: str = "none", mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v in ``compute_dtype`` (differentiable), returned in ``compute_dtype``.

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv) -> (B, Hq, Nq, Dv). Fully masked rows give 0.
    """
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"q heads ({hq}) must be a multiple of kv heads ({hkv})")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    if hkv != hq:
        kc = kc.repeat_interleave(hq // hkv, dim=1)
        vc = vc.repeat_interleave(hq // hkv, dim=1)
    s = torch.matmul(qc, kc.transpose(-1, -2)) * scale
    add = additive_mask(b, hq, nq, nk, causal=causal, window=window, mask_kind=mask_kind, mask=mask,
                        dtype=compute_dtype, device=q.device)
    if add is not None:
        s = s + add
    row_max = s.amax(dim=-1, keepdim=True).detach()  # shift-invariant: no gradient through the max
    empty = torch.isneginf(row_max)
    p = torch.exp(s - torch.where(empty, torch.zeros_like(row_max), row_max))
    denom = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(empty, torch.ones_like(denom), denom)
    return torch.matmul(p, vc)


def _reference_slices(b: int, hq: int, hkv: int, nq: int, nk: int) -> list[tuple[int, int, int]] | None:
    """(batch, first q head, end q head) slices of whole GQA groups, each with float64 scores under
    ``REFERENCE_CHUNK_BYTES``; None when the whole problem fits (or the head counts do not divide)."""
    per_head = nq * nk * 8
    if b * hq * per_head <= REFERENCE_CHUNK_BYTES or hq % hkv:
        return None
    group = hq // hkv
    heads = max(1, REFERENCE_CHUNK_BYTES // (per_head * group)) * group
    return [(bi, h0, min(hq, h0 + heads)) for bi in range(b) for h0 in range(0, hq, heads)]


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, causal: bool = False,
    window: int | None = None, mask_kind: str = "none", mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Float64 attention output (B, Hq, Nq, Dv); see the module docstring for the exact semantics.

    ``compute_dtype`` other than float64 gives "the same math in plain torch at that dtype", the yardstick of the
    checker's tolerance rule (check/tolerance.py). Computed one (batch, run of whole GQA groups) slice at a time
    when the float64 scores would exceed ``REFERENCE_CHUNK_BYTES``: at (2, 32, 8192, 8192) they are 34 GB, and
    the softmax needs a second copy."""
    b, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    slices = _reference_slices(b, hq, hkv, nq, nk)
    kw: dict[str, Any] = dict(scale=scale, causal=causal, window=window, mask_kind=mask_kind,
                              compute_dtype=compute_dtype)
    if slices is None:
        return attention_math(q, k, v, mask=mask, **kw)
    group = hq // hkv
    out = torch.empty((b, hq, nq, v.shape[3]), dtype=compute_dtype, device=q.device)
    for bi, h0, h1 in slices:
        kv = slice(h0 // group, h1 // group)
        out[bi:bi + 1, h0:h1] = attention_math(q[bi:bi + 1, h0:h1], k[bi:bi + 1, kv], v[bi:bi + 1, kv],
                                               mask=_mask_slice(mask, mask_kind, bi, h0, h1), **kw)
    return out


def reference_grads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, *, scale: float | None = None,
    causal: bool = False, window: int | None = None, mask_kind: str = "none", mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 (dq, dk, dv) of ``sum(attention(q, k, v) * do)`` by autograd; dk/dv summed over each GQA group.
    ``compute_dtype``: as in :func:`attention_reference`.

    Sliced like :func:`attention_reference` (whole GQA groups per slice, so each slice owns its dk/dv heads): the
    unsliced autograd graph of a (4, 32, 4096, 4096) target holds several 17 GB float64 tensors, and verifying a
    shipped record at its own shape ran out of memory on an 80 GB H100."""
    b, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    kw: dict[str, Any] = dict(scale=scale, causal=causal, window=window, mask_kind=mask_kind,
                              compute_dtype=compute_dtype)
    slices = _reference_slices(b, hq, hkv, nq, nk)
    if slices is None:
        return _grads_math(q, k, v, do, mask, **kw)
    group = hq // hkv
    dq = torch.empty(q.shape, dtype=compute_dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=compute_dtype, device=q.device)
    dv = torch.empty(v.shape, dtype=compute_dtype, device=q.device)
    for bi, h0, h1 in slices:
        kv = slice(h0 // group, h1 // group)
        dq[bi:bi + 1, h0:h1], dk[bi:bi + 1, kv], dv[bi:bi + 1, kv] = _grads_math(
            q[bi:bi + 1, h0:h1], k[bi:bi + 1, kv], v[bi:bi + 1, kv], do[bi:bi + 1, h0:h1],
            _mask_slice(mask, mask_kind, bi, h0, h1), **kw)
    return dq, dk, dv


def _grads_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, mask: torch.Tensor | None,
                compute_dtype: torch.dtype = torch.float64,
                **kw: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q64, k64, v64 = (t.detach().to(compute_dtype).requires_grad_(True) for t in (q, k, v))
    with torch.enable_grad():
        out = attention_math(q64, k64, v64, mask=mask, compute_dtype=compute_dtype, **kw)
        dq, dk, dv = torch.autograd.grad(out, (q64, k64, v64), do.to(compute_dtype))
    return dq, dk, dv


def reference_lse(
    q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None, causal: bool = False,
    window: int | None = None, mask_kind: str = "none", mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Natural-log logsumexp of each row's masked, scaled scores (B, Hq, Nq) in ``compute_dtype``, with the
    launcher ABI's convention: +inf for a row with no allowed key (the backward reads it as "P = 0").
    Sliced like :func:`attention_reference`."""
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"q heads ({hq}) must be a multiple of kv heads ({hkv})")
    sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
    group = hq // hkv

    def lse(qs: torch.Tensor, ks: torch.Tensor, ms: torch.Tensor | None) -> torch.Tensor:
        kc = ks.to(compute_dtype).repeat_interleave(group, dim=1) if group > 1 else ks.to(compute_dtype)
        s = torch.matmul(qs.to(compute_dtype), kc.transpose(-1, -2)) * sc
        add = additive_mask(qs.shape[0], qs.shape[1], nq, nk, causal=causal, window=window, mask_kind=mask_kind,
                            mask=ms, dtype=compute_dtype, device=q.device)
        if add is not None:
            s = s + add
        out = torch.logsumexp(s, dim=-1)
        return torch.where(torch.isneginf(out), torch.full_like(out, math.inf), out)

    slices = _reference_slices(b, hq, hkv, nq, nk)
    if slices is None:
        return lse(q, k, mask)
    out = torch.empty((b, hq, nq), dtype=compute_dtype, device=q.device)
    for bi, h0, h1 in slices:
        kv = slice(h0 // group, h1 // group)
        out[bi:bi + 1, h0:h1] = lse(q[bi:bi + 1, h0:h1], k[bi:bi + 1, kv], _mask_slice(mask, mask_kind, bi, h0, h1))
    return out


REFERENCE_CHUNK_BYTES = 2 << 30


def _mask_slice(mask: torch.Tensor | None, mask_kind: str, bi: int, h0: int, h1: int) -> torch.Tensor | None:
    """The part of ``mask`` that batch ``bi``, q heads [h0, h1) see (size-1 dims broadcast and stay whole)."""
    if mask is None:
        return None
    kind = MaskKind(mask_kind)
    if kind is MaskKind.ALIBI:
        return mask.reshape(-1)[h0:h1]
    if kind is MaskKind.PADDING:
        return mask[bi:bi + 1]
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)) if mask.dim() < 4 else mask
    if m.shape[0] > 1:
        m = m[bi:bi + 1]
    if m.shape[1] > 1:
        m = m[:, h0:h1]
    return m


@dataclass(frozen=True)
class AttentionInputs:
    """Random inputs of one spec: q (B,Hq,Nq,D), k (B,Hkv,Nk,D), v (B,Hkv,Nk,Dv), mask of the spec's kind or None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None


def alibi_slopes(heads: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The ALiBi paper's geometric slopes 2^(-8 (h+1) / H), float32 (H,)."""
    return torch.pow(2.0, -8.0 * torch.arange(1, heads + 1, dtype=torch.float32, device=device) / heads)


def make_inputs(spec: AttentionSpec, device: torch.device | str = "cpu", seed: int | None = None) -> AttentionInputs:
    """Fresh random inputs for ``spec`` (seed None: a new seed from the OS every call; values are never zeros).

    bool masks keep ~85% of keys (some rows may end up empty: they must give 0); padding keeps a random
    non-empty prefix per batch; bias is standard normal in the spec dtype, full (B, Hq, Nq, Nk).
    Drawn on ``device`` with a generator there (a seed reproduces the inputs on the same kind of device): a
    (4, 32, 4096, 4096) bias drawn on the host took tens of seconds, several times per search evaluation.
    """
    dev = torch.device(device)
    g = torch.Generator(device=dev)
    g.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else int(seed))
    dt = spec.torch_dtype
    b, hq, hkv, nq, nk = spec.batch, spec.q_heads, spec.kv_heads, spec.q_len, spec.kv_len

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float32, device=dev).to(dtype=dt)

    q, k, v = randn(b, hq, nq, spec.head_dim), randn(b, hkv, nk, spec.head_dim), randn(b, hkv, nk, spec.value_dim)
    mask: torch.Tensor | None = None
    if spec.mask is MaskKind.BIAS:
        mask = randn(b, hq, nq, nk)
    elif spec.mask is MaskKind.BOOL:
        mask = torch.rand(b, 1, nq, nk, generator=g, device=dev) < 0.85
    elif spec.mask is MaskKind.PADDING:
        lengths = torch.randint(1, nk + 1, (b,), generator=g, device=dev)
        mask = torch.arange(nk, device=dev)[None, :] < lengths[:, None]
    elif spec.mask is MaskKind.ALIBI:
        mask = alibi_slopes(hq, device)
    return AttentionInputs(q, k, v, mask)
