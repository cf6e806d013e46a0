"""flash_ws90 backward: one fused, warp-specialized kernel for Hopper (sm_90) in FlashAttention-3's shape, in Gluon.

Each program owns 2 * BLOCK_N keys of one (batch, kv head) and walks every query tile that can see them (each q
head of the GQA group in turn), so S and dP are computed once per block pair: 5 tile matmuls instead of flash_v1's
7. Two partitions, both math warpgroups of BLOCK_N keys each (no loader warp: with one, Triton compiles the whole
kernel for 384 threads, 168 registers a thread, and this loop spills there; at 256 threads the cap is 255).
Warpgroup 0 also issues the TMA copies: the program's K and V once, then each step's Q and dO into a STAGES-deep ring
STAGES - 1 steps ahead (ready/empty barriers per slot; a slot is released when both warpgroups' dK/dV matmuls on
it are done).
Per query tile, each warpgroup: S^T = K Q^T and dP^T = V dO^T (async, S first), P^T = exp2(S^T * scale - LSE),
dS^T = P^T (dP^T - delta); dV += P^T dO and dK += dS^T Q from registers; dS^T goes to shared memory, where both
warpgroups' halves make the tile's whole dS, and warpgroup w computes dQ[:, half w] = dS K[:, half w] over all
2 * BLOCK_N keys and adds it to the fp32 dQ accumulator with one TMA bulk reduce-add (cp.reduce.async.bulk.tensor,
FlashAttention-3's dQ path: no second pass over K/V, no per-element atomics).
The head dim is handled as two column halves of HEAD_D / 2 (64 at d128, 32 at d64) in every shared-memory tile, so
the two warpgroups split dQ's columns without slicing a swizzled tile.
Masks: none or causal (bottom-right aligned); key blocks and query tiles that reach past the diagonal or the lengths
are masked only where they do. GQA: kv head h serves q heads h * GROUP ..; dK/dV sum the group in registers.
LSE (natural log, +inf for rows without keys) and DELTA = rowsum(dO * O) are (B * H_Q, N_Q) fp32, as flash_v1's
forward and preprocess write them; dQ's contributions are added already scaled (the launcher casts the accumulator).

Launcher ABI (launch.py, "ws90 backward"): host TensorDescriptors over the 4-d (B, H, N, D) tensors, blocks
[1, 1, BLOCK_M, HEAD_D // 2] (Q, dO), [1, 1, 2 * BLOCK_N, HEAD_D // 2] (K, V) and [1, 1, BLOCK_M, HEAD_D // 2]
over the (B, H_Q, N_Q, HEAD_D) fp32 dQ accumulator (unswizzled, zero before the launch); dK/dV pointers with
unit last stride; a 1-d grid of cdiv(N_KV, 2 * BLOCK_N) * B * H_KV programs, key blocks fastest (programs running
together share a head's Q and dO in L2; the earliest key blocks, which see the most queries, start first).
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait

BWD_WARPGROUPS = gl.constexpr(2)  # math warpgroups per program, BLOCK_N keys each
BWD_HALVES = gl.constexpr(2)  # column halves of the head dim in every shared-memory tile
BWD_MATH_REGS = gl.constexpr(240)  # the worker partition's setmaxnreg (the launch allows 256 at 256 threads)


@gluon.jit
def _bwd_query_span(n0, N_Q, N_KV, KEYS: gl.constexpr, BLOCK_M: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """(first, tiles): the query tiles that can see keys n0 .. n0 + KEYS - 1 (causal: rows i with i + N_KV - N_Q
    >= n0)."""
    tiles = gl.cdiv(N_Q, BLOCK_M)
    first = 0
    if IS_CAUSAL:
        first = gl.minimum(gl.maximum(n0 - (N_KV - N_Q), 0) // BLOCK_M, tiles)
    return first, tiles


@gluon.jit
def _bwd_issue(q_desc, do_desc, q_smem, do_smem, q_ready, q_empty, do_ready, do_empty, i, total, per_head, first, b,
               hkv, GROUP, STAGES: gl.constexpr, BLOCK_M: gl.constexpr, HALF_D: gl.constexpr):
    """TMA copies of step i's Q and dO halves (step i: q head i // per_head of the group, query tile first +
    i % per_head) into ring slot i % STAGES, once both warpgroups released the step that used it before."""
    if i < total:
        hq = hkv * GROUP + i // per_head
        m0 = (first + i % per_head) * BLOCK_M
        stage = i % STAGES
        phase = (i // STAGES) & 1
        # A fresh barrier counts as having completed the phase before phase 0: the first lap does not wait.
        mbarrier.wait(q_empty.index(stage), phase ^ 1)
        mbarrier.expect(q_ready.index(stage), BWD_HALVES * q_desc.block_type.nbytes)
        for h in gl.static_range(BWD_HALVES):
            tma.async_copy_global_to_shared(q_desc, [b, hq, m0, h * HALF_D], q_ready.index(stage),
                                           q_smem.index(stage * BWD_HALVES + h).reshape(q_desc.block_type.shape))
        mbarrier.wait(do_empty.index(stage), phase ^ 1)
        mbarrier.expect(do_ready.index(stage), BWD_HALVES * do_desc.block_type.nbytes)
        for h in gl.static_range(BWD_HALVES):
            tma.async_copy_global_to_shared(do_desc, [b, hq, m0, h * HALF_D], do_ready.index(stage),
                                           do_smem.index(stage * BWD_HALVES + h).reshape(do_desc.block_type.shape))


@gluon.jit
def _bwd_store_rows(head, acc, rows, stride_n, N_KV, col0, layout: gl.constexpr, HALF_D: gl.constexpr):
    """One column half of a dK or dV tile (rows past N_KV dropped; unit column stride)."""
    cols = col0 + gl.arange(0, HALF_D, layout=gl.SliceLayout(0, layout))
    r = gl.convert_layout(rows, gl.SliceLayout(1, layout))
    ptrs = head + gl.expand_dims(r.to(gl.int64) * stride_n, 1) + gl.expand_dims(cols, 0)
    gl.store(ptrs, acc.to(head.dtype.element_ty), mask=gl.expand_dims(r < N_KV, 1))


@gluon.jit
def _bwd_math(q_desc, k_desc, v_desc, do_desc, dq_desc, q_smem, k_smem, v_smem, do_smem, ds_smem, dq_smem, kv_ready,
              q_ready, q_empty, do_ready, do_empty, ds_ready, ds_empty, LSE, DELTA, DK_head, DV_head, stride_dkn,
              stride_dvn, b, hkv, n0, H_Q, GROUP, N_Q, N_KV, qk_scale, sm_scale, WG: gl.constexpr,
              STAGES: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HALF_D: gl.constexpr,
              IS_CAUSAL: gl.constexpr, num_warps: gl.constexpr):
    """Math warpgroup WG: keys n0 + WG * BLOCK_N .. + BLOCK_N; dQ's column half WG of every query tile. Warpgroup 0
    also issues the TMA copies (K and V once, each step's Q and dO STAGES - 1 steps ahead): a separate loader warp
    would make Triton compile the whole kernel for 384 threads, 168 registers a thread, and this loop needs more."""
    KEYS: gl.constexpr = BWD_WARPGROUPS * BLOCK_N
    dtype: gl.constexpr = q_smem.dtype
    st_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, BLOCK_M, 16])
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, HALF_D, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    col_layout: gl.constexpr = gl.SliceLayout(0, st_layout)  # one value per query of S^T
    first, tiles = _bwd_query_span(n0, N_Q, N_KV, KEYS, BLOCK_M, IS_CAUSAL)
    per_head = tiles - first
    total = GROUP * per_head
    if WG == 0:
        mbarrier.expect(kv_ready, 2 * BWD_HALVES * k_desc.block_type.nbytes)
        for h in gl.static_range(BWD_HALVES):
            tma.async_copy_global_to_shared(k_desc, [b, hkv, n0, h * HALF_D], kv_ready,
                                           k_smem.index(h).reshape(k_desc.block_type.shape))
            tma.async_copy_global_to_shared(v_desc, [b, hkv, n0, h * HALF_D], kv_ready,
                                           v_smem.index(h).reshape(v_desc.block_type.shape))
        for i in gl.static_range(STAGES - 1):
            _bwd_issue(q_desc, do_desc, q_smem, do_smem, q_ready, q_empty, do_ready, do_empty, i, total, per_head,
                       first, b, hkv, GROUP, STAGES, BLOCK_M, HALF_D)
    kw = n0 + WG * BLOCK_N
    keys = kw + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, st_layout))
    k0 = k_smem.index(0).slice(WG * BLOCK_N, BLOCK_N)
    k1 = k_smem.index(1).slice(WG * BLOCK_N, BLOCK_N)
    v0 = v_smem.index(0).slice(WG * BLOCK_N, BLOCK_N)
    v1 = v_smem.index(1).slice(WG * BLOCK_N, BLOCK_N)
    dk0 = gl.zeros([BLOCK_N, HALF_D], gl.float32, acc_layout)
    dk1 = gl.zeros([BLOCK_N, HALF_D], gl.float32, acc_layout)
    dv0 = gl.zeros([BLOCK_N, HALF_D], gl.float32, acc_layout)
    dv1 = gl.zeros([BLOCK_N, HALF_D], gl.float32, acc_layout)
    st = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, st_layout)
    dpt = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, st_layout)
    dq = gl.zeros([BLOCK_M, HALF_D], gl.float32, acc_layout)
    # Query tiles from m_full on see every key of this warpgroup (no causal test); key bounds only past N_KV.
    off = N_KV - N_Q
    m_full = 0
    if IS_CAUSAL:
        m_full = gl.maximum(kw + BLOCK_N - 1 - off, 0)
    keys_past_end = kw + BLOCK_N > N_KV
    mbarrier.wait(kv_ready, 0)
    for c in range(total):
        if WG == 0:
            _bwd_issue(q_desc, do_desc, q_smem, do_smem, q_ready, q_empty, do_ready, do_empty, c + STAGES - 1,
                       total, per_head, first, b, hkv, GROUP, STAGES, BLOCK_M, HALF_D)
        hq = hkv * GROUP + c // per_head
        row = (b * H_Q + hq) * N_Q
        m0 = (first + c % per_head) * BLOCK_M
        stage = c % STAGES
        phase = (c // STAGES) & 1
        mbarrier.wait(q_ready.index(stage), phase)
        qa = q_smem.index(stage * BWD_HALVES)
        qb = q_smem.index(stage * BWD_HALVES + 1)
        # use_acc=False ignores the accumulator's values: the previous step's (dead) S^T and dP^T serve.
        st_tok = warpgroup_mma(k0, qa.permute((1, 0)), st, use_acc=False, is_async=True)
        st_tok = warpgroup_mma(k1, qb.permute((1, 0)), st_tok, is_async=True)
        mbarrier.wait(do_ready.index(stage), phase)
        da = do_smem.index(stage * BWD_HALVES)
        db = do_smem.index(stage * BWD_HALVES + 1)
        dp_tok = warpgroup_mma(v0, da.permute((1, 0)), dpt, use_acc=False, is_async=True)
        dp_tok = warpgroup_mma(v1, db.permute((1, 0)), dp_tok, is_async=True)
        queries = m0 + gl.arange(0, BLOCK_M, layout=col_layout)
        in_q = queries < N_Q
        lse = gl.load(LSE + row + queries, mask=in_q, other=float("inf")) * 1.4426950408889634
        delta = gl.load(DELTA + row + queries, mask=in_q, other=0.0)
        st = warpgroup_mma_wait(2, deps=[st_tok])
        if keys_past_end or m0 < m_full:
            keep = gl.expand_dims(keys < N_KV, 1)
            if IS_CAUSAL:
                keep = keep & (gl.expand_dims(keys, 1) <= gl.expand_dims(queries + off, 0))
            st = gl.where(keep, st, -float("inf"))
        pt = gl.exp2(st * qk_scale - gl.expand_dims(lse, 0))
        pt_op = gl.convert_layout(pt.to(dtype), op_layout)
        dv0 = warpgroup_mma(pt_op, da, dv0, is_async=True)
        dv1 = warpgroup_mma(pt_op, db, dv1, is_async=True)
        dpt = warpgroup_mma_wait(2, deps=[dp_tok])
        dst = (pt * (dpt - gl.expand_dims(delta, 0))).to(dtype)
        dst_op = gl.convert_layout(dst, op_layout)
        dk0 = warpgroup_mma(dst_op, qa, dk0, is_async=True)
        dk1 = warpgroup_mma(dst_op, qb, dk1, is_async=True)
        # This warpgroup's rows of the step's dS^T, for both warpgroups' dQ (two buffers: step c + 2 may overwrite
        # buffer c % 2 only after both dQ matmuls of step c read it).
        buf = c % 2
        mbarrier.wait(ds_empty.index(buf), ((c // 2) & 1) ^ 1)
        ds_smem.index(buf).slice(WG * BLOCK_N, BLOCK_N).store(dst)
        fence_async_shared()
        gl.barrier()
        mbarrier.arrive(ds_ready.index(buf), count=1)
        dv0, dv1, dk0, dk1, pt_op, dst_op = warpgroup_mma_wait(0, deps=[dv0, dv1, dk0, dk1, pt_op, dst_op])
        mbarrier.arrive(q_empty.index(stage), count=1)
        mbarrier.arrive(do_empty.index(stage), count=1)
        mbarrier.wait(ds_ready.index(buf), (c // 2) & 1)
        dq_tok = warpgroup_mma(ds_smem.index(buf).permute((1, 0)), k_smem.index(WG), dq, use_acc=False,
                               is_async=True)
        dq = warpgroup_mma_wait(0, deps=[dq_tok])
        mbarrier.arrive(ds_empty.index(buf), count=1)
        # The previous step's reduce-add must have read dq_smem before it is overwritten (the copy is issued by one
        # thread: the barrier makes every thread wait for it).
        tma.store_wait(0)
        gl.barrier()
        dq_smem.index(WG).store(dq * sm_scale)
        fence_async_shared()
        gl.barrier()
        tma.async_atomic_add(dq_desc, [b, hq, m0, WG * HALF_D], dq_smem.index(WG).reshape(dq_desc.block_type.shape))
    tma.store_wait(0)
    _bwd_store_rows(DK_head, dk0 * sm_scale, keys, stride_dkn, N_KV, 0, acc_layout, HALF_D)
    _bwd_store_rows(DK_head, dk1 * sm_scale, keys, stride_dkn, N_KV, HALF_D, acc_layout, HALF_D)
    _bwd_store_rows(DV_head, dv0, keys, stride_dvn, N_KV, 0, acc_layout, HALF_D)
    _bwd_store_rows(DV_head, dv1, keys, stride_dvn, N_KV, HALF_D, acc_layout, HALF_D)


@gluon.jit
def attn_bwd_ws90(Q_DESC, K_DESC, V_DESC, DO_DESC, DQ_DESC, LSE, DELTA, DK, DV, stride_dkb, stride_dkh, stride_dkn,
                  stride_dvb, stride_dvh, stride_dvn, BATCH, H_Q, GROUP, N_Q, N_KV, qk_scale, sm_scale,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, STAGES: gl.constexpr,
                  IS_CAUSAL: gl.constexpr, num_warps: gl.constexpr):
    KEYS: gl.constexpr = BWD_WARPGROUPS * BLOCK_N
    HALF_D: gl.constexpr = HEAD_D // BWD_HALVES
    n_blocks = gl.cdiv(N_KV, KEYS)
    pid = gl.program_id(0)
    n0 = (pid % n_blocks) * KEYS
    bkv = pid // n_blocks
    h_kv = H_Q // GROUP
    b = bkv // h_kv
    hkv = bkv % h_kv
    DK_head = DK + b.to(gl.int64) * stride_dkb + hkv.to(gl.int64) * stride_dkh
    DV_head = DV + b.to(gl.int64) * stride_dvb + hkv.to(gl.int64) * stride_dvh
    dtype: gl.constexpr = Q_DESC.dtype
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HALF_D], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([KEYS, HALF_D], dtype)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([KEYS, BLOCK_M], dtype)
    dq_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES * BWD_HALVES, BLOCK_M, HALF_D], q_layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES * BWD_HALVES, BLOCK_M, HALF_D], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [BWD_HALVES, KEYS, HALF_D], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [BWD_HALVES, KEYS, HALF_D], kv_layout)
    ds_smem = gl.allocate_shared_memory(dtype, [2, KEYS, BLOCK_M], ds_layout)
    dq_smem = gl.allocate_shared_memory(gl.float32, [BWD_WARPGROUPS, BLOCK_M, HALF_D], dq_layout)
    kv_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    ds_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_ready, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(do_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=BWD_WARPGROUPS)
        mbarrier.init(do_empty.index(i), count=BWD_WARPGROUPS)
    for i in gl.static_range(2):
        mbarrier.init(ds_ready.index(i), count=BWD_WARPGROUPS)
        mbarrier.init(ds_empty.index(i), count=BWD_WARPGROUPS)
    fence_async_shared()
    gl.warp_specialize([
        (_bwd_math, (Q_DESC, K_DESC, V_DESC, DO_DESC, DQ_DESC, q_smem, k_smem, v_smem, do_smem, ds_smem, dq_smem,
                     kv_ready, q_ready, q_empty, do_ready, do_empty, ds_ready, ds_empty, LSE, DELTA, DK_head, DV_head,
                     stride_dkn, stride_dvn, b, hkv, n0, H_Q, GROUP, N_Q, N_KV, qk_scale, sm_scale, 0, STAGES,
                     BLOCK_M, BLOCK_N, HALF_D, IS_CAUSAL, num_warps)),
        (_bwd_math, (Q_DESC, K_DESC, V_DESC, DO_DESC, DQ_DESC, q_smem, k_smem, v_smem, do_smem, ds_smem, dq_smem,
                     kv_ready, q_ready, q_empty, do_ready, do_empty, ds_ready, ds_empty, LSE, DELTA, DK_head, DV_head,
                     stride_dkn, stride_dvn, b, hkv, n0, H_Q, GROUP, N_Q, N_KV, qk_scale, sm_scale, 1, STAGES,
                     BLOCK_M, BLOCK_N, HALF_D, IS_CAUSAL, num_warps)),
    ], [num_warps], [BWD_MATH_REGS])
