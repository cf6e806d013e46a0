"""What giving rows without keys eager's mean costs a compiled site (detect/empty_rows.py).

An eager-style hand-written attention under a left-padded ``where(causal & padding, 0, finfo.min)`` mask is
compiled with ``backend="avo"`` twice, with the rewrite's ``mean_where_no_key`` and with it switched off, and both
are timed as CUDA-graph replays (host cost excluded, as a decode loop under CUDA graphs runs), best of --rounds, in one
process. The mean costs one read of V and a per-row count of allowed keys; decode, memory-bound, shows it most.
"site runs" says what the site runs besides (sdpa at a store miss, avo at a hit: seed the store to time the kernel).
Usage (GPU): python -m benchmarks.probes.empty_rows_cost [--specs "B,Hq,Hkv,Nq,Nk,D;..."] [--rounds 3]
"""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

import torch
import triton.testing

import avo_inductor
import avo_inductor.detect.rewrite as rewrite

from ..common import print_table

SPECS = "4,32,8,2048,2048,128;8,32,8,1,8192,128;32,32,8,1,4096,128"


class EagerMaskAttention(torch.nn.Module):
    """transformers' eager attention (GQA by repeat_interleave) under a left-padded causal finfo.min mask."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        nq, nk = q.shape[-2], k.shape[-2]
        i = torch.arange(nq, device=q.device)[:, None] + (nk - nq)
        j = torch.arange(nk, device=q.device)[None, :]
        keep = (j <= i)[None, None] & pad[:, None, None, :].bool()
        bias = torch.where(keep, torch.zeros((), device=q.device, dtype=q.dtype), torch.finfo(q.dtype).min)
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


@contextlib.contextmanager
def without_mean() -> Iterator[None]:
    """The rewrite as it was before rows without keys got eager's mean."""
    saved = rewrite._eager_empty_rows
    rewrite._eager_empty_rows = lambda b, match, out, v, keep: out  # type: ignore[assignment]
    try:
        yield
    finally:
        rewrite._eager_empty_rows = saved  # type: ignore[assignment]


def _with_mean(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    return EagerMaskAttention()(q, k, v, pad)


def _without_mean(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    return EagerMaskAttention()(q, k, v, pad)  # a code object of its own: Dynamo caches compiled code per code


def compiled(mean: bool) -> Callable[..., torch.Tensor]:
    """The site compiled with (or without) the mean: compiled at its first call, which for ``mean=False`` runs
    under :func:`without_mean`."""
    fn = torch.compile(_with_mean if mean else _without_mean, backend="avo")
    if mean:
        return fn
    first = True

    def call(*args: torch.Tensor) -> torch.Tensor:
        nonlocal first
        if not first:
            return fn(*args)
        with without_mean():
            out = fn(*args)
        first = False
        return out
    return call


def _time_us(fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...]) -> float:
    """One CUDA-graph timing of ``fn(*args)`` in microseconds (``fn`` already compiled: no compile in the capture)."""
    with torch.no_grad():
        return triton.testing.do_bench_cudagraph(lambda: fn(*args), rep=100) * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default=SPECS)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    for text in args.specs.split(";"):
        b, hq, hkv, nq, nk, d = (int(x) for x in text.split(","))
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, hq, nq, d, device="cuda", dtype=torch.bfloat16, generator=g)
        k, v = (torch.randn(b, hkv, nk, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        pad = torch.ones(b, nk, dtype=torch.long, device="cuda")
        pad[b // 2:, : nk // 3] = 0  # half the batch left-padded by a third
        torch._dynamo.reset()
        fns = {mean: compiled(mean) for mean in (True, False)}
        with torch.no_grad():
            for fn in fns.values():
                fn(q, k, v, pad)
            (site,) = avo_inductor.explain(EagerMaskAttention(), q, k, v, pad, quiet=True)
        times = {True: float("inf"), False: float("inf")}
        for _ in range(args.rounds):  # alternated, so a drifting clock biases neither side
            for mean, fn in fns.items():
                times[mean] = min(times[mean], _time_us(fn, (q, k, v, pad)))
        with_mean, plain = times[True], times[False]
        rows.append({"spec": f"{b},{hq},{hkv},{nq},{nk},{d} bf16 causal+left pad", "site runs": site.action,
                     "with mean us": with_mean, "without us": plain, "cost": with_mean / plain})
    print_table(rows, ("spec", "site runs", "with mean us", "without us", "cost"))


if __name__ == "__main__":
    main()
