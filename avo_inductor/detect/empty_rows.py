"""Query rows whose every key is masked: eager's answer where the mask's fill is finite.

Under flags, keep-masks or -inf, the avo kernels and SDPA give such a row 0 (``reference.py``'s rule; eager softmax
over -inf gives NaN; an additive finfo.min bias is another matter: the kernels' bias floor). A mask that
gives masked keys a finite score instead (transformers' eager masks, ``where(keep, 0, finfo.min)`` added to the
scores, or ``masked_fill(~keep, finfo.min)``) makes that row a softmax over equal scores in eager: the uniform
average, the mean of v over every key. Such rows sit at padded positions (left padding under a causal mask, or a
window lying wholly in the padding), which no real query reads, but a user comparing hidden states with eager sees
them. :func:`mean_where_no_key` runs after the kernel (or SDPA) and gives those rows eager's value.

Cost: one read of v for its mean and a count of each row's allowed keys. The count uses the (B, Nk) padding and the
causal / window flags through a running sum, O(B (Nq + Nk)), never an Nq x Nk mask; a keep-mask that is already a
full tensor is reduced as it is. Gradients follow eager: d v gets dO / Nk from those rows, the kernel's output there
gets none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rows_without_keys(keep: torch.Tensor | None, q_len: int, kv_len: int, causal: bool, window: int,
                      device: torch.device) -> torch.Tensor | None:
    """Bool (..., Nq | 1): query rows that no key is allowed for, broadcastable against (B, H, Nq).

    ``keep`` broadcasts against (B, H, Nq, Nk) (True attends), or is None. ``causal`` / ``window`` (0: none) are the
    avo flags, aligned bottom-right: query i sees key j iff i + Nk - Nq - window < j <= i + Nk - Nq. None when no
    row can be empty (no keep-mask and every query sees its diagonal key).
    """
    if keep is not None and keep.dim() == 1:
        keep = keep.unsqueeze(0)
    if not causal:
        return None if keep is None else ~keep.any(dim=-1)
    last = torch.arange(q_len, device=device) + (kv_len - q_len)  # each row's diagonal key
    hi = (last + 1).clamp(0, kv_len)  # allowed keys are lo <= j < hi
    lo = (last + 1 - window).clamp(0, kv_len) if window else torch.zeros_like(hi)
    if keep is None:
        return None if q_len <= kv_len else hi <= lo
    if keep.shape[-2] != 1:  # a keep-mask with its own query rows: count in full
        cols = torch.arange(kv_len, device=device)
        return ~(keep & (cols >= lo[:, None]) & (cols < hi[:, None])).any(dim=-1)
    keep = keep.expand(*keep.shape[:-1], kv_len)  # a keep broadcast over the keys (one flag per batch entry)
    seen = F.pad(keep.to(torch.int32).cumsum(dim=-1), (1, 0))  # (..., 1, Nk + 1): allowed keys before each j
    counts = seen.index_select(-1, hi) - seen.index_select(-1, lo)  # (..., 1, Nq)
    return (counts == 0).squeeze(-2)


def mean_where_no_key(out: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None, causal: bool,
                      window: int) -> torch.Tensor:
    """``out`` (B, Hq, Nq, Dv) with every row that no key is allowed for replaced by the mean of ``v``
    (B, Hkv, Nk, Dv; Hq a multiple of Hkv, grouped as the kernels group GQA heads), eager's uniform softmax."""
    empty = rows_without_keys(keep, out.shape[-2], v.shape[-2], causal, window, out.device)
    if empty is None:
        return out
    mean = v.mean(dim=-2, dtype=torch.float32)
    if out.shape[-3] != v.shape[-3]:
        mean = mean.repeat_interleave(out.shape[-3] // v.shape[-3], dim=-2)
    return torch.where(empty.unsqueeze(-1), mean.to(out.dtype).unsqueeze(-2), out)
