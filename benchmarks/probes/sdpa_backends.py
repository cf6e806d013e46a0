"""Which SDPA backend should a fallback site run: the one torch picks, or another?

A miss runs ``F.scaled_dot_product_attention``, and torch picks its backend (on an H100 with torch 2.11: cuDNN). In
session 17 the GPT-2 benchmark row (4 x 1024, 12 heads of 64, causal, inference) ran 1.57 ms a step that way and
0.76 ms with cuDNN's SDPA disabled (flash picked instead), in training 6.15 vs 7.01 ms the other way round. This
probe times each backend that accepts a site's shape, per call, two ways:
- ``wall us``: 100 back-to-back calls, one synchronize, wall clock per call: what a host-bound model step pays
  (the launch path's host cost when it exceeds the GPU work);
- ``gpu us``: the GPU time per call (do_bench, CUDA events, L2 flushed; the host cost hidden behind the queue).
Inference calls run under no_grad; training calls are forward + backward. Shapes: the real-model benchmark's quick
sites (benchmarks/hf_cases.py). The answer decides whether the fallback should pin a backend per site.
Usage (GPU): python -m benchmarks.probes.sdpa_backends
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..common import print_table, time_ms

BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}
COLUMNS = ("site", "mode", "backend", "wall us", "gpu us")


@dataclass(frozen=True)
class Site:
    """One attention call shape of a benchmark model: (B, Hq, Hkv, N, D), causal, a padding mask."""

    name: str
    batch: int
    q_heads: int
    kv_heads: int
    seq: int
    head_dim: int
    causal: bool
    padding: bool = False


SITES = (
    Site("gpt2 4x1024", 4, 12, 12, 1024, 64, True),
    Site("llama 2x2048 gqa", 2, 32, 8, 2048, 128, True),
    Site("bert 8x512 padded", 8, 12, 12, 512, 64, False, padding=True),
    Site("gpt2 8x1024", 8, 12, 12, 1024, 64, True),
    Site("llama 4x2048 gqa", 4, 32, 8, 2048, 128, True),
)


def _inputs(site: Site) -> tuple[torch.Tensor, ...]:
    q = torch.randn(site.batch, site.q_heads, site.seq, site.head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(site.batch, site.kv_heads, site.seq, site.head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    return q, k, v


def _call(site: Site, backend: SDPBackend | None, train: bool) -> Callable[[], None]:
    q, k, v = _inputs(site)
    mask = None
    if site.padding:  # the last quarter of every other sequence padded, as an additive (B, 1, 1, N) mask
        keep = torch.ones(site.batch, 1, 1, site.seq, dtype=torch.bool, device="cuda")
        keep[::2, ..., site.seq * 3 // 4:] = False
        mask = torch.zeros(keep.shape, dtype=q.dtype, device="cuda").masked_fill(~keep, torch.finfo(q.dtype).min)
    gqa = site.q_heads != site.kv_heads
    leaves = [t.requires_grad_(train) for t in (q, k, v)]
    grad = torch.randn_like(q)

    def run() -> None:
        with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
            if train:
                out = F.scaled_dot_product_attention(*leaves, attn_mask=mask, is_causal=site.causal, enable_gqa=gqa)
                out.backward(grad)
            else:
                with torch.no_grad():
                    F.scaled_dot_product_attention(*leaves, attn_mask=mask, is_causal=site.causal, enable_gqa=gqa)

    return run


def wall_us(fn: Callable[[], None], calls: int = 100) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> int:
    rows = []
    for site in SITES:
        for mode in ("infer", "train"):
            for name, backend in BACKENDS.items():
                fn = _call(site, backend, mode == "train")
                try:
                    fn()
                except RuntimeError as exc:  # this backend refuses the shape (mask, GQA, head dim)
                    rows.append({"site": site.name, "mode": mode, "backend": name, "wall us": None,
                                 "gpu us": None, "note": str(exc).splitlines()[0][:60]})
                    continue
                rows.append({"site": site.name, "mode": mode, "backend": name, "wall us": round(wall_us(fn), 1),
                             "gpu us": round(time_ms(fn, warmup_ms=25, rep_ms=100) * 1e3, 1)})
                print(rows[-1], flush=True)
    print_table(rows, COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
