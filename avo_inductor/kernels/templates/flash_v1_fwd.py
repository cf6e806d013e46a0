"""flash_v1 forward: online-softmax attention, one program per (query tile, kv split, batch*head).

Rendered by avo_inductor/kernels/render.py, which rewrites the GENOME-CONSTANTS block from a KernelGenome.
Follows the launcher ABI documented at the top of avo_inductor/kernels/launch.py. Masks: MASK_KIND 0 none,
1 additive bias, 2 keep-mask (bool, read as *i1), 3 alibi slopes; causal/window bottom-right aligned.
LSE is natural-log logsumexp, +inf for rows with no allowed key (their output is 0); rows of finfo.min biases: see
BIAS_FLOOR.
PACK_GQA (FlashAttention-3's PackGQA): one program per (row tile, kv split, batch*kv head) whose rows are the
(query position, head-in-group) pairs of the GROUP q heads sharing that kv head, row r -> position r // GROUP,
q head kv_head * GROUP + r % GROUP, so each K/V block is read once for the whole group (decode with GQA).
USE_TMA: K/V tiles come through device-side tensor descriptors (Hopper's TMA engine copies them to shared memory,
no address arithmetic in the warps; out-of-range rows read as zero); the launcher guarantees unit last strides and
16-byte aligned rows and sets Triton's scratch allocator. HEAVY_FIRST (causal): tiles are visited in reverse
query order, so the tiles with the most key blocks start first and the last wave holds the light ones.
OVERLAP_QK: key blocks without masks issue the next block's QK^T before this block's softmax (_fwd_inner_overlap).
ALIBI_MMA: ALiBi blocks wholly on one side of a tile's diagonal take their per-key term from a depth-16 matmul
(_fwd_inner_alibi_mma), so their softmax is the unmasked one plus per-row work.
ALIBI_BOUND: ALiBi tiles skip the keys too far from every row's diagonal to weigh anything (_alibi_span): MASK holds
the slopes followed by each (batch, kv head)'s largest key norm (launch["alibi_bound"]).
SPLIT_COMBINE (split-K only): the entry attn_fwd_split_combine runs the same programs and then the last split program
of each query tile to finish (an atomic ticket per tile, the launcher zeroes the counters) combines the tile's partials
into O, so a decode call is one launch instead of a forward and a reduce (_combine_when_last).
"""
import triton
import triton.language as tl

# GENOME-CONSTANTS-START
USE_EXP2 = tl.constexpr(True)
CAUSAL_SPLIT = tl.constexpr(True)
LAZY_RESCALE = tl.constexpr(False)
PERSISTENT = tl.constexpr(False)
WARP_SPECIALIZE = tl.constexpr(False)
BWD_TRANSPOSED = tl.constexpr(False)
PACK_GQA = tl.constexpr(False)
HEAVY_FIRST = tl.constexpr(False)
USE_TMA = tl.constexpr(False)
BWD_DQ_ATOMIC = tl.constexpr(False)
BWD_DQ_TMA = tl.constexpr(False)
OVERLAP_QK = tl.constexpr(False)
ALIBI_MMA = tl.constexpr(False)
ALIBI_BOUND = tl.constexpr(False)
SPLIT_COMBINE = tl.constexpr(False)
# GENOME-CONSTANTS-END

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# Lazy rescale: keep the stale row max until the new one exceeds it by 2^8 (base-2 units): p <= 256 stays
# exactly representable in fp16/bf16 and the accumulator rescale is skipped on most iterations.
RESCALE_THRESHOLD = tl.constexpr(8.0)
KEEP_SCAN = tl.constexpr(1024)  # keys per step of the keep-vector scan (_kept_span)
# Additive biases are clamped here from below: torch.finfo(fp32 or bf16).min * log2(e) overflows to -inf, which
# would mask a key that eager softmax keeps (HF's padding bias puts finfo.min on every key of a padded query row;
# eager, SDPA and the float64 reference give that row mean(v), the scores being absorbed by the bias). Clamped, such
# a row's scores all equal BIAS_FLOOR and its softmax is uniform, as theirs. Its LSE cannot be exact through the
# log2 domain (log(N) is below the rounding of ~3e38): it is finite and below -1e30, which is how the checker
# recognises such rows. The backward recomputes P from the LSE, which cannot reproduce 1/N there: rows whose LSE
# is below BIAS_FLOOR_LSE contribute no gradient (_p_from_lse), exact where their upstream gradient is zero (the
# padded positions of a loss) and documented as a limit otherwise. Rows with at least one key above the floor are
# exact in both directions: the floor keys weigh exp2(-3.4e38 - max) = 0, as in eager.
BIAS_FLOOR = tl.constexpr(-3.4028234663852886e38)  # -FLT_MAX
BIAS_FLOOR_LSE = tl.constexpr(-1e30)


@triton.jit
def _dot(a, b, acc):
    # fp32 inputs: tl.dot defaults to tf32 (rel. err ~3e-3 on H100); the fp32 contract needs ieee.
    if a.dtype == tl.float32:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _load_tile(ptrs, offs_r, offs_c, n_r, n_c, CHECK_R: tl.constexpr, CHECK_C: tl.constexpr):
    if CHECK_R:
        if CHECK_C:
            x = tl.load(ptrs, mask=(offs_r[:, None] < n_r) & (offs_c[None, :] < n_c), other=0.0)
        else:
            x = tl.load(ptrs, mask=offs_r[:, None] < n_r, other=0.0)
    else:
        if CHECK_C:
            x = tl.load(ptrs, mask=offs_c[None, :] < n_c, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _mask_scores(s, rows, cols, mask, MASK_KIND: tl.constexpr, APPLY_CAUSAL: tl.constexpr,
                 HAS_WINDOW: tl.constexpr, CHECK_N: tl.constexpr):
    """Masked scores at (query ``rows``, key ``cols``): broadcastable 2-D index tensors, so one body serves S
    (rows (BM, 1), cols (1, BN)) and the backward's S^T (rows (1, BM), cols (BN, 1)). s is fp32 and scaled
    (log2 units when USE_EXP2); masked entries become -inf. ``mask`` is the operand of one (batch, head) with what
    its tests read: (base, stride_mm, stride_mn, ALiBi slope, N_Q, N_KV, window)."""
    M_base, stride_mm, stride_mn, slope, N_Q, N_KV, window = mask
    diag = rows + (N_KV - N_Q)  # bottom-right aligned query position
    if MASK_KIND == 1 or MASK_KIND == 2:
        inb = (rows < N_Q) & (cols < N_KV)
        m_ptrs = M_base + rows * stride_mm + cols * stride_mn
        if MASK_KIND == 1:
            bias = tl.load(m_ptrs, mask=inb, other=0.0)
            bias = bias.to(tl.float32)
            if USE_EXP2:
                # A finite bias stays finite in log2 units (see BIAS_FLOOR); -inf (a masked key) and NaN pass.
                scaled = bias * LOG2E
                bias = tl.where((scaled < BIAS_FLOOR) & (bias > float("-inf")), BIAS_FLOOR, scaled)
            s = s + bias
        else:
            keep = tl.load(m_ptrs, mask=inb, other=0)
            s = tl.where(keep != 0, s, float("-inf"))
    if MASK_KIND == 3:
        # Distances in fp32 from index vectors converted once (exact below 2^24): an int->float conversion per
        # score issues at the special-function units' quarter rate, the units every score's exp2 also needs.
        dist = tl.abs(diag.to(tl.float32) - cols.to(tl.float32))
        if USE_EXP2:
            s = s - (slope * LOG2E) * dist
        else:
            s = s - slope * dist
    if APPLY_CAUSAL:
        s = tl.where(cols <= diag, s, float("-inf"))
    if HAS_WINDOW:
        s = tl.where(cols > diag - window, s, float("-inf"))
    if CHECK_N:
        s = tl.where(cols < N_KV, s, float("-inf"))
    return s


@triton.jit
def _apply_masks(s, offs_m, offs_n, mask, MASK_KIND: tl.constexpr, APPLY_CAUSAL: tl.constexpr,
                 HAS_WINDOW: tl.constexpr, CHECK_N: tl.constexpr):
    """s: (BM, BN) scores of query rows offs_m against keys offs_n; see _mask_scores."""
    return _mask_scores(s, offs_m[:, None], offs_n[None, :], mask, MASK_KIND=MASK_KIND, APPLY_CAUSAL=APPLY_CAUSAL,
                        HAS_WINDOW=HAS_WINDOW, CHECK_N=CHECK_N)


@triton.jit
def _head_mask(MASK, off_b, off_h, stride_mb, stride_mh, MASK_KIND: tl.constexpr):
    """The mask operand's base for (batch, q head) and that head's ALiBi slope (0 unless MASK_KIND is alibi)."""
    slope = 0.0
    if MASK_KIND == 3:
        slope = tl.load(MASK + off_h * stride_mh).to(tl.float32)
    return MASK + off_b * stride_mb + off_h * stride_mh, slope


@triton.jit
def _kv_span(q_lo, q_hi, N_Q, N_KV, window, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
             HAS_WINDOW: tl.constexpr):
    """Key range [lo, hi) query positions [q_lo, q_hi) can see, lo aligned to BLOCK_N; hi <= lo: nothing to do."""
    lo = q_lo * 0
    hi = q_lo * 0 + N_KV
    if IS_CAUSAL:
        hi = tl.minimum(hi, q_hi + (N_KV - N_Q))
    if HAS_WINDOW:
        lo = tl.maximum(lo, q_lo + (N_KV - N_Q) - window + 1)
        lo = lo // BLOCK_N * BLOCK_N
    return lo, hi


@triton.jit
def _kv_range(start_m, N_Q, N_KV, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key range [lo, hi) the query tile of positions [start_m, start_m + BLOCK_M) can see (see _kv_span)."""
    return _kv_span(start_m, start_m + BLOCK_M, N_Q, N_KV, window, BLOCK_N, IS_CAUSAL, HAS_WINDOW)


@triton.jit
def _alibi_span(q, KEY_NORMS, lo, hi, c_first, c_last, N_Q, N_KV, qk_scale, alibi_w, BLOCK_N: tl.constexpr):
    """[lo, hi) narrowed, for ALiBi (one slope per program, alibi_w > 0 in score units), to the keys within
    distance r of the diagonal keys [c_first, c_last] of the tile's rows, outside which every key provably weighs
    under 2^-(26 + log2 N_KV) of its row's softmax sum (together under 2^-26: below fp32's resolution).

    Why it holds for any inputs: |score| <= u = max ||q_i|| * max ||k_j|| * scale (Cauchy-Schwarz; KEY_NORMS holds
    the head's largest key norm), so the row's max is at least the score of its own diagonal key, >= -u, and a key
    at distance d scores at most u - w * d: its weight relative to the max is below 2^-t once d >= (2u + t) / w.
    Needs every row's diagonal key allowed (N_Q <= N_KV; causal and windows allow it); otherwise [lo, hi) is kept,
    as it is for a bound that overflows or is not a number."""
    qf = q.to(tl.float32)
    q_norm = tl.sqrt(tl.max(tl.sum(qf * qf, 1), 0))
    u = q_norm * tl.load(KEY_NORMS).to(tl.float32) * qk_scale * 1.001  # the margin covers the norms' rounding
    n_kv = tl.zeros([], dtype=tl.float32) + N_KV  # (N_KV may arrive as a constexpr 1)
    t = 26.0 + tl.math.log2(n_kv)
    if not USE_EXP2:
        t = t * LN2
    r = (2.0 * u + t) / alibi_w
    narrow = (alibi_w > 0.0) & (r < n_kv) & (n_kv >= N_Q)  # false for inf / NaN bounds too
    r_keys = tl.where(narrow, r, 0.0).to(tl.int32) + 1
    lo_b = tl.maximum(lo, (c_first - r_keys) // BLOCK_N * BLOCK_N)  # C division: a negative start rounds to 0 <= lo
    hi_b = tl.minimum(hi, tl.cdiv(c_last + r_keys + 1, BLOCK_N) * BLOCK_N)
    return tl.where(narrow, lo_b, lo), tl.where(narrow, hi_b, hi)


@triton.jit
def _kept_span(KEEP, stride_kn, lo, hi, BLOCK_N: tl.constexpr):
    """[lo, hi) narrowed to the BLOCK_N-aligned span holding the kept entries of the keep-vector KEEP (bool over
    keys, stride stride_kn); an empty span when no key in [lo, hi) is kept, or when [lo, hi) is empty (lo > hi:
    a split past the last key, which must not widen into the keys before lo)."""
    hi = tl.maximum(hi, lo)
    first = hi
    last = lo - 1
    for start in range(lo, hi, KEEP_SCAN):
        offs = start + tl.arange(0, KEEP_SCAN)
        keep = tl.load(KEEP + offs * stride_kn, mask=offs < hi, other=0) != 0
        first = tl.minimum(first, tl.min(tl.where(keep, offs, hi), 0))
        last = tl.maximum(last, tl.max(tl.where(keep, offs, lo - 1), 0))
    return first // BLOCK_N * BLOCK_N, tl.minimum(hi, last + 1)


@triton.jit
def _k_tile(k_src, start_n, offs_n, n_bound, HEAD_DIM: tl.constexpr, CHECK_N: tl.constexpr):
    """K^T block (BLOCK_D, BLOCK_N) of keys offs_n = start_n + arange (CHECK_N: keys >= n_bound read as zero).
    ``k_src``: (K of one (batch, kv head): base pointer or, USE_TMA, tensor descriptor; stride_kn; stride_kd;
    offs_d, the head-dim offsets)."""
    K_src, stride_kn, stride_kd, offs_d = k_src
    if USE_TMA:
        kt = tl.trans(K_src.load([start_n, 0]))
    else:
        kt = _load_tile(K_src + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                        offs_d, offs_n, HEAD_DIM, n_bound, CHECK_R=HEAD_DIM != offs_d.shape[0], CHECK_C=CHECK_N)
    return kt


@triton.jit
def _v_tile(v_src, start_n, offs_n, n_bound, V_HEAD_DIM: tl.constexpr, CHECK_N: tl.constexpr):
    """V block (BLOCK_N, BLOCK_DV) of keys offs_n = start_n + arange (CHECK_N: keys >= n_bound read as zero).
    ``v_src``: (V_src, stride_vn, stride_vd, offs_dv), as k_src for K."""
    V_src, stride_vn, stride_vd, offs_dv = v_src
    if USE_TMA:
        v = V_src.load([start_n, 0])
    else:
        v = _load_tile(V_src + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                       offs_n, offs_dv, n_bound, V_HEAD_DIM, CHECK_R=CHECK_N, CHECK_C=V_HEAD_DIM != offs_dv.shape[0])
    return v


@triton.jit
def _softmax_step(x, m_i, qk_scale, row_offset, RAW: tl.constexpr, ROW_OFFSET: tl.constexpr,
                  MAY_BE_EMPTY: tl.constexpr):
    """The online softmax's update for one key block, shared by every forward loop: returns (p, alpha, m_new),
    p = exp(score - m_new) per score and alpha = exp(m_i - m_new) the rescale of what was accumulated so far
    (base 2 when USE_EXP2; LAZY_RESCALE keeps m_i until the new max exceeds it by RESCALE_THRESHOLD).

    The scores are x * qk_scale (RAW: x is raw QK^T, so the max is taken on raw scores and the scale folds into one
    FMA per score, as in the Triton tutorial; the launcher checks the scale is positive) or x itself (x already
    scaled and masked), plus ``row_offset`` per row when ROW_OFFSET (a term constant along the block's keys, kept
    out of the per-score work). MAY_BE_EMPTY: a row may have seen only masked (-inf) scores so far; its max then
    stands in as 0 so that -inf - -inf never appears."""
    if RAW:
        row_max = tl.max(x, 1) * qk_scale
    else:
        row_max = tl.max(x, 1)
    if ROW_OFFSET:
        row_max = row_max + row_offset
    m_new = tl.maximum(m_i, row_max)
    if LAZY_RESCALE:
        m_new = tl.where(m_new - m_i > RESCALE_THRESHOLD, m_new, m_i)
    if MAY_BE_EMPTY:
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_ref = m_new
    if ROW_OFFSET:
        shift = m_ref - row_offset
    else:
        shift = m_ref
    if RAW:
        arg = x * qk_scale - shift[:, None]
    else:
        arg = x - shift[:, None]
    if USE_EXP2:
        p = tl.math.exp2(arg)
        alpha = tl.math.exp2(m_i - m_ref)
    else:
        p = tl.exp(arg)
        alpha = tl.exp(m_i - m_ref)
    return p, alpha, m_new


@triton.jit
def _accumulate(acc, l_i, p, alpha, v_src, start_n, offs_n, n_bound, V_HEAD_DIM: tl.constexpr,
                CHECK_N: tl.constexpr):
    """One key block's end of the online softmax: the running sums and accumulator rescaled by alpha, then the
    block's P V added (V rows offs_n = start_n + arange; CHECK_N: rows >= n_bound read as zero)."""
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    v = _v_tile(v_src, start_n, offs_n, n_bound, V_HEAD_DIM, CHECK_N=CHECK_N)
    acc = _dot(p.to(v.dtype), v, acc)
    return acc, l_i


# EVOLVE-BLOCK-START
@triton.jit
def _fwd_inner_overlap(acc, l_i, m_i, q, k_src, v_src, lo, hi, qk_scale, HEAD_DIM: tl.constexpr,
                       V_HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Unmasked key blocks [lo, hi) (whole blocks inside N_KV) with FlashAttention-3's intra-warpgroup overlap:
    block j+1's QK^T is issued before block j's softmax, so the asynchronous matmul runs under the exponentials.
    The next block's index is clamped to the last block (the final iteration recomputes it and drops it: no read
    past hi); the prologue's load is bounded by hi, so an empty range reads nothing."""
    BLOCK_M: tl.constexpr = q.shape[0]
    offs_n0 = tl.arange(0, BLOCK_N)
    kt = _k_tile(k_src, lo, lo + offs_n0, hi, HEAD_DIM, CHECK_N=True)
    qk = _dot(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32))
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        nxt = tl.multiple_of(tl.minimum(start_n + BLOCK_N, hi - BLOCK_N), BLOCK_N)
        kt = _k_tile(k_src, nxt, nxt + offs_n0, hi, HEAD_DIM, CHECK_N=False)
        qk_next = _dot(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32))
        p, alpha, m_i = _softmax_step(qk, m_i, qk_scale, 0.0, RAW=True, ROW_OFFSET=False, MAY_BE_EMPTY=False)
        acc, l_i = _accumulate(acc, l_i, p, alpha, v_src, start_n, start_n + offs_n0, hi, V_HEAD_DIM, CHECK_N=False)
        qk = qk_next
    return acc, l_i, m_i


@triton.jit
def _alibi_mma_operands(slope, sm_scale, dtype: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(qx (BLOCK_M, 16) fp32, kx (16, BLOCK_N) in ``dtype``) with qx @ kx = (slope / sm_scale) * j for the key j of
    a block, in QK^T's units: j < 256 is exact in 16-bit floats, and the factor goes in as three 16-bit pieces (24
    bits, fp32's precision; qx holds them exactly), whose products with j the matmul adds exactly in fp32."""
    u = slope / sm_scale
    u1 = u.to(dtype).to(tl.float32)
    r = u - u1
    u2 = r.to(dtype).to(tl.float32)
    u3 = (r - u2).to(dtype).to(tl.float32)
    cols = tl.arange(0, 16)[None, :]
    row = tl.where(cols == 0, u1, tl.where(cols == 1, u2, tl.where(cols == 2, u3, 0.0)))
    qx = tl.zeros([BLOCK_M, 16], dtype=tl.float32) + row
    rows = tl.arange(0, 16)[:, None]
    kx = tl.where(rows < 3, tl.arange(0, BLOCK_N)[None, :].to(tl.float32), 0.0).to(dtype)
    return qx, kx


@triton.jit
def _fwd_inner_alibi_mma(acc, l_i, m_i, q, k_src, v_src, alibi, lo, hi, N_KV, qk_scale, HEAD_DIM: tl.constexpr,
                         V_HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CHECK_N: tl.constexpr,
                         ALIBI_SIDE: tl.constexpr):
    """ALiBi key blocks [lo, hi) wholly left (ALIBI_SIDE 1) or right (2) of every row's diagonal (ALIBI_MMA): their
    scores, in the tile's shifted units (see _fwd_tile), are qk * qk_scale + side_w * j + gamma, j the key's offset
    in its block and gamma = side_w * (start_n - c0), plus 2 * row_shift per row on the right (side_w = +w left,
    -w right). qx @ kx (_alibi_mma_operands, qx negated on the right) adds side_w * j to QK^T on the tensor cores;
    gamma, one value per row, is _softmax_step's row offset, so each score costs what an unmasked one does."""
    alibi_w, c0, row_shift, qx, kx = alibi
    BLOCK_M: tl.constexpr = q.shape[0]
    if ALIBI_SIDE == 1:
        side_w = alibi_w
        qx_op = qx.to(q.dtype)
    else:
        side_w = -alibi_w
        qx_op = (-qx).to(q.dtype)  # negated in fp32: the CPU interpreter keeps bf16 as raw bits
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n0
        kt = _k_tile(k_src, start_n, offs_n, N_KV, HEAD_DIM, CHECK_N=CHECK_N)
        qk = _dot(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32))
        qk = _dot(qx_op, kx, qk)
        if CHECK_N:
            qk = tl.where((offs_n < N_KV)[None, :], qk, float("-inf"))
        gamma = side_w * (start_n - c0).to(tl.float32)
        if ALIBI_SIDE == 2:
            gamma = gamma + 2.0 * row_shift
        p, alpha, m_new = _softmax_step(qk, m_i, qk_scale, gamma, RAW=True, ROW_OFFSET=True, MAY_BE_EMPTY=False)
        acc, l_i = _accumulate(acc, l_i, p, alpha, v_src, start_n, offs_n, N_KV, V_HEAD_DIM, CHECK_N=CHECK_N)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_src, v_src, mask, alibi, offs_m, lo, hi, qk_scale, HEAD_DIM: tl.constexpr,
               V_HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, APPLY_CAUSAL: tl.constexpr,
               HAS_WINDOW: tl.constexpr, CHECK_N: tl.constexpr, ALIBI_SIDE: tl.constexpr):
    """Online softmax over key blocks [lo, hi) (the overlapped loop, OVERLAP_QK, where they need no mask; with
    ALIBI_MMA, ALiBi blocks on one side of the diagonal with no other mask take _fwd_inner_alibi_mma).
    ``k_src``/``v_src``: see _k_tile; ``mask``: see _mask_scores; ``alibi``: (w, c0, row_shift, qx, kx), below.
    ALIBI_SIDE (ALiBi with one slope per program, see _fwd_tile): 0 scores as _apply_masks gives them; otherwise
    scores carry the row shift ``row_shift`` = w * (d - c0) (w the slope in score units, d each row's diagonal key,
    c0 the tile's first): 1 every key of these blocks is at or left of every row's diagonal (or causally masked), so
    the ALiBi term is the column vector w * (c - c0); 2 every key is right of every row's diagonal,
    2 * row_shift - w * (c - c0); 3 the band between, |d - c| per score."""
    alibi_w, c0, row_shift, qx, kx = alibi
    N_KV = mask[5]
    BLOCK_M: tl.constexpr = q.shape[0]
    offs_n0 = tl.arange(0, BLOCK_N)
    # A block with nothing to mask takes the short path (raw scores), or with OVERLAP_QK the overlapped loop.
    NO_MASK: tl.constexpr = MASK_KIND == 0 and not APPLY_CAUSAL and not HAS_WINDOW and not CHECK_N
    ONE_SIDED_MMA: tl.constexpr = (ALIBI_MMA and (ALIBI_SIDE == 1 or ALIBI_SIDE == 2) and not APPLY_CAUSAL
                                   and not HAS_WINDOW)
    if ONE_SIDED_MMA:
        acc, l_i, m_i = _fwd_inner_alibi_mma(acc, l_i, m_i, q, k_src, v_src, alibi, lo, hi, N_KV, qk_scale,
                                             HEAD_DIM, V_HEAD_DIM, BLOCK_N, CHECK_N=CHECK_N, ALIBI_SIDE=ALIBI_SIDE)
    elif OVERLAP_QK and NO_MASK and not WARP_SPECIALIZE:
        acc, l_i, m_i = _fwd_inner_overlap(acc, l_i, m_i, q, k_src, v_src, lo, hi, qk_scale, HEAD_DIM, V_HEAD_DIM,
                                           BLOCK_N)
    else:
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            offs_n = start_n + offs_n0
            kt = _k_tile(k_src, start_n, offs_n, N_KV, HEAD_DIM, CHECK_N=CHECK_N)
            qk = _dot(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32))
            if NO_MASK:
                p, alpha, m_new = _softmax_step(qk, m_i, qk_scale, 0.0, RAW=True, ROW_OFFSET=False,
                                                MAY_BE_EMPTY=False)
            else:
                s = qk * qk_scale
                if ALIBI_SIDE == 1:
                    s = s + (alibi_w * (offs_n - c0).to(tl.float32))[None, :]
                elif ALIBI_SIDE == 2:
                    s = s + (2.0 * row_shift)[:, None] - (alibi_w * (offs_n - c0).to(tl.float32))[None, :]
                ONE_SIDED: tl.constexpr = ALIBI_SIDE == 1 or ALIBI_SIDE == 2  # ALiBi term already added
                s = _apply_masks(s, offs_m, offs_n, mask, MASK_KIND=0 if ONE_SIDED else MASK_KIND,
                                 APPLY_CAUSAL=APPLY_CAUSAL, HAS_WINDOW=HAS_WINDOW, CHECK_N=CHECK_N)
                if ALIBI_SIDE == 3:
                    s = s + row_shift[:, None]
                p, alpha, m_new = _softmax_step(s, m_i, qk_scale, 0.0, RAW=False, ROW_OFFSET=False,
                                                MAY_BE_EMPTY=True)
            acc, l_i = _accumulate(acc, l_i, p, alpha, v_src, start_n, offs_n, N_KV, V_HEAD_DIM, CHECK_N=CHECK_N)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_tile(Q, K, V, O, LSE, MASK, strides, pid_m, split, off_b, off_h, H_Q, GROUP, N_Q, N_KV, sm_scale, window,
              HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
              MASK_KIND: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, SPLITS: tl.constexpr):
    """One tile. Unpacked: off_h is the q head and row i is query position pid_m * BLOCK_M + i. PACK_GQA: off_h is
    the kv head and packed row r = pid_m * BLOCK_M + i is position r // GROUP of q head off_h * GROUP + r % GROUP;
    masks, bias, slopes and stores use each row's own position and head. ``strides``: the launch's 20 strides of
    q, k, v, o and the mask operand, in the ABI's order."""
    (stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
     stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
     stride_mb, stride_mh, stride_mm, stride_mn) = strides
    off_b = off_b.to(tl.int64)
    off_h = off_h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if PACK_GQA:
        off_kvh = off_h
        offs_r = start_m + tl.arange(0, BLOCK_M)
        offs_m = offs_r // GROUP  # query position of each row (>= N_Q exactly for rows past N_Q * GROUP)
        head_m = off_h * GROUP + offs_r % GROUP  # q head of each row
        q_lo = start_m // GROUP
        q_hi = (start_m + BLOCK_M - 1) // GROUP + 1
        q_off = (off_b * stride_qb + head_m * stride_qh)[:, None]
    else:
        off_kvh = off_h // GROUP
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_lo = start_m
        q_hi = start_m + BLOCK_M
        q_off = off_b * stride_qb + off_h * stride_qh
    q = _load_tile(Q + q_off + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                   offs_m, offs_d, N_Q, HEAD_DIM, not EVEN_M, HEAD_DIM != BLOCK_D)
    # Scalars may arrive as fp64 from Inductor: cast once, before anything loop-carried uses them.
    qk_scale = tl.cast(sm_scale, tl.float32)
    if USE_EXP2:
        qk_scale = qk_scale * LOG2E
    K_src = K + off_b * stride_kb + off_kvh * stride_kh
    V_src = V + off_b * stride_vb + off_kvh * stride_vh
    if USE_TMA:
        K_src = tl.make_tensor_descriptor(K_src, shape=[N_KV, HEAD_DIM], strides=[stride_kn, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
        V_src = tl.make_tensor_descriptor(V_src, shape=[N_KV, V_HEAD_DIM], strides=[stride_vn, 1],
                                          block_shape=[BLOCK_N, BLOCK_DV])
    if PACK_GQA:
        # (BM, 1) row pointers / slopes broadcast against the (BM, BN) scores in _apply_masks
        M_base = MASK + off_b * stride_mb + (head_m * stride_mh)[:, None]
        slope = tl.zeros([BLOCK_M, 1], dtype=tl.float32)
        if MASK_KIND == 3:
            slope = tl.load(MASK + head_m * stride_mh).to(tl.float32)[:, None]
        lo, hi = _kv_span(q_lo, q_hi, N_Q, N_KV, window, BLOCK_N, IS_CAUSAL, HAS_WINDOW)
    else:
        M_base, slope = _head_mask(MASK, off_b, off_h, stride_mb, stride_mh, MASK_KIND)
        lo, hi = _kv_range(start_m, N_Q, N_KV, window, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WINDOW)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # ALiBi with one slope per program: -w|d - c| = w(c - c0) - w(d - c0) left of the diagonal, so scores carry
    # the row shift w(d - c0) and blocks wholly on one side add a column vector (one FMA per score where
    # |d - c| cost four); the LSE drops the shift at the end. c0 (the tile's first diagonal key) keeps the shifted
    # scores near the row max small, as exact in fp32 as the unshifted ones.
    ALIBI_SHIFT: tl.constexpr = MASK_KIND == 3 and not PACK_GQA
    c0 = q_lo + (N_KV - N_Q)
    if ALIBI_SHIFT:
        alibi_w = slope * LOG2E if USE_EXP2 else slope
        row_shift = alibi_w * (offs_m - q_lo).to(tl.float32)
    else:
        alibi_w = 0.0
        row_shift = tl.zeros([BLOCK_M], dtype=tl.float32)
    # ALIBI_MMA: the per-key part of those one-sided blocks' term from the tensor cores (_fwd_inner_alibi_mma).
    if ALIBI_SHIFT and ALIBI_MMA:
        qx, kx = _alibi_mma_operands(slope, tl.cast(sm_scale, tl.float32), q.dtype, BLOCK_M, BLOCK_N)
    else:
        qx = 0.0
        kx = 0.0
    if ALIBI_SHIFT and ALIBI_BOUND:
        key_norms = MASK + H_Q * stride_mh + off_b * (H_Q // GROUP) + off_kvh
        lo, hi = _alibi_span(q, key_norms, lo, hi, c0, q_hi - 1 + (N_KV - N_Q), N_Q, N_KV, qk_scale, alibi_w,
                             BLOCK_N)
    SIDE_LEFT: tl.constexpr = 1 if ALIBI_SHIFT else 0  # causal: every unmasked key is left of its row's diagonal
    SIDE_BAND: tl.constexpr = 3 if ALIBI_SHIFT else 0
    if SPLITS > 1:
        chunk = tl.cdiv(tl.cdiv(N_KV, SPLITS), BLOCK_N) * BLOCK_N
        lo = tl.maximum(lo, split * chunk)
        hi = tl.minimum(hi, split * chunk + chunk)
    if MASK_KIND == 2:
        if (stride_mm == 0) & (stride_mh == 0):
            # One keep-vector over the keys for every query and head (a padding mask): keys outside its first and
            # last kept entry are masked for every row, so the loop skips them (varlen's saving, from the mask).
            lo, hi = _kept_span(MASK + off_b * stride_mb, stride_mn, lo, hi, BLOCK_N)
    # What every key loop reads, grouped as it travels: K and V of this (batch, kv head), the mask operand of this
    # (batch, head) with the lengths and window its tests use, and the ALiBi shift state.
    k_src = (K_src, stride_kn, stride_kd, offs_d)
    v_src = (V_src, stride_vn, stride_vd, offs_dv)
    mask = (M_base, stride_mm, stride_mn, slope, N_Q, N_KV, window)
    alibi = (alibi_w, c0, row_shift, qx, kx)
    if IS_CAUSAL and CAUSAL_SPLIT:
        # Blocks wholly below the diagonal of the tile's first row need no causal test and no key bounds
        # test (they end at or before key q_lo + off < N_KV); only the diagonal band pays for masks.
        full_hi = (q_lo + (N_KV - N_Q) + 1) // BLOCK_N * BLOCK_N
        full_hi = tl.minimum(tl.maximum(full_hi, lo), hi)
        mid_lo = lo
        if HAS_WINDOW:
            # Blocks from mid_lo on lie inside every row's window (the tile's last row's window starts latest):
            # only the window's lower edge band pays for the window test, as only the diagonal band pays for causal.
            mid_lo = tl.cdiv(tl.maximum(q_hi - 1 + (N_KV - N_Q) - window + 1, 0), BLOCK_N) * BLOCK_N
            mid_lo = tl.minimum(tl.maximum(mid_lo, lo), full_hi)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, mask, alibi, offs_m, lo, mid_lo, qk_scale,
                                       HEAD_DIM, V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=False,
                                       HAS_WINDOW=True, CHECK_N=False, ALIBI_SIDE=SIDE_LEFT)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, mask, alibi, offs_m, mid_lo, full_hi, qk_scale,
                                   HEAD_DIM, V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=False,
                                   HAS_WINDOW=False, CHECK_N=False, ALIBI_SIDE=SIDE_LEFT)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, mask, alibi, offs_m, full_hi, hi, qk_scale,
                                   HEAD_DIM, V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=True,
                                   HAS_WINDOW=HAS_WINDOW, CHECK_N=not EVEN_N, ALIBI_SIDE=SIDE_LEFT)
    elif ALIBI_SHIFT and not IS_CAUSAL and not HAS_WINDOW:
        # Blocks ending at or before the tile's first diagonal key (c0, so inside N_KV: no bounds test), the band
        # the tile's diagonal crosses, and the blocks starting after its last row's diagonal key.
        left_hi = tl.minimum(tl.maximum((c0 + 1) // BLOCK_N * BLOCK_N, lo), hi)
        right_lo = tl.minimum(tl.maximum(tl.cdiv(q_hi + (N_KV - N_Q), BLOCK_N) * BLOCK_N, left_hi), hi)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, mask, alibi, offs_m, lo, left_hi, qk_scale,
                                   HEAD_DIM, V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=False,
                                   HAS_WINDOW=False, CHECK_N=False, ALIBI_SIDE=1)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, mask, alibi, offs_m, left_hi, right_lo, qk_scale,
                                   HEAD_DIM, V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=False,
                                   HAS_WINDOW=False, CHECK_N=not EVEN_N, ALIBI_SIDE=3)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, mask, alibi, offs_m, right_lo, hi, qk_scale,
                                   HEAD_DIM, V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=False,
                                   HAS_WINDOW=False, CHECK_N=not EVEN_N, ALIBI_SIDE=2)
    else:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, mask, alibi, offs_m, lo, hi, qk_scale,
                                   HEAD_DIM, V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=IS_CAUSAL,
                                   HAS_WINDOW=HAS_WINDOW, CHECK_N=not EVEN_N,
                                   ALIBI_SIDE=SIDE_LEFT if IS_CAUSAL else SIDE_BAND)
    if ALIBI_SHIFT:
        m_i = m_i - row_shift
    empty = l_i == 0.0
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    if USE_EXP2:
        lse = (m_i + tl.math.log2(l_i)) * LN2
    else:
        lse = m_i + tl.log(l_i)
    if SPLITS == 1:
        lse = tl.where(empty, float("inf"), lse)  # +inf: exp(s - lse) = 0 in the backward
    else:
        lse = tl.where(empty, float("-inf"), lse)  # -inf: weight 0 in the split reduction
    if PACK_GQA:
        out_h = head_m * SPLITS + split
        o_ptrs = (O + (off_b * stride_ob + out_h * stride_oh + offs_m * stride_om)[:, None]
                  + offs_dv[None, :] * stride_od)
    else:
        out_h = off_h * SPLITS + split
        o_ptrs = O + off_b * stride_ob + out_h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_dv[None, :] < V_HEAD_DIM))
    tl.store(LSE + (off_b * H_Q * SPLITS + out_h) * N_Q + offs_m, lse, mask=offs_m < N_Q)


@triton.jit
def _fwd_programs(Q, K, V, O, LSE, MASK, strides, BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale, window, final,
                  HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  MASK_KIND: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, SPLITS: tl.constexpr,
                  COMBINE: tl.constexpr):
    """This program's tiles (one, or a grid-stride walk when PERSISTENT). COMBINE: after each tile, the last split
    program of it combines the partials into ``final`` (OF, LSEF, TICKETS, 4 strides of OF)."""
    if PACK_GQA:
        # Tiles of N_Q * GROUP packed rows per (batch, kv head): the grid's second axis is B * H_KV.
        H_T = H_Q // GROUP
        ROWS = N_Q * GROUP
    else:
        H_T = H_Q
        ROWS = N_Q
    if PERSISTENT:
        # One program per SM walks tiles with a grid stride: no tail wave, one launch's worth of setup.
        tiles_per_bh = tl.cdiv(ROWS, BLOCK_M) * SPLITS
        total = tiles_per_bh * BATCH * H_T
        for tile in range(tl.program_id(0), total, tl.num_programs(0)):
            bh = tile // tiles_per_bh
            r = tile % tiles_per_bh
            pid_m = r // SPLITS
            # Reversed within each (batch, head), never across heads: neighbouring programs keep sharing K/V in L2.
            if IS_CAUSAL and HEAVY_FIRST:
                pid_m = tl.cdiv(ROWS, BLOCK_M) - 1 - pid_m
            _program_tile(Q, K, V, O, LSE, MASK, strides, final, pid_m, r % SPLITS, bh, H_T, ROWS, H_Q, GROUP, N_Q,
                          N_KV, sm_scale, window, HEAD_DIM=HEAD_DIM, V_HEAD_DIM=V_HEAD_DIM, BLOCK_D=BLOCK_D,
                          BLOCK_DV=BLOCK_DV, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, IS_CAUSAL=IS_CAUSAL,
                          HAS_WINDOW=HAS_WINDOW, MASK_KIND=MASK_KIND, EVEN_M=EVEN_M, EVEN_N=EVEN_N, SPLITS=SPLITS,
                          COMBINE=COMBINE)
    else:
        pid0 = tl.program_id(0)
        bh = tl.program_id(1)
        pid_m = pid0 // SPLITS
        if IS_CAUSAL and HEAVY_FIRST:
            pid_m = tl.cdiv(ROWS, BLOCK_M) - 1 - pid_m
        _program_tile(Q, K, V, O, LSE, MASK, strides, final, pid_m, pid0 % SPLITS, bh, H_T, ROWS, H_Q, GROUP, N_Q,
                      N_KV, sm_scale, window, HEAD_DIM=HEAD_DIM, V_HEAD_DIM=V_HEAD_DIM, BLOCK_D=BLOCK_D,
                      BLOCK_DV=BLOCK_DV, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, IS_CAUSAL=IS_CAUSAL, HAS_WINDOW=HAS_WINDOW,
                      MASK_KIND=MASK_KIND, EVEN_M=EVEN_M, EVEN_N=EVEN_N, SPLITS=SPLITS, COMBINE=COMBINE)


@triton.jit
def _program_tile(Q, K, V, O, LSE, MASK, strides, final, pid_m, split, bh, H_T, ROWS, H_Q, GROUP, N_Q, N_KV,
                  sm_scale, window, HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
                  HAS_WINDOW: tl.constexpr, MASK_KIND: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
                  SPLITS: tl.constexpr, COMBINE: tl.constexpr):
    """Split ``split`` of row tile ``pid_m`` of grid head ``bh`` (batch * H_T + head), then with COMBINE its
    ticket (the tile's counter: bh * cdiv(ROWS, BLOCK_M) + pid_m)."""
    _fwd_tile(Q, K, V, O, LSE, MASK, strides, pid_m, split, bh // H_T, bh % H_T, H_Q, GROUP, N_Q, N_KV, sm_scale,
              window, HEAD_DIM=HEAD_DIM, V_HEAD_DIM=V_HEAD_DIM, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, BLOCK_M=BLOCK_M,
              BLOCK_N=BLOCK_N, IS_CAUSAL=IS_CAUSAL, HAS_WINDOW=HAS_WINDOW, MASK_KIND=MASK_KIND, EVEN_M=EVEN_M,
              EVEN_N=EVEN_N, SPLITS=SPLITS)
    if COMBINE:
        _combine_when_last(O, LSE, final, bh * tl.cdiv(ROWS, BLOCK_M) + pid_m, pid_m, bh // H_T, bh % H_T, H_Q,
                           GROUP, N_Q, V_HEAD_DIM=V_HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_DV=BLOCK_DV, SPLITS=SPLITS)


@triton.jit
def attn_fwd(Q, K, V, O, LSE, MASK,
             stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
             stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
             stride_mb, stride_mh, stride_mm, stride_mn,
             BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale, window,
             HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
             MASK_KIND: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, SPLITS: tl.constexpr):
    strides = (stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
               stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
               stride_mb, stride_mh, stride_mm, stride_mn)
    _fwd_programs(Q, K, V, O, LSE, MASK, strides, BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale, window, None,
                  HEAD_DIM=HEAD_DIM, V_HEAD_DIM=V_HEAD_DIM, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, BLOCK_M=BLOCK_M,
                  BLOCK_N=BLOCK_N, IS_CAUSAL=IS_CAUSAL, HAS_WINDOW=HAS_WINDOW, MASK_KIND=MASK_KIND, EVEN_M=EVEN_M,
                  EVEN_N=EVEN_N, SPLITS=SPLITS, COMBINE=False)


@triton.jit
def attn_fwd_split_combine(Q, K, V, O, LSE, MASK,
                           stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                           stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
                           stride_mb, stride_mh, stride_mm, stride_mn,
                           BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale, window,
                           OF, LSEF, TICKETS, stride_fb, stride_fh, stride_fm, stride_fd,
                           HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK_KIND: tl.constexpr,
                           EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, SPLITS: tl.constexpr):
    """The split-K forward in one launch: attn_fwd's programs (O, LSE: the split partial buffers), then per query
    tile the last split program to finish combines its partials into OF (the output) and LSEF."""
    tl.static_assert(SPLITS > 1)
    strides = (stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
               stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
               stride_mb, stride_mh, stride_mm, stride_mn)
    final = (OF, LSEF, TICKETS, stride_fb, stride_fh, stride_fm, stride_fd)
    _fwd_programs(Q, K, V, O, LSE, MASK, strides, BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale, window, final,
                  HEAD_DIM=HEAD_DIM, V_HEAD_DIM=V_HEAD_DIM, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV, BLOCK_M=BLOCK_M,
                  BLOCK_N=BLOCK_N, IS_CAUSAL=IS_CAUSAL, HAS_WINDOW=HAS_WINDOW, MASK_KIND=MASK_KIND, EVEN_M=EVEN_M,
                  EVEN_N=EVEN_N, SPLITS=SPLITS, COMBINE=True)


@triton.jit
def _combine_when_last(OP, LSEP, final, tile, pid_m, off_b, off_h, H_Q, GROUP, N_Q, V_HEAD_DIM: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, SPLITS: tl.constexpr):
    """Take this tile's ticket after its partial is stored; the program drawing the last one (every other split of
    the tile has stored and released its partial) combines the SPLITS partials of the tile's rows into the output.
    The barrier makes every warp's partial stores precede the ticket, whose release (one thread, GPU scope) then
    covers them, as CUDA's grid sync does; the winner's acquire orders its reads after every other release."""
    OF, LSEF, TICKETS, stride_fb, stride_fh, stride_fm, stride_fd = final
    tl.debug_barrier()
    ticket = tl.atomic_add(TICKETS + tile, 1, sem="acq_rel", scope="gpu")
    if ticket == SPLITS - 1:
        offs_m, head_m = _tile_rows(pid_m, off_h, GROUP, BLOCK_M)
        row_ok = offs_m < N_Q
        _combine_rows(OP, LSEP, OF, LSEF, off_b * H_Q + head_m, offs_m, row_ok, stride_fb, stride_fh, stride_fm,
                      stride_fd, H_Q, N_Q, V_HEAD_DIM=V_HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_DV=BLOCK_DV, SPLITS=SPLITS)


@triton.jit
def _tile_rows(pid_m, off_h, GROUP, BLOCK_M: tl.constexpr):
    """(query position, q head) of each row of tile ``pid_m`` of head ``off_h`` (the kv head when PACK_GQA)."""
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if PACK_GQA:
        return offs_r // GROUP, off_h * GROUP + offs_r % GROUP
    return offs_r, off_h + offs_r * 0


@triton.jit
def _combine_rows(OP, LSEP, O, LSE, bh, offs_m, row_ok, stride_ob, stride_oh, stride_om, stride_od, H_Q, N_Q,
                  V_HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, SPLITS: tl.constexpr):
    """Combine SPLITS partial (normalised output, lse) pairs of rows (bh = batch * H_Q + q head, position):
    o = sum_s w_s o_s / sum_s w_s, w_s = exp(lse_s - max). Partials are contiguous fp32 (B, H_Q * SPLITS, N_Q,
    V_HEAD_DIM), read past L1 (.cg): other programs wrote them during this launch."""
    offs_dv = tl.arange(0, BLOCK_DV)
    bh = bh.to(tl.int64)
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        m = tl.maximum(m, tl.load(LSEP + (bh * SPLITS + s) * N_Q + offs_m, mask=row_ok, other=float("-inf"),
                                  cache_modifier=".cg"))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    den = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        w = tl.exp(tl.load(LSEP + (bh * SPLITS + s) * N_Q + offs_m, mask=row_ok, other=float("-inf"),
                           cache_modifier=".cg") - m_safe)
        part = tl.load(OP + ((bh * SPLITS + s) * N_Q + offs_m)[:, None] * V_HEAD_DIM + offs_dv[None, :],
                       mask=row_ok[:, None] & (offs_dv[None, :] < V_HEAD_DIM), other=0.0, cache_modifier=".cg")
        den += w
        acc += w[:, None] * part
    empty = den == 0.0
    acc = acc / tl.where(empty, 1.0, den)[:, None]
    lse = tl.where(empty, float("inf"), m_safe + tl.log(den))
    off_b = bh // H_Q
    off_h = bh % H_Q
    o_ptrs = O + (off_b * stride_ob + off_h * stride_oh + offs_m * stride_om)[:, None] + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < V_HEAD_DIM))
    tl.store(LSE + bh * N_Q + offs_m, lse, mask=row_ok)
# EVOLVE-BLOCK-END


@triton.jit
def attn_fwd_reduce(OP, LSEP, O, LSE, stride_ob, stride_oh, stride_om, stride_od, BATCH, H_Q, N_Q,
                    V_HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, SPLITS: tl.constexpr):
    """Combine SPLITS partial (normalised output, lse) pairs (_combine_rows), the second kernel of a split-K call.

    Unpacked: grid (cdiv(N_Q, BLOCK_M), BATCH * H_Q), one (batch, q head) per program. PACK_GQA: grid
    (cdiv(BATCH * H_Q * N_Q, BLOCK_M), 1), the rows of every (batch, q head, position) packed densely, so decode's
    one query per head fills the tile instead of one lane of it."""
    if PACK_GQA:
        offs_t = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_t < BATCH * H_Q * N_Q
        bh = offs_t // N_Q  # (BM,) batch * H_Q + q head of each row
        offs_m = offs_t % N_Q
    else:
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_Q
        bh = tl.program_id(1).to(tl.int64) + offs_m * 0
    _combine_rows(OP, LSEP, O, LSE, bh, offs_m, row_ok, stride_ob, stride_oh, stride_om, stride_od, H_Q, N_Q,
                  V_HEAD_DIM=V_HEAD_DIM, BLOCK_M=BLOCK_M, BLOCK_DV=BLOCK_DV, SPLITS=SPLITS)
