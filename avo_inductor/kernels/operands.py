"""Validation of the mask operand against q/k/v before any kernel reads it.

The kernels index the mask with strides derived from q/k's shapes: a padding mask of (B, 32) for 40 keys, or of
batch 1 for batch 3, would be read out of bounds rather than refused. One check, shape (with broadcast rules),
dtype and device per mask kind (see spec.MaskKind), run on tensor metadata only: no device sync, no ``.item()``.
"""
from __future__ import annotations

from typing import Any

import torch

# Dtypes a kernel reads as an additive bias / as ALiBi slopes (cast to fp32 on the host for ALiBi).
_FLOAT_MASK_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KINDS = ("none", "bias", "bool", "padding", "alibi")


def _shape(t: torch.Tensor) -> tuple[Any, ...]:
    return tuple(t.shape)


def _broadcastable(shape: tuple[Any, ...], target: tuple[Any, ...]) -> bool:
    """True when ``shape`` broadcasts to ``target`` (right-aligned; each dim 1 or equal; at most len(target) dims)."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target), strict=False))


def check_mask_operand(mask_kind: str, mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
                       v: torch.Tensor) -> None:
    """Raise ValueError unless ``mask`` is a valid ``mask_kind`` operand for q (B, Hq, Nq, D), k (B, Hkv, Nk, D),
    v (B, Hkv, Nk, Dv) (already checked against each other).

    none: no mask tensor. bias: float, broadcastable to (B, Hq, Nq, Nk). bool: torch.bool, broadcastable to
    (B, Hq, Nq, Nk). padding: torch.bool of exactly (B, Nk). alibi: float slopes with Hq values, (Hq,) or with
    every other dim 1. Every mask lives on q's device. The message names the operand, its shape and the expected.
    """
    if mask_kind not in _KINDS:
        raise ValueError(f"mask_kind must be one of {_KINDS}; got {mask_kind!r}")
    if mask_kind == "none":
        if mask is not None:
            raise ValueError(f"mask_kind='none' takes no mask tensor; got a mask of shape {_shape(mask)} "
                             f"(pass mask_kind='bias', 'bool', 'padding' or 'alibi')")
        return
    if mask is None:
        raise ValueError(f"mask_kind={mask_kind!r} needs a mask tensor; got None")
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{mask_kind} mask must be a torch.Tensor; got {type(mask).__name__}")
    b, hq, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if mask.device != q.device:
        raise ValueError(f"{mask_kind} mask must be on q's device {q.device}; got {mask.device}")
    if mask_kind == "padding":
        expected = "(B, Nk) = " + str((b, nk))
        if mask.dtype != torch.bool:
            raise ValueError(f"padding mask must be torch.bool {expected}; got dtype {mask.dtype}")
        if mask.dim() != 2 or mask.shape[0] != b or mask.shape[1] != nk:
            raise ValueError(f"padding mask has shape {_shape(mask)}; expected {expected} for q {_shape(q)}, "
                             f"k {_shape(k)}")
        return
    if mask_kind == "alibi":
        if mask.dtype not in _FLOAT_MASK_DTYPES:
            raise ValueError(f"alibi slopes must be a float tensor (float32 preferred); got dtype {mask.dtype}")
        if mask.dim() < 1 or [s for s in mask.shape if s != 1] != ([hq] if hq != 1 else []):
            raise ValueError(f"alibi slopes have shape {_shape(mask)}; expected (Hq,) = ({hq},) for q {_shape(q)}")
        return
    target = (b, hq, nq, nk)
    if mask_kind == "bool" and mask.dtype != torch.bool:
        raise ValueError(f"bool mask must be torch.bool (True = attend); got dtype {mask.dtype}")
    if mask_kind == "bias" and mask.dtype not in _FLOAT_MASK_DTYPES:
        raise ValueError(f"bias mask must be a float tensor {_FLOAT_MASK_DTYPES}; got dtype {mask.dtype}")
    if not _broadcastable(_shape(mask), target):
        raise ValueError(f"{mask_kind} mask has shape {_shape(mask)}; expected one broadcastable to "
                         f"(B, Hq, Nq, Nk) = {target} for q {_shape(q)}, k {_shape(k)}")
