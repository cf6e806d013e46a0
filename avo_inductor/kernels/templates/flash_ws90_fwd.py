"""flash_ws90 forward: FlashAttention-3's structure for Hopper (sm_90), written in Gluon.

Each program owns 2 * BLOCK_M query rows of one (batch, q head) and runs three warp-specialized partitions:
  * a one-warp loader: TMA copies of each math warpgroup's Q slice, then K and V tiles into a STAGES-deep ring;
    K and V have separate ready/empty barriers, so a K tile is refilled as soon as both warpgroups' QK^T on it
    are done (an H100 A/B: d128 causal went from 0.92x to 1.02x cuDNN when K stopped waiting for P V);
  * two math warpgroups of BLOCK_M rows each (FlashAttention-3's ping-pong): they take turns issuing their
    matmuls (a turn barrier per warpgroup), so one warpgroup's softmax runs while the other's matmuls occupy the
    tensor cores; within a warpgroup, QK^T of block j is issued asynchronously before P V of block j - 1 and the
    softmax of block j waits only for the former (intra-warpgroup overlap).
Softmax in base 2 with log2(e) folded into qk_scale. Masks: none or causal (bottom-right aligned), key blocks
past the diagonal or the key length are masked only where a block reaches them; MASK_KIND 1 adds a bias tile
(BIAS_TMA: the loader streams each warpgroup's bias tiles through TMA into a BIAS_STAGES-deep ring of its own,
read from shared memory into QK^T's initial accumulator; otherwise pointer loads in the scores' layout, issued
while QK^T runs), 3 ALiBi (the slope of the q head). GQA: q head h reads kv head h // GROUP. Rows with no allowed
key write 0 and LSE +inf; LSE is natural-log, contiguous (B, H_Q, N_Q). HEAVY_FIRST (causal: each head's last
query tiles start first) and PERSISTENT (one program per SM walking tiles, its loader streaming the next tile's Q,
K and V while the math warpgroups finish the current one) are the genome constants of the flash_v1 module this
text is appended to.

Launcher ABI (launch grid "ws90", see launch.py): host TensorDescriptors over the 4-d (B, H, N, D) q/k/v with
blocks [1, 1, BLOCK_M, D] (Q) and [1, 1, BLOCK_N, D] (K, V), with BIAS_TMA one over the bias with block
[1, 1, BLOCK_M, BLOCK_N] (a broadcast batch or head dimension has size 1 there: BIAS_BCAST_B / BIAS_BCAST_H read
coordinate 0), the mask operand and its 4 strides as the flash_v1 ABI passes them; a 1-d grid of one program per
tile (cdiv(N_Q, 2 * BLOCK_M) * B * H_Q tiles), or with PERSISTENT at most one per SM.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait

WS_WARPGROUPS = gl.constexpr(2)  # math warpgroups per program (the ping-pong pair)
WS_MATH_REGS = gl.constexpr(240)  # registers per math thread after setmaxnreg (FlashAttention-3's split)
WS_LOADER_REGS = gl.constexpr(24)


@gluon.jit
def _ws_kv_span(m0, N_Q, N_KV, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """(blocks, full): key blocks the tile starting at query row m0 visits, and how many need no mask."""
    if IS_CAUSAL:
        off = N_KV - N_Q
        hi = gl.minimum(gl.maximum(m0 + ROWS + off, 0), N_KV)
        full = gl.minimum(gl.maximum(m0 + off + 1, 0), N_KV) // BLOCK_N
    else:
        hi = N_KV
        full = N_KV // BLOCK_N
    blocks = gl.cdiv(hi, BLOCK_N)
    return blocks, gl.minimum(full, blocks)


@gluon.jit
def _ws_tile(t, n_m, H_Q, ROWS: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """Tile t -> (batch, q head, first query row, batch * H_Q + head). Query tiles vary fastest, so programs running
    at the same time share one head's K/V in L2; causal with HEAVY_FIRST walks each head's tiles from the last
    (the one with most key blocks) down."""
    m_idx = t % n_m
    if HEAVY_FIRST and IS_CAUSAL:  # the genome's heavy_first, from the flash_v1 module this is appended to
        m_idx = n_m - 1 - m_idx
    bh = t // n_m
    return bh // H_Q, bh % H_Q, m_idx * ROWS, bh


@gluon.jit
def _ws_loader(q_desc, k_desc, v_desc, b_desc, q_smem, k_smem, v_smem, b_smem, q_bars, q_empty, k_ready, v_ready,
               k_empty, v_empty, b_ready, b_empty, first, step, n_tiles, n_m, H_Q, GROUP, N_Q, N_KV,
               STAGES: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr,
               BIAS_TMA: gl.constexpr, BIAS_STAGES: gl.constexpr, BIAS_BCAST_B: gl.constexpr,
               BIAS_BCAST_H: gl.constexpr):
    """Each tile's Q slices (once its warpgroup released the previous tile's), then its K blocks, each
    warpgroup's bias tile (BIAS_TMA) and V blocks into the rings; the rings' slots and phases run on across tiles, so
    a persistent program streams the next tile's first blocks while the math warpgroups finish the last one."""
    it = 0
    tile_i = 0
    for t in range(first, n_tiles, step):
        b, hq, m0, bh = _ws_tile(t, n_m, H_Q, WS_WARPGROUPS * BLOCK_M, IS_CAUSAL)
        hkv = hq // GROUP
        blocks, full = _ws_kv_span(m0, N_Q, N_KV, WS_WARPGROUPS * BLOCK_M, BLOCK_N, IS_CAUSAL)
        for w in gl.static_range(WS_WARPGROUPS):
            # A fresh barrier counts as having completed the phase before phase 0: the first lap does not wait.
            mbarrier.wait(q_empty.index(w), (tile_i & 1) ^ 1)
            mbarrier.expect(q_bars.index(w), q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(q_desc, [b, hq, m0 + w * BLOCK_M, 0], q_bars.index(w),
                                           q_smem.index(w).reshape(q_desc.block_type.shape))
        for j in range(blocks):
            c = it + j
            stage = c % STAGES
            phase = (c // STAGES) & 1
            mbarrier.wait(k_empty.index(stage), phase ^ 1)
            mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [b, hkv, j * BLOCK_N, 0], k_ready.index(stage),
                                           k_smem.index(stage).reshape(k_desc.block_type.shape))
            if BIAS_TMA:
                _ws_load_bias(b_desc, b_smem, b_ready, b_empty, c, b, hq, m0, j, BLOCK_M, BLOCK_N, BIAS_STAGES,
                              BIAS_BCAST_B, BIAS_BCAST_H)
            mbarrier.wait(v_empty.index(stage), phase ^ 1)
            mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [b, hkv, j * BLOCK_N, 0], v_ready.index(stage),
                                           v_smem.index(stage).reshape(v_desc.block_type.shape))
        it += blocks
        tile_i += 1


@gluon.jit
def _ws_masked(s, j, m0, full, N_Q, N_KV, s_layout: gl.constexpr, BLOCK_M: gl.constexpr,
               BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """Scores of key block j with -inf past the key length and (causal) right of the diagonal; blocks before
    ``full`` pass through untouched."""
    if j >= full:
        cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        keep = gl.expand_dims(cols < N_KV, 0)
        if IS_CAUSAL:
            rows = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
            keep = keep & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows + (N_KV - N_Q), 1))
        s = gl.where(keep, s, -float("inf"))
    return s


@gluon.jit
def _ws_bias_tile(mask_head, j, m0, N_Q, N_KV, stride_mm, stride_mn, s_layout: gl.constexpr,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """Key block j of an additive bias, read in the scores' own register layout (0 outside the lengths; the
    boundary mask sets those scores to -inf). Issued while the block's QK^T runs on the tensor cores."""
    rows = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
    cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    ptrs = mask_head + gl.expand_dims(rows, 1) * stride_mm + gl.expand_dims(cols, 0) * stride_mn
    keep = gl.expand_dims(rows < N_Q, 1) & gl.expand_dims(cols < N_KV, 0)
    return gl.load(ptrs, mask=keep, other=0.0)


@gluon.jit
def _ws_load_bias(b_desc, b_smem, b_ready, b_empty, c, b, hq, m0, j, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                  BIAS_STAGES: gl.constexpr, BIAS_BCAST_B: gl.constexpr, BIAS_BCAST_H: gl.constexpr):
    """Key block j's bias tile of each math warpgroup into that warpgroup's ring (slot w * BIAS_STAGES
    + c % BIAS_STAGES, c the program's running block count); rows past N_Q and keys past N_KV read as zero (the
    boundary mask sets those scores to -inf)."""
    bb = 0 if BIAS_BCAST_B else b
    bh = 0 if BIAS_BCAST_H else hq
    for w in gl.static_range(WS_WARPGROUPS):
        slot = w * BIAS_STAGES + c % BIAS_STAGES
        mbarrier.wait(b_empty.index(slot), ((c // BIAS_STAGES) & 1) ^ 1)
        mbarrier.expect(b_ready.index(slot), b_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(b_desc, [bb, bh, m0 + w * BLOCK_M, j * BLOCK_N], b_ready.index(slot),
                                       b_smem.index(slot).reshape(b_desc.block_type.shape))


@gluon.jit
def _ws_bias_acc(b_smem, b_ready, b_empty, c, bias_to_raw, raw_floor, s_layout: gl.constexpr, WG: gl.constexpr,
                 BIAS_STAGES: gl.constexpr):
    """QK^T's initial accumulator for ring position c: this warpgroup's bias tile, read from its TMA ring into the
    scores' layout (the slot released as soon as the registers hold it) in raw-score units."""
    slot = WG * BIAS_STAGES + c % BIAS_STAGES
    mbarrier.wait(b_ready.index(slot), (c // BIAS_STAGES) & 1)
    bias = b_smem.index(slot).load(s_layout)
    # The slot's next TMA write (async proxy) must not overtake these generic-proxy reads.
    fence_async_shared()
    mbarrier.arrive(b_empty.index(slot), count=1)
    b = bias.to(gl.float32)
    raw = b * bias_to_raw
    # A finite bias stays finite after the scale (raw_floor = -FLT_MAX / max(qk_scale, 1), so raw * qk_scale is
    # too); -inf and NaN pass. As flash_v1's BIAS_FLOOR: a row of finfo.min biases gives mean(v), as eager does.
    return gl.where((raw < raw_floor) & (b > -float("inf")), raw_floor, raw)


@gluon.jit
def _ws_probs(s, bias, j, m_i, m0, full, N_Q, N_KV, qk_scale, alibi_slope, s_layout: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr, MASK_KIND: gl.constexpr):
    """(p, m_new, m_safe) of key block j in base 2 against the running row max m_i. Without a mask the scale
    stays fused into exp2's argument (one FMA per score); a bias or ALiBi term is added to the scaled scores
    first (the max must see it). ALiBi: -slope * |i + (N_KV - N_Q) - j|, from fp32 index vectors."""
    if MASK_KIND == 0:
        s = _ws_masked(s, j, m0, full, N_Q, N_KV, s_layout, BLOCK_M, BLOCK_N, IS_CAUSAL)
        m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
        m_safe = gl.where(m_new == -float("inf"), 0.0, m_new)
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_safe, 1))
    else:
        s = s * qk_scale
        if MASK_KIND == 1:
            # finite biases stay finite, -inf stays -inf (flash_v1's BIAS_FLOOR: finfo.min rows give mean(v))
            b = bias.to(gl.float32)
            b2 = b * 1.4426950408889634
            s = s + gl.where((b2 < -3.4028234663852886e38) & (b > -float("inf")), -3.4028234663852886e38, b2)
        else:
            rows = (m0 + (N_KV - N_Q) + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))).to(gl.float32)
            cols = (j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))).to(gl.float32)
            s = s - alibi_slope * gl.abs(gl.expand_dims(cols, 0) - gl.expand_dims(rows, 1))
        s = _ws_masked(s, j, m0, full, N_Q, N_KV, s_layout, BLOCK_M, BLOCK_N, IS_CAUSAL)
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        m_safe = gl.where(m_new == -float("inf"), 0.0, m_new)
        p = gl.exp2(s - gl.expand_dims(m_safe, 1))
    return p, m_new, m_safe


@gluon.jit
def _ws_turn(turn, issue, WG: gl.constexpr):
    """Wait for this warpgroup's turn to issue matmuls: its issue k follows issue k of the warpgroup before it
    (WG > 0) or issue k - 1 of the last one (WG 0; its very first issue goes first)."""
    if WG > 0:
        mbarrier.wait(turn.index(WG), issue & 1)
    else:
        mbarrier.wait(turn.index(WG), (issue - 1) & 1, pred=issue > 0)


@gluon.jit
def _ws_math(q_smem_all, k_smem, v_smem, b_smem, q_bars, q_empty, k_ready, v_ready, k_empty, v_empty, b_ready, b_empty,
             turn, O, LSE, MASK,
             stride_ob, stride_oh, stride_om, stride_mb, stride_mh, stride_mm, stride_mn,
             first, step, n_tiles, n_m, H_Q, N_Q, N_KV, qk_scale,
             WG: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr,
             STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, MASK_KIND: gl.constexpr, BIAS_TMA: gl.constexpr,
             BIAS_STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Math warpgroup WG: rows WG * BLOCK_M .. + BLOCK_M of each of the program's tiles."""
    q_smem = q_smem_all.index(WG)
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    if BIAS_TMA and BIAS_STAGES > 1:
        # Stored straight from the accumulator's layout: a coalescing layout conversion would take 16 KB of shared
        # memory, the room of the bias ring's second stage at d128.
        store_layout: gl.constexpr = o_layout
    else:
        store_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    # BIAS_TMA: the bias tile, in raw-score units (bias / sm_scale), is QK^T's initial accumulator, so the softmax
    # is the unmasked one (one FMA a score for scale and max); it is read just before the block's QK^T is issued
    # (read earlier, while P V runs, it measured 7% slower: 64 more live registers). Pointer-loaded biases are
    # added in _ws_probs.
    PROBS_KIND: gl.constexpr = 0 if BIAS_TMA else MASK_KIND
    bias_to_raw = 1.4426950408889634 / qk_scale
    raw_floor = -3.4028234663852886e38 / gl.maximum(qk_scale, 1.0)
    it = 0  # K/V ring position, as the loader counts it
    issue = 0  # this warpgroup's matmul issues so far (the turn barriers' phase)
    tile_i = 0
    for t in range(first, n_tiles, step):
        b, hq, tile_m0, bh = _ws_tile(t, n_m, H_Q, WS_WARPGROUPS * BLOCK_M, IS_CAUSAL)
        blocks, full = _ws_kv_span(tile_m0, N_Q, N_KV, WS_WARPGROUPS * BLOCK_M, BLOCK_N, IS_CAUSAL)
        m0 = tile_m0 + WG * BLOCK_M
        mask_head = MASK + b * stride_mb + hq * stride_mh
        alibi_slope = 0.0
        if MASK_KIND == 3:
            alibi_slope = gl.load(mask_head).to(gl.float32) * 1.4426950408889634
        acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, o_layout)
        m_i = gl.full([BLOCK_M], -float("inf"), gl.float32, row_layout)
        l_i = gl.zeros([BLOCK_M], gl.float32, row_layout)
        mbarrier.wait(q_bars.index(WG), tile_i & 1)
        if blocks > 0:
            stage = it % STAGES
            mbarrier.wait(k_ready.index(stage), (it // STAGES) & 1)
            s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
            if BIAS_TMA:
                s = _ws_bias_acc(b_smem, b_ready, b_empty, it, bias_to_raw, raw_floor, s_layout, WG, BIAS_STAGES)
            _ws_turn(turn, issue, WG)
            s_tok = warpgroup_mma(q_smem, k_smem.index(stage).permute((1, 0)), s, use_acc=BIAS_TMA, is_async=True)
            mbarrier.arrive(turn.index((WG + 1) % WS_WARPGROUPS), count=1)
            issue += 1
            bias = s
            if PROBS_KIND == 1:
                bias = _ws_bias_tile(mask_head, 0, m0, N_Q, N_KV, stride_mm, stride_mn, s_layout, BLOCK_M, BLOCK_N)
            s = warpgroup_mma_wait(0, deps=[s_tok])
            mbarrier.arrive(k_empty.index(stage), count=1)
            p, m_i, m_safe = _ws_probs(s, bias, 0, m_i, m0, full, N_Q, N_KV, qk_scale, alibi_slope, s_layout,
                                       BLOCK_M, BLOCK_N, IS_CAUSAL, PROBS_KIND)
            l_i = gl.sum(p, axis=1)
            for j in range(1, blocks):
                c = it + j
                stage = c % STAGES
                prev = (c - 1) % STAGES
                mbarrier.wait(k_ready.index(stage), (c // STAGES) & 1)
                if BIAS_TMA:
                    s = _ws_bias_acc(b_smem, b_ready, b_empty, c, bias_to_raw, raw_floor, s_layout, WG, BIAS_STAGES)
                _ws_turn(turn, issue, WG)
                # use_acc=False ignores the accumulator's values: the previous block's (dead) scores serve, so no
                # zero tile stays live across the loop (64 registers a thread at 64x128)
                s_tok = warpgroup_mma(q_smem, k_smem.index(stage).permute((1, 0)), s, use_acc=BIAS_TMA,
                                      is_async=True)
                mbarrier.wait(v_ready.index(prev), ((c - 1) // STAGES) & 1)
                p_op = gl.convert_layout(p.to(dtype), p_layout)
                acc_tok = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
                mbarrier.arrive(turn.index((WG + 1) % WS_WARPGROUPS), count=1)
                issue += 1
                if PROBS_KIND == 1:
                    bias = _ws_bias_tile(mask_head, j, m0, N_Q, N_KV, stride_mm, stride_mn, s_layout, BLOCK_M,
                                         BLOCK_N)
                s = warpgroup_mma_wait(1, deps=[s_tok])  # QK^T done; P V may still run
                mbarrier.arrive(k_empty.index(stage), count=1)
                p, m_new, m_safe = _ws_probs(s, bias, j, m_i, m0, full, N_Q, N_KV, qk_scale, alibi_slope,
                                             s_layout, BLOCK_M, BLOCK_N, IS_CAUSAL, PROBS_KIND)
                alpha = gl.exp2(m_i - m_safe)
                l_i = l_i * alpha + gl.sum(p, axis=1)
                m_i = m_new
                acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
                mbarrier.arrive(v_empty.index(prev), count=1)
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
            c = it + blocks - 1
            last = c % STAGES
            mbarrier.wait(v_ready.index(last), (c // STAGES) & 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            acc_tok = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
            acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
            mbarrier.arrive(v_empty.index(last), count=1)
            it += blocks
        mbarrier.arrive(q_empty.index(WG), count=1)  # every QK^T of this tile is done: Q's slot may refill
        empty = l_i == 0.0
        inv = gl.where(empty, 0.0, 1.0 / gl.where(empty, 1.0, l_i))
        out = acc * gl.expand_dims(gl.convert_layout(inv, gl.SliceLayout(1, o_layout)), 1)
        out = gl.convert_layout(out.to(dtype), store_layout)
        rows = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, store_layout))
        cols = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, store_layout))
        offs = b * stride_ob + hq * stride_oh + gl.expand_dims(rows, 1) * stride_om + gl.expand_dims(cols, 0)
        gl.store(O + offs, out, mask=gl.expand_dims(rows < N_Q, 1))
        lse = gl.where(empty, float("inf"), (m_i + gl.log2(gl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        lse_rows = m0 + gl.arange(0, BLOCK_M, layout=row_layout)
        gl.store(LSE + bh * N_Q + lse_rows, lse, mask=lse_rows < N_Q)
        tile_i += 1


@gluon.jit
def attn_fwd_ws90(Q_DESC, K_DESC, V_DESC, B_DESC, O, LSE, MASK, stride_ob, stride_oh, stride_om, stride_mb,
                  stride_mh, stride_mm, stride_mn, BATCH, H_Q, GROUP, N_Q, N_KV, qk_scale, BLOCK_M: gl.constexpr,
                  BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
                  MASK_KIND: gl.constexpr, BIAS_TMA: gl.constexpr, BIAS_STAGES: gl.constexpr,
                  BIAS_BCAST_B: gl.constexpr, BIAS_BCAST_H: gl.constexpr, num_warps: gl.constexpr):
    n_m = gl.cdiv(N_Q, WS_WARPGROUPS * BLOCK_M)
    n_tiles = n_m * BATCH * H_Q
    first = gl.program_id(0)
    step = n_tiles  # one tile per program
    if PERSISTENT:  # the genome's persistent: one program per SM walks tiles first, first + grid, ...
        step = gl.num_programs(0)
    dtype: gl.constexpr = Q_DESC.dtype
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD_D], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_D], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [WS_WARPGROUPS, BLOCK_M, HEAD_D], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], kv_layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [WS_WARPGROUPS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [WS_WARPGROUPS, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [WS_WARPGROUPS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(WS_WARPGROUPS):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
        mbarrier.init(turn.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=WS_WARPGROUPS)
        mbarrier.init(v_empty.index(i), count=WS_WARPGROUPS)
    if BIAS_TMA:  # each math warpgroup's own ring of bias tiles (B_DESC's element type)
        b_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N], B_DESC.dtype)
        b_smem = gl.allocate_shared_memory(B_DESC.dtype, [WS_WARPGROUPS * BIAS_STAGES, BLOCK_M, BLOCK_N], b_layout)
        b_ready = gl.allocate_shared_memory(gl.int64, [WS_WARPGROUPS * BIAS_STAGES, 1], mbarrier.MBarrierLayout())
        b_empty = gl.allocate_shared_memory(gl.int64, [WS_WARPGROUPS * BIAS_STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(WS_WARPGROUPS * BIAS_STAGES):
            mbarrier.init(b_ready.index(i), count=1)
            mbarrier.init(b_empty.index(i), count=1)
    else:  # unused: the partitions take the Q buffers in their place
        b_smem = q_smem
        b_ready = q_bars
        b_empty = q_empty
    fence_async_shared()
    gl.warp_specialize([
        (_ws_math, (q_smem, k_smem, v_smem, b_smem, q_bars, q_empty, k_ready, v_ready, k_empty, v_empty, b_ready,
                    b_empty, turn, O, LSE, MASK, stride_ob, stride_oh, stride_om, stride_mb, stride_mh, stride_mm,
                    stride_mn, first, step, n_tiles, n_m, H_Q, N_Q, N_KV, qk_scale, 0, BLOCK_M, BLOCK_N, HEAD_D,
                    STAGES, IS_CAUSAL, MASK_KIND, BIAS_TMA, BIAS_STAGES, num_warps)),
        (_ws_math, (q_smem, k_smem, v_smem, b_smem, q_bars, q_empty, k_ready, v_ready, k_empty, v_empty, b_ready,
                    b_empty, turn, O, LSE, MASK, stride_ob, stride_oh, stride_om, stride_mb, stride_mh, stride_mm,
                    stride_mn, first, step, n_tiles, n_m, H_Q, N_Q, N_KV, qk_scale, 1, BLOCK_M, BLOCK_N, HEAD_D,
                    STAGES, IS_CAUSAL, MASK_KIND, BIAS_TMA, BIAS_STAGES, num_warps)),
        (_ws_loader, (Q_DESC, K_DESC, V_DESC, B_DESC, q_smem, k_smem, v_smem, b_smem, q_bars, q_empty, k_ready,
                      v_ready, k_empty, v_empty, b_ready, b_empty, first, step, n_tiles, n_m, H_Q, GROUP, N_Q, N_KV,
                      STAGES, BLOCK_M, BLOCK_N, IS_CAUSAL, BIAS_TMA, BIAS_STAGES, BIAS_BCAST_B, BIAS_BCAST_H)),
    ], [num_warps, 1], [WS_MATH_REGS, WS_LOADER_REGS])
