"""With no kernel, what should a site with an additive bias run: SDPA with the bias, or the graph as written?

A miss rewrites hand-written attention to SDPA, which has no flash path for a float bias; Inductor compiles the
hand-written form into two matmuls and one fused softmax. A T5 encoder (bias over every (query, key) pair) ran 0.60x
Inductor that way on an H100. This probe times, per shape and bias layout, forward and training step:
- ``sdpa``: ``F.scaled_dot_product_attention(q, k, v, attn_mask=bias)`` as the rewrite emits it (bias in q's dtype);
- ``inductor``: ``torch.compile`` of softmax(q k^T * scale + bias) v, softmax in float32 (as the models write it).
Bias layouts: ``plane`` (1, H, Nq, Nk) as T5's relative bias, ``full`` (B, H, Nq, Nk), ``row`` (B, 1, 1, Nk) as
an additive padding mask. The answer decides detect/rewrite's rule for bias sites (backend/graph_pass.py).
Usage (GPU): python -m benchmarks.probes.bias_fallback
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import print_table, time_ms

SHAPES = ((8, 16, 1024, 64), (16, 12, 512, 64), (4, 16, 2048, 64), (2, 32, 4096, 128), (1, 16, 8192, 64))
COLUMNS = ("B", "H", "N", "D", "bias", "mode", "sdpa ms", "inductor ms", "sdpa / inductor")


def decomposed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _step(fn, q, k, v, bias, train: bool):  # type: ignore[no-untyped-def]
    if not train:
        return lambda: fn(q, k, v, bias)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    grad = torch.randn_like(q)

    def run() -> None:
        out = fn(*leaves, bias)
        out.backward(grad)
    return run


def main() -> None:
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    compiled = torch.compile(decomposed, dynamic=False)
    rows = []
    for b, h, n, d in SHAPES:
        q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=dt) for _ in range(3))
        layouts = {"plane": (1, h, n, n), "full": (b, h, n, n), "row": (b, 1, 1, n)}
        for name, shape in layouts.items():
            if name == "full" and b * h * n * n * 2 > 8 << 30:
                continue
            bias = torch.randn(*shape, device=dev, dtype=dt)
            for train in (False, True):
                try:
                    s = time_ms(_step(sdpa, q, k, v, bias, train))
                    i = time_ms(_step(compiled, q, k, v, bias, train))
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    continue
                rows.append({"B": b, "H": h, "N": n, "D": d, "bias": name, "mode": "train" if train else "infer",
                             "sdpa ms": s, "inductor ms": i, "sdpa / inductor": s / i})
            del bias
            torch.cuda.empty_cache()
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
