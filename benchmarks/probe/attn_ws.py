"""Prototype: FA3-style warp-specialized Hopper forward in Gluon."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    tma, mbarrier, fence_async_shared, warpgroup_mma, warpgroup_mma_wait)


@gluon.jit
def _kv_span(m0, N_Q, N_KV, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """(blocks, full): key blocks this query tile visits, and how many of them need no mask."""
    if IS_CAUSAL:
        off = N_KV - N_Q
        hi = gl.minimum(gl.maximum(m0 + BLOCK_M + off, 0), N_KV)
        full = gl.minimum(gl.maximum(m0 + off + 1, 0), N_KV) // BLOCK_N
    else:
        hi = N_KV
        full = N_KV // BLOCK_N
    blocks = gl.cdiv(hi, BLOCK_N)
    return blocks, gl.minimum(full, blocks)


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty,
            b, hq, hkv, m0, blocks, STAGES: gl.constexpr, BLOCK_N: gl.constexpr, NUM_WG: gl.constexpr,
            WG_M: gl.constexpr):
    """One warp: each consumer's Q slice once, then K and V tiles into a STAGES-deep ring (K and V on separate
    barriers, so QK^T can start before V lands)."""
    for w in gl.static_range(NUM_WG):
        mbarrier.expect(q_bar.index(w), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [b, hq, m0 + w * WG_M, 0], q_bar.index(w),
                                       q_smem.index(w)._reinterpret(q_desc.dtype, q_desc.block_type.shape,
                                                                    q_desc.layout))
    for j in range(blocks):
        stage = j % STAGES
        phase = (j // STAGES) & 1
        mbarrier.wait(k_empty.index(stage), phase ^ 1)
        mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b, hkv, j * BLOCK_N, 0], k_ready.index(stage),
                                       k_smem.index(stage)._reinterpret(k_desc.dtype, k_desc.block_type.shape, k_desc.layout))
        mbarrier.wait(v_empty.index(stage), phase ^ 1)
        mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [b, hkv, j * BLOCK_N, 0], v_ready.index(stage),
                                       v_smem.index(stage)._reinterpret(v_desc.dtype, v_desc.block_type.shape, v_desc.layout))


@gluon.jit
def _masked_scores(s, j, m0, full, N_Q, N_KV, s_layout: gl.constexpr, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    if j >= full:
        cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        keep = gl.expand_dims(cols < N_KV, 0)
        if IS_CAUSAL:
            rows = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
            keep = keep & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows + (N_KV - N_Q), 1))
        s = gl.where(keep, s, -float("inf"))
    return s


@gluon.jit
def _consumer(q_all, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty, turn, o_ptr, lse_ptr,
              stride_ob, stride_oh, stride_om, b, hq, tile_m0, blocks, full, N_Q, N_KV, qk_scale,
              WG: gl.constexpr, NUM_WG: gl.constexpr, PINGPONG: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, STAGES: gl.constexpr,
              IS_CAUSAL: gl.constexpr, num_warps: gl.constexpr):
    """One math warpgroup (rows WG * BLOCK_M .. of the tile): QK^T of block j is in flight on the tensor cores
    while block j-1's P V and the softmax of block j run; with PINGPONG the warpgroups take turns issuing their
    matmuls, so one's softmax overlaps the other's matmuls (FlashAttention-3's scheduler barrier)."""
    q_smem = q_all.index(WG)
    q_bar = q_bars.index(WG)
    m0 = tile_m0 + WG * BLOCK_M
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, o_layout)
    m_i = gl.full([BLOCK_M], -float("inf"), gl.float32, row_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_layout)
    mbarrier.wait(q_bar, 0)
    if blocks > 0:
        mbarrier.wait(k_ready.index(0), 0)
        if PINGPONG:
            if WG > 0:
                mbarrier.wait(turn.index(WG), 0)
        s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        if PINGPONG:
            mbarrier.arrive(turn.index((WG + 1) % NUM_WG), count=1)
        s = warpgroup_mma_wait(0, deps=[s_tok])
        mbarrier.arrive(k_empty.index(0), count=1)
        s = _masked_scores(s, 0, m0, full, N_Q, N_KV, s_layout, BLOCK_M, BLOCK_N, IS_CAUSAL)
        m_i = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
        m_safe = gl.where(m_i == -float("inf"), 0.0, m_i)
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_safe, 1))
        l_i = gl.sum(p, axis=1)
        for j in range(1, blocks):
            stage = j % STAGES
            mbarrier.wait(k_ready.index(stage), (j // STAGES) & 1)
            if PINGPONG:
                # my turn j comes after warpgroup WG - 1's turn j (WG > 0) or the last warpgroup's turn j - 1
                mbarrier.wait(turn.index(WG), (j - 1 + (WG > 0)) & 1)
            s_tok = warpgroup_mma(q_smem, k_smem.index(stage).permute((1, 0)), zero_s, use_acc=False,
                                  is_async=True)
            prev = (j - 1) % STAGES
            mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            acc_tok = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
            if PINGPONG:
                mbarrier.arrive(turn.index((WG + 1) % NUM_WG), count=1)
            s = warpgroup_mma_wait(1, deps=[s_tok])
            mbarrier.arrive(k_empty.index(stage), count=1)
            s = _masked_scores(s, j, m0, full, N_Q, N_KV, s_layout, BLOCK_M, BLOCK_N, IS_CAUSAL)
            m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
            m_safe = gl.where(m_new == -float("inf"), 0.0, m_new)
            alpha = gl.exp2(m_i - m_safe)
            p = gl.exp2(s * qk_scale - gl.expand_dims(m_safe, 1))
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
            mbarrier.arrive(v_empty.index(prev), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        last = (blocks - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((blocks - 1) // STAGES) & 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        acc_tok = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
        mbarrier.arrive(v_empty.index(last), count=1)
    # Epilogue: rows with no allowed key write 0 and LSE +inf (the launcher's contract).
    empty = l_i == 0.0
    inv = gl.where(empty, 0.0, 1.0 / gl.where(empty, 1.0, l_i))
    out = acc * gl.expand_dims(gl.convert_layout(inv, gl.SliceLayout(1, o_layout)), 1)
    store_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    out = gl.convert_layout(out.to(dtype), store_layout)
    rows = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, store_layout))
    cols = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, store_layout))
    o_offs = b * stride_ob + hq * stride_oh + gl.expand_dims(rows, 1) * stride_om + gl.expand_dims(cols, 0)
    gl.store(o_ptr + o_offs, out, mask=gl.expand_dims(rows < N_Q, 1))
    lse = gl.where(empty, float("inf"), (m_i + gl.log2(gl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    lse_rows = m0 + gl.arange(0, BLOCK_M, layout=row_layout)
    gl.store(lse_ptr + lse_rows, lse, mask=lse_rows < N_Q)


@gluon.jit
def attn_fwd_ws(q_desc, k_desc, v_desc, o_ptr, lse_ptr, stride_ob, stride_oh, stride_om,
                H_Q, GROUP, N_Q, N_KV, qk_scale,
                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, STAGES: gl.constexpr,
                IS_CAUSAL: gl.constexpr, HEAVY_FIRST: gl.constexpr, NUM_WG: gl.constexpr,
                PINGPONG: gl.constexpr, CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """Grid (cdiv(N_Q, NUM_WG * BLOCK_M), B * H_Q): each program's NUM_WG math warpgroups (num_warps each) take
    BLOCK_M query rows apiece and share one K/V ring filled by a one-warp TMA loader."""
    pid_m = gl.program_id(0)
    if HEAVY_FIRST:
        pid_m = gl.num_programs(0) - 1 - pid_m
    bh = gl.program_id(1)
    b = bh // H_Q
    hq = bh % H_Q
    hkv = hq // GROUP
    m0 = pid_m * (NUM_WG * BLOCK_M)
    blocks, full = _kv_span(m0, N_Q, N_KV, NUM_WG * BLOCK_M, BLOCK_N, IS_CAUSAL)
    dtype: gl.constexpr = q_desc.dtype
    q2: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD_D], dtype)
    kv2: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_D], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [NUM_WG, BLOCK_M, HEAD_D], q2)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], kv2)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_D], kv2)
    q_bars = gl.allocate_shared_memory(gl.int64, [NUM_WG, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [NUM_WG, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_WG):
        mbarrier.init(q_bars.index(i), count=1)
    for i in gl.static_range(NUM_WG):
        mbarrier.init(turn.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=NUM_WG)
        mbarrier.init(v_empty.index(i), count=NUM_WG)
    fence_async_shared()
    lse_row = lse_ptr + bh * N_Q
    PP: gl.constexpr = PINGPONG and NUM_WG > 1
    if NUM_WG == 2:
        gl.warp_specialize([
            (_consumer, (q_smem, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty, turn, o_ptr, lse_row,
                         stride_ob, stride_oh, stride_om, b, hq, m0, blocks, full, N_Q, N_KV, qk_scale,
                         0, NUM_WG, PP, BLOCK_M, BLOCK_N, HEAD_D, STAGES, IS_CAUSAL, num_warps)),
            (_consumer, (q_smem, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty, turn, o_ptr, lse_row,
                         stride_ob, stride_oh, stride_om, b, hq, m0, blocks, full, N_Q, N_KV, qk_scale,
                         1, NUM_WG, PP, BLOCK_M, BLOCK_N, HEAD_D, STAGES, IS_CAUSAL, num_warps)),
            (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty,
                       b, hq, hkv, m0, blocks, STAGES, BLOCK_N, NUM_WG, BLOCK_M)),
        ], [num_warps, 1], [CONSUMER_REGS, 24])
    else:
        gl.warp_specialize([
            (_consumer, (q_smem, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty, turn, o_ptr, lse_row,
                         stride_ob, stride_oh, stride_om, b, hq, m0, blocks, full, N_Q, N_KV, qk_scale,
                         0, NUM_WG, PP, BLOCK_M, BLOCK_N, HEAD_D, STAGES, IS_CAUSAL, num_warps)),
            (_loader, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_ready, v_ready, k_empty, v_empty,
                       b, hq, hkv, m0, blocks, STAGES, BLOCK_N, NUM_WG, BLOCK_M)),
        ], [1], [24])
