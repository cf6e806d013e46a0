"""Fit and measure the polynomial exp2 of the flash_v1 forward (knob ``exp2_poly``; no GPU, numpy only).

2^x = 2^j * p(f) with j = round(x) and f = x - j in [-1/2, 1/2] (Cody-Waite range reduction; the rounding is the
fp32 magic-number add, so every step runs on the FMA/ALU pipes), p(f) = 1 + f (c1 + f (c2 + f c3)): a minimax fit
of 2^f in relative error with p(0) = 1 exactly (so a clamped x = -127 gives the float 0 exactly: masked scores stay
0). The fit is Lawson's iteratively reweighted least squares on a dense grid (converges to the minimax solution of
a linear problem), the coefficients rounded to fp32, then the whole kernel algorithm is replayed in numpy float32
(the template's _exp2_poly, step for step) against float64 2^x over [-126, 0] and the range reduction's edges.
Prints the coefficients to paste into templates/flash_v1_fwd.py and the measured errors.
Usage: python -m benchmarks.probes.exp2_poly_fit [--degree 3] [--grid 20001] [--iters 3000] [--samples 4000000]
"""
from __future__ import annotations

import argparse

import numpy as np

ROUND_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23: x + it holds round(x) in the low mantissa bits
ROUND_MAGIC_BITS = np.int32(0x4B400000)
BF16_EPS = 2.0 ** -8  # unit roundoff of bf16 (8 significand bits)
FP16_EPS = 2.0 ** -11  # unit roundoff of fp16 (11 significand bits)
FP32_EPS = 2.0 ** -24


def fit(degree: int, grid: int, iters: int) -> np.ndarray:
    """Coefficients c1..c_degree (float64) of 1 + sum c_k f^k minimizing max |p(f) / 2^f - 1| on [-1/2, 1/2]."""
    f = np.linspace(-0.5, 0.5, grid)
    target = np.exp2(f)
    a = np.stack([f ** k for k in range(1, degree + 1)], axis=1) / target[:, None]  # relative residual is linear
    b = (target - 1.0) / target
    w = np.full(grid, 1.0 / grid)
    coef = np.zeros(degree)
    for _ in range(iters):
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]
        r = np.abs(a @ coef - b)
        w = w * r
        w /= w.sum()
    return coef


def poly_f32(f: np.ndarray, coef32: np.ndarray) -> np.ndarray:
    """Horner in float32 with a separate rounding per step (the GPU fuses each into one FMA: at most as exact)."""
    acc = np.full_like(f, coef32[-1])
    for c in coef32[-2::-1]:
        acc = (acc * f + c).astype(np.float32)
    return (acc * f + np.float32(1.0)).astype(np.float32)


def exp2_poly_f32(x: np.ndarray, coef32: np.ndarray) -> np.ndarray:
    """The template's _exp2_poly replayed in numpy float32 (x float32)."""
    x = np.maximum(x, np.float32(-127.0))
    t = (x + ROUND_MAGIC).astype(np.float32)
    j = (t - ROUND_MAGIC).astype(np.float32)
    f = (x - j).astype(np.float32)
    p = poly_f32(f, coef32)
    scale = (t.view(np.int32) - ROUND_MAGIC_BITS) * np.int32(1 << 23)
    return (p.view(np.int32) + scale).view(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degree", type=int, default=3)
    parser.add_argument("--grid", type=int, default=20001)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=4_000_000)
    args = parser.parse_args()
    coef = fit(args.degree, args.grid, args.iters)
    coef32 = coef.astype(np.float32)
    f = np.linspace(-0.5, 0.5, 200_001)
    fit_err = np.abs((1.0 + sum(c * f ** (k + 1) for k, c in enumerate(coef))) / np.exp2(f) - 1.0).max()
    fit32_err = np.abs(poly_f32(f.astype(np.float32), coef32).astype(np.float64) / np.exp2(f.astype(np.float32))
                       - 1.0).max()
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-126.0, 0.0, args.samples), rng.uniform(-1.0, 0.0, args.samples // 4),
                        np.arange(-126, 1, dtype=np.float64), np.arange(-126, 1) + 0.5,
                        np.nextafter(np.arange(-126, 1) + 0.5, 0), np.nextafter(np.arange(-126, 1) + 0.5, -200)])
    x32 = x.astype(np.float32)
    got = exp2_poly_f32(x32, coef32).astype(np.float64)
    want = np.exp2(x32.astype(np.float64))
    rel = np.abs(got / want - 1.0)
    worst = int(np.argmax(rel))
    under = np.array([-127.0, -128.0, -1e4, -3.4028234663852886e38, -np.inf], dtype=np.float32)
    zeros = exp2_poly_f32(under, coef32)
    print(f"degree {args.degree}: c1..c{args.degree} (float64) = {coef.tolist()}")
    print(f"  as float32: {[float(c) for c in coef32]}  ({[c.hex() for c in coef32.astype(np.float64)]})")
    print(f"  minimax relative error on [-1/2, 1/2]: {fit_err:.3e} (2^{np.log2(fit_err):.2f}) float64 coefficients, "
          f"{fit32_err:.3e} float32 Horner")
    print(f"  algorithm in float32 over [-126, 0] ({x.size} points): max relative error {rel.max():.3e} "
          f"(2^{np.log2(rel.max()):.2f}) at x = {float(x32[worst])!r}")
    print(f"  against unit roundoff: bf16 {BF16_EPS:.2e} ({BF16_EPS / rel.max():.0f}x), fp16 {FP16_EPS:.2e} "
          f"({FP16_EPS / rel.max():.1f}x), fp32 {FP32_EPS:.2e} ({FP32_EPS / rel.max():.2g}x)")
    print(f"  x <= -127 ({[float(v) for v in under]}) -> {[float(v) for v in zeros]}")


if __name__ == "__main__":
    main()
