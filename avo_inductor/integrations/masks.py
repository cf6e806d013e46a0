"""A transformers attention mask, seen at run time, as avo mask flags: causal / sliding window / key padding / bias.

transformers (``sdpa_mask``) hands an attention function None (plus ``is_causal``) or a 4-D (B, 1, Nq, Nk) mask:
bool with True = attend, or additive float. The avo kernels run causal and windowed masks as flags (blocks above
the diagonal are skipped) and key padding as a (B, Nk) vector, so a bool mask is split into those terms whenever
that is exact: ``mask == structure & padding[:, None, :]`` is checked element for element. Otherwise it stays a
BOOL keep-mask (always exact, just read in full). Additive masks holding only 0 and "masked" values (at or below
the detector's threshold) are keep-masks too; any other additive mask is a BIAS. The same policy as the compile-time
detector (``detect/masks.py``), applied to values instead of graph terms.

Cost: the split reads the mask a few times and synchronises with the device; transformers builds one mask per
forward and passes the same tensor to every layer, so :class:`MaskPlanCache` does it once per mask tensor.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..detect.masks import Pattern, TermKind, _keep_of, swamps_scores
from ..spec import MaskKind


@dataclass(frozen=True)
class MaskPlan:
    """How one call's mask runs on an avo kernel: the spec's flags and the tensor the kernel reads.

    ``tensor``: (B, Nk) bool for PADDING, the keep-mask for BOOL, the additive mask for BIAS, else None.
    ``reason`` non-empty: the mask cannot run on an avo kernel exactly (the call falls back to SDPA).
    ``empty_rows_mean``: an additive mask whose masked keys carry finfo.min: a row that sees no key is eager's
    mean of v (``detect/empty_rows.py``), where the kernels give 0.
    """

    causal: bool = False
    window: int | None = None
    kind: MaskKind = MaskKind.NONE
    tensor: torch.Tensor | None = None
    reason: str = ""
    empty_rows_mean: bool = False

    def keep_4d(self) -> torch.Tensor | None:
        """The keep tensor as it broadcasts against (B, H, Nq, Nk) scores (None for no tensor, or a bias)."""
        if self.kind is MaskKind.PADDING and self.tensor is not None:
            return self.tensor[:, None, None, :]
        return self.tensor if self.kind is MaskKind.BOOL else None


NO_MASK = MaskPlan()
CAUSAL = MaskPlan(causal=True)


def _structure(keep: torch.Tensor) -> tuple[Pattern, int | None]:
    """Pattern of one (Nq, Nk) keep-mask against bottom-right aligned causal / window masks, on its own device."""
    nq, nk = keep.shape
    if bool(keep.all()):
        return Pattern.ALL, None
    causal = _band(nq, nk, None, keep.device)
    if torch.equal(keep, causal):
        return Pattern.CAUSAL, None
    window = int(keep[-1].sum())
    if 0 < window < nk and torch.equal(keep, _band(nq, nk, window, keep.device)):
        return Pattern.WINDOW, window
    return Pattern.GENERIC, None


def _band(nq: int, nk: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Causal (window None) or sliding-window keep-mask, bottom-right aligned like the avo spec's flags."""
    i = torch.arange(nq, device=device).unsqueeze(1) + (nk - nq)
    j = torch.arange(nk, device=device).unsqueeze(0)
    keep = j <= i
    return keep & (j > i - window) if window is not None else keep


def plan_mask(mask: torch.Tensor | None, *, is_causal: bool, batch: int, q_len: int, kv_len: int,
              score_dtype: torch.dtype | None = None) -> MaskPlan:
    """The avo flags for SDPA's ``(attn_mask=mask, is_causal=is_causal)`` on q (B, H, Nq, D), k (B, H, Nk, D).

    ``is_causal`` is SDPA's (top-left aligned): it equals the avo causal flag only when Nq == Nk. ``score_dtype``:
    q's dtype, which with an additive mask's decides whether its finite fill swamps the scores (eager's sum).
    """
    if mask is None:
        if not is_causal:
            return NO_MASK
        if q_len != kv_len:
            return MaskPlan(reason=f"is_causal with q_len {q_len} != kv_len {kv_len} (SDPA aligns it top-left)")
        return CAUSAL
    if is_causal:
        return MaskPlan(reason="both a mask and is_causal")
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != (q_len, kv_len) or mask.shape[0] not in (1, batch):
        return MaskPlan(reason=f"mask of shape {tuple(mask.shape)} for q_len {q_len}, kv_len {kv_len}")
    if mask.dtype == torch.bool:
        return _plan_keep(mask, batch)
    if mask.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return MaskPlan(reason=f"mask dtype {mask.dtype}")
    keep = _keep_of(mask, TermKind.BIAS)
    if keep is None:
        return MaskPlan(kind=MaskKind.BIAS, tensor=mask)
    # Decided once per mask (the plan is cached). Rows that see a key are exact whatever the fill; a row that sees
    # none is eager's: 0 under -inf (eager NaN), the mean of v under one fill that swamps the scores, and otherwise
    # (a milder fill: a softmax of the scores; -inf and finite fills, or differing ones, mixed) what the bias path
    # reproduces.
    if not bool((~keep.any(dim=-1)).any()):
        return _plan_keep(keep, batch)
    fills = mask.masked_select(~keep)
    if bool(torch.isinf(fills).all()):
        return _plan_keep(keep, batch)
    sum_dtype = torch.promote_types(mask.dtype, score_dtype) if score_dtype is not None else mask.dtype
    if bool(torch.isfinite(fills).all()) and bool(fills.min() == fills.max()) \
            and swamps_scores(float(fills.max()), sum_dtype):
        return replace(_plan_keep(keep, batch), empty_rows_mean=True)
    return MaskPlan(kind=MaskKind.BIAS, tensor=mask)


def _plan_keep(keep: torch.Tensor, batch: int) -> MaskPlan:
    """Split a 4-D keep-mask into causal / window flags and key padding where exact, else keep it as BOOL."""
    whole = MaskPlan(kind=MaskKind.BOOL, tensor=keep)
    if keep.shape[1] != 1:
        return whole  # per-head masks: no split
    rows = keep[:, 0]  # (B or 1, Nq, Nk)
    if rows.shape[1] == 1:  # one query (decode): its row is the key padding, whatever the structure
        return MaskPlan(kind=MaskKind.PADDING, tensor=rows[:, 0].expand(batch, -1))
    padding = rows.any(dim=1)  # (B, Nk): key j is attended by some query
    unpadded = padding.all(dim=1)
    if not bool(unpadded.any()):
        return whole
    pattern, window = _structure(rows[int(unpadded.int().argmax())])
    if pattern is Pattern.GENERIC:
        return whole
    nq, nk = rows.shape[1], rows.shape[2]
    structure = torch.ones(nq, nk, dtype=torch.bool, device=keep.device) if pattern is Pattern.ALL \
        else _band(nq, nk, window, keep.device)
    if not torch.equal(rows, structure & padding[:, None, :]):
        return whole
    causal = pattern in (Pattern.CAUSAL, Pattern.WINDOW)
    if bool(unpadded.all()):
        return MaskPlan(causal=causal, window=window)
    return MaskPlan(causal=causal, window=window, kind=MaskKind.PADDING, tensor=padding.expand(batch, -1))


class MaskPlanCache:
    """The plans of the last few mask tensors, keyed by identity and version (a mask changed in place is seen)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: list[tuple[weakref.ref[torch.Tensor], int, tuple[object, ...], MaskPlan]] = []

    def get(self, mask: torch.Tensor, key: tuple[object, ...], compute: Callable[[], MaskPlan]) -> MaskPlan:
        version = mask._version
        for ref, seen, seen_key, plan in self._entries:
            if ref() is mask and seen == version and seen_key == key:
                return plan
        plan = compute()
        self._entries = [e for e in self._entries if e[0]() is not None][-(self.size - 1):]
        self._entries.append((weakref.ref(mask), version, key, plan))
        return plan

    def clear(self) -> None:
        self._entries.clear()
