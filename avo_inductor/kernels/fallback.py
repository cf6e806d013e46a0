"""Recompute fallback in plain torch ops: forward (out, lse) and explicit backward formulas, fp32 math.

Used by the op's autograd when a kernel has no Triton backward or when the bias itself needs a gradient
(the Triton backward treats bias as a constant). Written as explicit formulas (no torch.autograd.grad), so
AOTAutograd traces it like any other backward code.
"""
from __future__ import annotations

import math

import torch

from .reference import additive_mask


def _expand_kv(t: torch.Tensor, group: int) -> torch.Tensor:
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def _sum_group(t: torch.Tensor, group: int) -> torch.Tensor:
    """(B, Hq, N, D) -> (B, Hkv, N, D): sum the gradients of the q heads sharing one kv head."""
    if group == 1:
        return t
    b, hq, n, d = t.shape
    return t.reshape(b, hq // group, group, n, d).sum(dim=2)


def _sum_to_shape(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to ``shape`` (leading dims dropped, size-1 dims summed)."""
    while t.dim() > len(shape):
        t = t.sum(dim=0)
    for i, size in enumerate(shape):
        if size == 1 and t.shape[i] != 1:
            t = t.sum(dim=i, keepdim=True)
    return t


def _probs(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool, window: int, mask_kind: str,
           mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, lse) in fp32: P (B, Hq, Nq, Nk) with empty rows 0, lse (B, Hq, Nq) with empty rows +inf."""
    b, hq, nq, _ = q.shape
    group = hq // k.shape[1]
    s = torch.matmul(q.float(), _expand_kv(k, group).float().transpose(-1, -2)) * scale
    add = additive_mask(b, hq, nq, k.shape[2], causal=causal, window=window or None, mask_kind=mask_kind,
                        mask=mask, dtype=torch.float32, device=q.device)
    if add is not None:
        s = s + add
    lse = torch.logsumexp(s, dim=-1)
    empty = torch.isneginf(lse)
    lse = torch.where(empty, torch.full_like(lse, math.inf), lse)
    return torch.exp(s - lse.unsqueeze(-1)), lse


def recompute_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *,
                      scale: float, causal: bool, window: int, mask_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, Hq, Nq, Dv) in q's dtype, lse (B, Hq, Nq) fp32) with the launcher's conventions."""
    p, lse = _probs(q, k, scale, causal, window, mask_kind, mask)
    out = torch.matmul(p, _expand_kv(v, q.shape[1] // k.shape[1]).float())
    return out.to(q.dtype), lse


def recompute_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor | None, *, scale: float, causal: bool, window: int, mask_kind: str,
                       mask_needs_grad: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dq, dk, dv, dmask): P recomputed, dS = P * (dP - rowsum(P * dP)); dmask only for a bias that needs grad."""
    group = q.shape[1] // k.shape[1]
    p, _ = _probs(q, k, scale, causal, window, mask_kind, mask)
    dof = do.float()
    kf, vf = _expand_kv(k, group).float(), _expand_kv(v, group).float()
    dv = _sum_group(torch.matmul(p.transpose(-1, -2), dof), group)
    dp = torch.matmul(dof, vf.transpose(-1, -2))
    ds = p * (dp - (p * dp).sum(dim=-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = _sum_group(torch.matmul(ds.transpose(-1, -2), q.float()), group) * scale
    dmask = None
    if mask_needs_grad and mask is not None and mask_kind == "bias":
        dmask = _sum_to_shape(ds, mask.shape).to(mask.dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dmask
