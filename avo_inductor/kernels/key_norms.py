"""The largest key norm of each (batch, kv head): what the bounded ALiBi forward (launch["alibi_bound"]) reads.

A trusted helper kernel of the launcher, not part of any evolved source. It reads K once, in eager calls too:
torch's own ``vector_norm(k, dim=-1).amax(-1)`` took 67 us on the H100 for 8x16x2048 d64 bf16 (beside a 286 us
attention kernel), Inductor's fused reduction of the same 18 us (benchmarks/probes/alibi_bound_profile.py).
"""
import triton
import triton.language as tl

ROWS_PER_PROGRAM = 1024  # keys one program reduces: B * H_KV * cdiv(N, 1024) programs fill the GPU


@triton.jit
def key_norm_max(K, OUT, OUT_OFFSET, stride_kb, stride_kh, stride_kn, stride_kd, H_KV, N_KV, HEAD_DIM,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    """OUT[OUT_OFFSET + b * H_KV + h] = max over this program's keys of ||K[b, h, j]|| (fp32, atomically maxed into
    a zeroed buffer). A norm that is not a number is stored as +inf, which turns the bound off (_alibi_span)."""
    bh = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1) * ROWS
    base = K + (bh // H_KV) * stride_kb + (bh % H_KV) * stride_kh
    offs_d = tl.arange(0, BLOCK_D)
    best = tl.zeros([BLOCK_N], dtype=tl.float32)
    for n0 in range(start, start + ROWS, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        keep = (offs_n[:, None] < N_KV) & (offs_d[None, :] < HEAD_DIM)
        x = tl.load(base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=keep, other=0.0)
        x = x.to(tl.float32)
        sq = tl.sum(x * x, 1)
        best = tl.maximum(best, tl.where(sq == sq, sq, float("inf")))  # maximum drops NaN: map it first
    norm = tl.sqrt(tl.max(best, 0))
    tl.atomic_max(OUT + OUT_OFFSET + bh, norm)
