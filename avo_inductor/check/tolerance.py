"""The one tolerance rule of the checker: flash-attn's, relative to what plain torch achieves at the input dtype.

A kernel's error against the float64 reference may be at most ``FACTOR`` times the error of the same math done
in plain torch at the input dtype (against the same float64 reference), plus an absolute floor of ``FLOOR_ULPS``
rounding steps of the reference's own values in that dtype (flash-attn's ``(ref + 0.3 - 0.3 - ref)`` idiom), so
a case that torch gets exactly right (one key per row: the output is a copy of v) still leaves the kernel the
rounding of one store. The rule scales with the problem by itself: a long row or a large head dim makes torch
less exact too, where a fixed atol/rtol table is either too loose for short rows or too strict for long ones.

Why FACTOR = 3: flash-attn's own tests allow 2x for O and dq/dk/dv (FA2 test_flash_attn.py, FA3 ``rtol=2``).
Our kernels add one rounding step torch does not have on the paths the checker covers: the split-kv merge of
partial outputs and, on the Triton interpreter, numpy's dot accumulation order (measured: an honest flash_v1
reached 2.2x torch's max error on bf16 rows of 1-17 keys). 3x keeps those honest kernels in and still refuses
every planted cheat in tests/test_anticheat.py, whose errors are O(1) (hundreds of times torch's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FACTOR = 3.0
FLOOR_ULPS = 2.0
# A reference LSE below this is a row of finite but enormous negative bias (finfo.min padding): the kernel's
# LSE there only has to be below it too (exp2 scaling cannot represent it faithfully, and nothing reads it
# except as "this row's P is ~0 against any real score").
LSE_FLOOR = -1e30
# The LSE's floor in fp32 ulps of the largest |LSE| (at least 1): a kernel's LSE carries the rounding of the folded
# scale (sm_scale x log2 e, relative to every score), of a log2 and of a multiply by ln 2, which plain torch's
# logsumexp has not; the "+0.3 - 0.3" step of FLOOR_ULPS can fall under one ulp of a row's LSE and refused an honest
# flash_v1 (4.8e-7 against a bound of 2.2e-7 at |LSE| ~ 3, 1 row in 4, a few runs in a hundred). 8 ulps is 3e-6 at
# |LSE| = 3: a cheat's LSE error is orders of magnitude beyond it.
LSE_ULPS = 8.0


class CheckFailure(Exception):
    """A check failed; the message (fed back to the variation operator) says where and why."""


@dataclass(frozen=True)
class Comparison:
    """One tensor's comparison: the kernel's max error, torch-at-dtype's max error and the bound applied."""

    name: str
    max_abs_err: float
    torch_err: float
    bound: float
    rel_err: float


def rounding_floor(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """``FLOOR_ULPS`` x the largest rounding error of the reference's values stored in ``dtype``."""
    finite = ref[torch.isfinite(ref)]
    if finite.numel() == 0:
        return 0.0
    step = ((finite.to(dtype) + 0.3 - 0.3).to(torch.float64) - finite).abs().max()
    return FLOOR_ULPS * float(step)


def _where(bad: torch.Tensor) -> str:
    idx = tuple(int(i) for i in bad.nonzero()[0])
    rows = sorted({tuple(int(x) for x in r[:3]) for r in bad.nonzero()[:64].tolist()})
    return f"{int(bad.sum())} of {bad.numel()} elements, first at {idx}, (b, h, row) {rows[:4]}"


def compare(name: str, got: torch.Tensor, ref: torch.Tensor, same_math: torch.Tensor, dtype: torch.dtype,
            context: str = "", floor: float | None = None) -> Comparison:
    """Raise CheckFailure unless every element of ``got`` is finite and max|got - ref| <= FACTOR x max|same_math
    - ref| + floor. ``ref`` is float64, ``same_math`` the plain-torch result at the input ``dtype``; ``floor``
    defaults to ``rounding_floor(ref, dtype)``."""
    where = f"{name}{' (' + context + ')' if context else ''}"
    if tuple(got.shape) != tuple(ref.shape):
        raise CheckFailure(f"{where}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    g = got.detach().to(torch.float64)
    bad = ~torch.isfinite(g)
    if bad.any():
        raise CheckFailure(f"{where}: {_where(bad)} not finite ({int(torch.isnan(g).sum())} NaN: never written "
                           f"over the NaN poison, or computed NaN)")
    err = (g - ref).abs()
    torch_diff = (same_math.to(torch.float64) - ref).abs()
    torch_diff = torch_diff[torch.isfinite(torch_diff)]  # torch overflowing at the dtype widens nothing
    torch_err = float(torch_diff.max()) if torch_diff.numel() else 0.0
    bound = FACTOR * torch_err + (rounding_floor(ref, dtype) if floor is None else floor)
    max_err = float(err.max()) if err.numel() else 0.0
    rel = float(torch.linalg.vector_norm(g - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
    if max_err > bound or not math.isfinite(max_err):
        raise CheckFailure(f"{where}: max abs err {max_err:.3g} > {FACTOR:g} x torch-at-{str(dtype).split('.')[-1]} "
                           f"err {torch_err:.3g} + floor = {bound:.3g}; over the bound: {_where(err > bound)}")
    return Comparison(name, max_err, torch_err, bound, rel)


def compare_lse(got: torch.Tensor, ref: torch.Tensor, same_math: torch.Tensor, context: str = "") -> Comparison:
    """The LSE rule: rows with no allowed key (reference +inf) must be +inf (launcher ABI); rows whose reference
    is below LSE_FLOOR must be below it; every other row follows ``compare`` with the fp32 floor, at least LSE_ULPS
    ulps of the largest |LSE|."""
    where = f"lse{' (' + context + ')' if context else ''}"
    if tuple(got.shape) != tuple(ref.shape):
        raise CheckFailure(f"{where}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    g = got.detach().to(torch.float64)
    if torch.isnan(g).any():
        raise CheckFailure(f"{where}: {_where(torch.isnan(g))} NaN: not written for every row")
    empty = torch.isposinf(ref)
    wrong_empty = empty & ~torch.isposinf(g)
    if wrong_empty.any():
        raise CheckFailure(f"{where}: rows with no allowed key must hold +inf (launcher ABI): {_where(wrong_empty)}")
    tiny = (ref < LSE_FLOOR) & ~empty
    wrong_tiny = tiny & ~(g < LSE_FLOOR)
    if wrong_tiny.any():
        raise CheckFailure(f"{where}: rows whose reference LSE is below {LSE_FLOOR:g} must be too: "
                           f"{_where(wrong_tiny)}")
    normal = ~(empty | tiny)
    if not normal.any():
        return Comparison("lse", 0.0, 0.0, 0.0, 0.0)
    zero = torch.zeros((), dtype=torch.float64, device=g.device)
    ref_normal = torch.where(normal, ref, zero)
    ulps = LSE_ULPS * torch.finfo(torch.float32).eps * max(float(ref_normal.abs().max()), 1.0)
    return compare("lse", torch.where(normal, g, zero), ref_normal, torch.where(normal, same_math.to(torch.float64),
                   zero), torch.float32, context, floor=max(rounding_floor(ref_normal, torch.float32), ulps))
