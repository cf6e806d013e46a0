"""Which SDPA backend should a fallback site run: the one torch picks, or another?

A miss runs ``F.scaled_dot_product_attention``, and torch picks its backend (on an H100 with torch 2.11: cuDNN). In
session 17 the GPT-2 benchmark row (4 x 1024, 12 heads of 64, causal, inference) ran 1.57 ms a step that way and
0.76 ms with cuDNN's SDPA disabled (flash picked instead), in training 6.15 vs 7.01 ms the other way round. This
probe times each backend that accepts a site's shape (named as the search names them, search/bench.py
``SDPA_BACKENDS``: ``sdpa`` is torch's pick), through the search's own fallback call (``sdpa_call``), two ways:
- ``wall us``: 100 back-to-back calls, one synchronize, wall clock per call: what a host-bound model step pays
  (the launch path's host cost when it exceeds the GPU work);
- ``gpu us``: the GPU time per call (do_bench, CUDA events, L2 flushed; the host cost hidden behind the queue).
Inference calls run under no_grad; training calls are forward + backward. Shapes: the real-model benchmark's quick
sites (benchmarks/hf_cases.py). The answer decides whether the fallback should pin a backend per site.
Usage (GPU): python -m benchmarks.probes.sdpa_backends
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from avo_inductor.search.bench import SDPA_BACKENDS, dense_mask, sdpa_call
from avo_inductor.spec import AttentionSpec, MaskKind

from ..common import print_table, time_ms
from ..launch_overhead import per_call_us

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

    def spec(self) -> AttentionSpec:
        return AttentionSpec(self.batch, self.q_heads, self.kv_heads, self.seq, self.seq, self.head_dim,
                             causal=self.causal, mask=MaskKind.PADDING if self.padding else MaskKind.NONE)


SITES = (
    Site("gpt2 4x1024", 4, 12, 12, 1024, 64, True),
    Site("llama 2x2048 gqa", 2, 32, 8, 2048, 128, True),
    Site("bert 8x512 padded", 8, 12, 12, 512, 64, False, padding=True),
    Site("gpt2 8x1024", 8, 12, 12, 1024, 64, True),
    Site("llama 4x2048 gqa", 4, 32, 8, 2048, 128, True),
)


def _call(site: Site, backend: str | None, train: bool) -> Callable[[], None]:
    """One call of SDPA at ``site`` under ``backend`` (an SDPBackend name; None: torch's pick) as the search times
    the fallback (search/bench.py ``sdpa_call``): forward under no_grad, or forward + backward."""
    spec = site.spec()
    q = torch.randn(spec.batch, spec.q_heads, spec.q_len, spec.head_dim, device="cuda", dtype=spec.torch_dtype)
    k = torch.randn(spec.batch, spec.kv_heads, spec.kv_len, spec.head_dim, device="cuda", dtype=spec.torch_dtype)
    v = torch.randn_like(k)
    mask = None
    if site.padding:  # the last quarter of every other sequence padded: an additive (B, 1, 1, N) mask
        keep = torch.ones(spec.batch, spec.kv_len, dtype=torch.bool, device="cuda")
        keep[::2, spec.kv_len * 3 // 4:] = False
        mask = dense_mask(spec, keep, "cuda", structural=False)
    fn = sdpa_call(spec, mask, site.causal, backend)
    leaves = [t.requires_grad_(train) for t in (q, k, v)]
    grad = torch.randn_like(q)

    def run() -> None:
        if train:
            fn(*leaves).backward(grad)
        else:
            with torch.no_grad():
                fn(*leaves)

    return run


def main() -> int:
    rows: list[dict[str, object]] = []
    for site in SITES:
        for mode in ("infer", "train"):
            for name, backend in SDPA_BACKENDS.items():
                fn = _call(site, backend, mode == "train")
                try:
                    fn()
                except RuntimeError as exc:  # this backend refuses the shape (mask, GQA, head dim)
                    rows.append({"site": site.name, "mode": mode, "backend": name, "wall us": None,
                                 "gpu us": None, "note": str(exc).splitlines()[0][:60]})
                    continue
                rows.append({"site": site.name, "mode": mode, "backend": name,
                             "wall us": round(per_call_us(fn, calls=100)[1], 1),
                             "gpu us": round(time_ms(fn, warmup_ms=25, rep_ms=100) * 1e3, 1)})
                print(rows[-1], flush=True)
    print_table(rows, COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
