"""flash_v1 backward: delta = rowsum(o * do), then dk/dv per key tile (GQA group summed in-kernel) and dq per query tile.

Rendered after flash_v1_fwd.py into one module (it reuses _dot, _load_tile, _apply_masks, _kv_range and the
genome constants). CAUSAL_SPLIT splits both kernels' loops, as the forward's: full tiles skip the causal test.
ABI in avo_inductor/kernels/launch.py. Two kernels instead of dq atomics: deterministic and no fp32 scratch for
dq, at the price of computing S and dP twice (7 tile matmuls per block pair instead of 5). The bias is treated as
a non-differentiable constant (no dbias here).
"""
import triton
import triton.language as tl


@triton.jit
def attn_bwd_preprocess(O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_od,
                        stride_dob, stride_doh, stride_dom, stride_dod, H_Q, N_Q,
                        V_HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    off_b = bh // H_Q
    off_h = bh % H_Q
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    ok = (offs_m[:, None] < N_Q) & (offs_dv[None, :] < V_HEAD_DIM)
    o = tl.load(O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
                mask=ok, other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                 mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * N_Q + offs_m, delta, mask=offs_m < N_Q)


# EVOLVE-BLOCK-START
@triton.jit
def _p_from_lse(s, lse, MASK_KIND: tl.constexpr):
    """P = exp(s - lse) from scaled, masked scores and the saved natural-log LSE broadcast against them (s in log2
    units when USE_EXP2); rows past N_Q carry lse = +inf and give 0. A bias row whose every key sat at the
    forward's BIAS_FLOOR (LSE below BIAS_FLOOR_LSE) gives 0: its 1/N cannot be recovered from that LSE (see
    BIAS_FLOOR)."""
    if USE_EXP2:
        p = tl.math.exp2(s - lse * LOG2E)
    else:
        p = tl.exp(s - lse)
    if MASK_KIND == 1:
        p = tl.where(lse > BIAS_FLOOR_LSE, p, 0.0)
    return p


@triton.jit
def _probs(q, kt, LSE_row, offs_m, offs_n, mask, qk_scale, MASK_KIND: tl.constexpr, APPLY_CAUSAL: tl.constexpr,
           HAS_WINDOW: tl.constexpr, CHECK_N: tl.constexpr):
    """P (BM, BN) of query rows offs_m against keys offs_n recomputed from the saved logsumexp (``mask``: see
    _mask_scores)."""
    s = _dot(q, kt, tl.zeros([q.shape[0], kt.shape[1]], dtype=tl.float32)) * qk_scale
    s = _apply_masks(s, offs_m, offs_n, mask, MASK_KIND=MASK_KIND, APPLY_CAUSAL=APPLY_CAUSAL, HAS_WINDOW=HAS_WINDOW,
                     CHECK_N=CHECK_N)
    lse = tl.load(LSE_row + offs_m, mask=offs_m < mask[4], other=float("inf"))
    return _p_from_lse(s, lse[:, None], MASK_KIND=MASK_KIND)


@triton.jit
def _dkdv_inner(dk, dv, k_op, v_op, q_src, do_src, rows, dq_dst, mask, offs_n, lo, hi, qk_scale,
                HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASK_KIND: tl.constexpr,
                APPLY_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, CHECK_M: tl.constexpr, CHECK_N: tl.constexpr):
    """dK/dV of one key tile (keys offs_n) from query rows [lo, hi) of one q head. k_op/v_op are the tile's K and V
    as (BN, D) with BWD_TRANSPOSED, else K^T and V^T (D, BN). ``q_src`` (Q_head, stride_qm, stride_qd, offs_d) and
    ``do_src`` (DO_head, stride_dom, stride_dod, offs_dv) locate the head's Q and dO rows, ``rows`` (LSE_row,
    DELTA_row) its saved statistics, ``dq_dst`` (DQ_head, stride_dqm, stride_dqd, dq_scale) its dq accumulator
    (BWD_DQ_ATOMIC; a tensor descriptor with BWD_DQ_TMA), ``mask`` as in _mask_scores.
    BWD_TRANSPOSED works on S^T = K Q^T (BN, BM), the Triton tutorial's form: P^T and dS^T come out in the
    orientation their matmuls consume, so no computed tile is transposed in registers (only loaded Q and dO tiles,
    which the compiler transposes for free in shared memory).
    Rows past N_Q load lse = +inf and contribute nothing; keys past N_KV only touch dk/dv rows never stored (and
    add nothing to dq: their K rows load as zero). BWD_DQ_ATOMIC: dq += scale * dS K is added to DQ_head (fp32)
    here, so no dq kernel recomputes S and dP: one relaxed atomic per element (the kernel's end orders them before
    anything reads dq), or with BWD_DQ_TMA one bulk reduce-add of the whole tile by the copy engine
    (cp.reduce.async.bulk, FlashAttention-3's dQ accumulation)."""
    Q_head, stride_qm, stride_qd, offs_d = q_src
    DO_head, stride_dom, stride_dod, offs_dv = do_src
    LSE_row, DELTA_row = rows
    DQ_head, stride_dqm, stride_dqd, dq_scale = dq_dst
    N_Q = mask[4]
    BLOCK_N: tl.constexpr = offs_n.shape[0]
    BLOCK_D: tl.constexpr = offs_d.shape[0]
    BLOCK_DV: tl.constexpr = offs_dv.shape[0]
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        do = _load_tile(DO_head + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                        offs_m, offs_dv, N_Q, V_HEAD_DIM, CHECK_R=CHECK_M, CHECK_C=V_HEAD_DIM != BLOCK_DV)
        delta = tl.load(DELTA_row + offs_m, mask=offs_m < N_Q, other=0.0)
        if BWD_TRANSPOSED:
            qt = _load_tile(Q_head + offs_m[None, :] * stride_qm + offs_d[:, None] * stride_qd,
                            offs_d, offs_m, HEAD_DIM, N_Q, CHECK_R=HEAD_DIM != BLOCK_D, CHECK_C=CHECK_M)
            st = _dot(k_op, qt, tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)) * qk_scale
            st = _mask_scores(st, offs_m[None, :], offs_n[:, None], mask, MASK_KIND=MASK_KIND,
                              APPLY_CAUSAL=APPLY_CAUSAL, HAS_WINDOW=HAS_WINDOW, CHECK_N=CHECK_N)
            lse = tl.load(LSE_row + offs_m, mask=offs_m < N_Q, other=float("inf"))
            pt = _p_from_lse(st, lse[None, :], MASK_KIND=MASK_KIND)
            dv = _dot(pt.to(do.dtype), do, dv)
            dpt = _dot(v_op, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32))
            dst = pt * (dpt - delta[None, :])
            dk = _dot(dst.to(qt.dtype), tl.trans(qt), dk)
            if BWD_DQ_ATOMIC:  # dq^T = K^T dS^T (BD, BM): no register transpose of the computed dS^T
                dqt = _dot(tl.trans(k_op), dst.to(k_op.dtype), tl.zeros([BLOCK_D, BLOCK_M], dtype=tl.float32))
                if BWD_DQ_TMA:
                    DQ_head.atomic_add([start_m, 0], tl.trans(dqt * dq_scale))
                else:
                    tl.atomic_add(DQ_head + offs_m[None, :] * stride_dqm + offs_d[:, None] * stride_dqd,
                                  dqt * dq_scale, mask=(offs_m[None, :] < N_Q) & (offs_d[:, None] < HEAD_DIM),
                                  sem="relaxed")
        else:
            q = _load_tile(Q_head + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                           offs_m, offs_d, N_Q, HEAD_DIM, CHECK_R=CHECK_M, CHECK_C=HEAD_DIM != BLOCK_D)
            p = _probs(q, k_op, LSE_row, offs_m, offs_n, mask, qk_scale, MASK_KIND=MASK_KIND,
                       APPLY_CAUSAL=APPLY_CAUSAL, HAS_WINDOW=HAS_WINDOW, CHECK_N=CHECK_N)
            dv = _dot(tl.trans(p.to(do.dtype)), do, dv)
            dp = _dot(do, v_op, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32))
            ds = p * (dp - delta[:, None])
            dk = _dot(tl.trans(ds.to(q.dtype)), q, dk)
            if BWD_DQ_ATOMIC:  # k_op is K^T (BD, BN)
                dq_part = _dot(ds.to(k_op.dtype), tl.trans(k_op), tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32))
                if BWD_DQ_TMA:
                    DQ_head.atomic_add([start_m, 0], dq_part * dq_scale)
                else:
                    tl.atomic_add(DQ_head + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
                                  dq_part * dq_scale, mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM),
                                  sem="relaxed")
    return dk, dv


@triton.jit
def attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, MASK, DQ, DK, DV,
                  stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_vb, stride_vh, stride_vn, stride_vd, stride_dob, stride_doh, stride_dom, stride_dod,
                  stride_mb, stride_mh, stride_mm, stride_mn, stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                  stride_dkb, stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                  BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale, window,
                  HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  MASK_KIND: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr):
    """One program per (key tile, batch * kv head): loops over the GROUP q heads sharing this kv head. The natural
    tile order is already heaviest first under a causal mask (early keys are seen by the most queries)."""
    pid_n = tl.program_id(0)
    bkv = tl.program_id(1).to(tl.int64)
    h_kv = H_Q // GROUP
    off_b = bkv // h_kv
    off_kvh = bkv % h_kv
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    K_base = K + off_b * stride_kb + off_kvh * stride_kh
    V_base = V + off_b * stride_vb + off_kvh * stride_vh
    dq_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = dq_scale
    if USE_EXP2:
        qk_scale = qk_scale * LOG2E
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    # Query rows that can see this key tile: i + off >= start_n (causal), i + off - window < start_n + BLOCK_N.
    lo = start_n * 0
    hi = start_n * 0 + N_Q
    if IS_CAUSAL:
        lo = tl.maximum(lo, start_n - (N_KV - N_Q)) // BLOCK_M * BLOCK_M
    if HAS_WINDOW:
        hi = tl.minimum(hi, start_n + BLOCK_N - 1 - (N_KV - N_Q) + window)
    # Rows from full_lo on see every key of the tile (i + off >= start_n + BLOCK_N - 1): no causal test there.
    full_lo = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - (N_KV - N_Q), 0), BLOCK_M) * BLOCK_M
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    if BWD_TRANSPOSED:
        k_op = _load_tile(K_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                          offs_n, offs_d, N_KV, HEAD_DIM, not EVEN_N, HEAD_DIM != BLOCK_D)
        v_op = _load_tile(V_base + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                          offs_n, offs_dv, N_KV, V_HEAD_DIM, not EVEN_N, V_HEAD_DIM != BLOCK_DV)
    else:
        k_op = _load_tile(K_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                          offs_d, offs_n, HEAD_DIM, N_KV, HEAD_DIM != BLOCK_D, not EVEN_N)
        v_op = _load_tile(V_base + offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd,
                          offs_dv, offs_n, V_HEAD_DIM, N_KV, V_HEAD_DIM != BLOCK_DV, not EVEN_N)
    for g in range(GROUP):
        off_h = off_kvh * GROUP + g
        M_base, slope = _head_mask(MASK, off_b, off_h, stride_mb, stride_mh, MASK_KIND)
        q_src = (Q + off_b * stride_qb + off_h * stride_qh, stride_qm, stride_qd, offs_d)
        do_src = (DO + off_b * stride_dob + off_h * stride_doh, stride_dom, stride_dod, offs_dv)
        DQ_head = DQ + off_b * stride_dqb + off_h * stride_dqh
        if BWD_DQ_ATOMIC and BWD_DQ_TMA:
            # The launcher's dq accumulator: contiguous fp32 rows, 16-byte aligned; rows past N_Q and columns past
            # HEAD_DIM of a tile fall outside the descriptor and are dropped by the copy engine.
            DQ_head = tl.make_tensor_descriptor(DQ_head, shape=[N_Q, HEAD_DIM], strides=[stride_dqm, 1],
                                                block_shape=[BLOCK_M, BLOCK_D])
        dq_dst = (DQ_head, stride_dqm, stride_dqd, dq_scale)
        row = (off_b * H_Q + off_h) * N_Q
        rows = (LSE + row, DELTA + row)
        mask = (M_base, stride_mm, stride_mn, slope, N_Q, N_KV, window)
        if IS_CAUSAL and CAUSAL_SPLIT:
            dk, dv = _dkdv_inner(dk, dv, k_op, v_op, q_src, do_src, rows, dq_dst, mask, offs_n, lo, full_lo, qk_scale,
                                 HEAD_DIM, V_HEAD_DIM, BLOCK_M, MASK_KIND=MASK_KIND, APPLY_CAUSAL=True,
                                 HAS_WINDOW=HAS_WINDOW, CHECK_M=not EVEN_M, CHECK_N=not EVEN_N)
            dk, dv = _dkdv_inner(dk, dv, k_op, v_op, q_src, do_src, rows, dq_dst, mask, offs_n, full_lo, hi, qk_scale,
                                 HEAD_DIM, V_HEAD_DIM, BLOCK_M, MASK_KIND=MASK_KIND, APPLY_CAUSAL=False,
                                 HAS_WINDOW=HAS_WINDOW, CHECK_M=not EVEN_M, CHECK_N=False)
        else:
            dk, dv = _dkdv_inner(dk, dv, k_op, v_op, q_src, do_src, rows, dq_dst, mask, offs_n, lo, hi, qk_scale,
                                 HEAD_DIM, V_HEAD_DIM, BLOCK_M, MASK_KIND=MASK_KIND, APPLY_CAUSAL=IS_CAUSAL,
                                 HAS_WINDOW=HAS_WINDOW, CHECK_M=not EVEN_M, CHECK_N=not EVEN_N)
    dk = dk * tl.cast(sm_scale, tl.float32)
    ok_n = offs_n[:, None] < N_KV
    tl.store(DK + off_b * stride_dkb + off_kvh * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=ok_n & (offs_d[None, :] < HEAD_DIM))
    tl.store(DV + off_b * stride_dvb + off_kvh * stride_dvh + offs_n[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=ok_n & (offs_dv[None, :] < V_HEAD_DIM))


@triton.jit
def _dq_inner(dq, q, do, delta, k_src, v_src, LSE_row, mask, offs_m, lo, hi, qk_scale, HEAD_DIM: tl.constexpr,
              V_HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, APPLY_CAUSAL: tl.constexpr,
              HAS_WINDOW: tl.constexpr, CHECK_N: tl.constexpr):
    """dq of one query tile from keys [lo, hi): dq += dS K, dS = P * (dP - delta). ``k_src``/``v_src``: (base of
    this kv head's K or V, key stride, head-dim stride, head-dim offsets); ``mask``: see _mask_scores."""
    K_base, stride_kn, stride_kd, offs_d = k_src
    V_base, stride_vn, stride_vd, offs_dv = v_src
    N_KV = mask[5]
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kt = _load_tile(K_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                        offs_d, offs_n, HEAD_DIM, N_KV, CHECK_R=HEAD_DIM != offs_d.shape[0], CHECK_C=CHECK_N)
        vt = _load_tile(V_base + offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd,
                        offs_dv, offs_n, V_HEAD_DIM, N_KV, CHECK_R=V_HEAD_DIM != offs_dv.shape[0], CHECK_C=CHECK_N)
        p = _probs(q, kt, LSE_row, offs_m, offs_n, mask, qk_scale, MASK_KIND=MASK_KIND, APPLY_CAUSAL=APPLY_CAUSAL,
                   HAS_WINDOW=HAS_WINDOW, CHECK_N=CHECK_N)
        dp = _dot(do, vt, tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32))
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(q.dtype), tl.trans(kt), dq)
    return dq


@triton.jit
def attn_bwd_dq(Q, K, V, DO, LSE, DELTA, MASK, DQ, DK, DV,
                stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd, stride_dob, stride_doh, stride_dom, stride_dod,
                stride_mb, stride_mh, stride_mm, stride_mn, stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                stride_dkb, stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale, window,
                HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                MASK_KIND: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr):
    """One program per (query tile, batch * q head): dq = scale * sum_n dS K; HEAVY_FIRST reverses the causal
    tile order so the tiles with the most key blocks start first."""
    pid_m = tl.program_id(0)
    if IS_CAUSAL and HEAVY_FIRST:
        pid_m = tl.cdiv(N_Q, BLOCK_M) - 1 - pid_m
    bh = tl.program_id(1).to(tl.int64)
    off_b = bh // H_Q
    off_h = bh % H_Q
    off_kvh = off_h // GROUP
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                   offs_m, offs_d, N_Q, HEAD_DIM, not EVEN_M, HEAD_DIM != BLOCK_D)
    do = _load_tile(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                    offs_m, offs_dv, N_Q, V_HEAD_DIM, not EVEN_M, V_HEAD_DIM != BLOCK_DV)
    delta = tl.load(DELTA + bh * N_Q + offs_m, mask=offs_m < N_Q, other=0.0)
    qk_scale = tl.cast(sm_scale, tl.float32)
    if USE_EXP2:
        qk_scale = qk_scale * LOG2E
    M_base, slope = _head_mask(MASK, off_b, off_h, stride_mb, stride_mh, MASK_KIND)
    K_base = K + off_b * stride_kb + off_kvh * stride_kh
    V_base = V + off_b * stride_vb + off_kvh * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, hi = _kv_range(start_m, N_Q, N_KV, window, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WINDOW)
    k_src = (K_base, stride_kn, stride_kd, offs_d)
    v_src = (V_base, stride_vn, stride_vd, offs_dv)
    mask = (M_base, stride_mm, stride_mn, slope, N_Q, N_KV, window)
    if IS_CAUSAL and CAUSAL_SPLIT:
        # Key blocks wholly at or below the diagonal of the tile's first row: no causal test, no key bounds test.
        full_hi = (start_m + (N_KV - N_Q) + 1) // BLOCK_N * BLOCK_N
        full_hi = tl.minimum(tl.maximum(full_hi, lo), hi)
        dq = _dq_inner(dq, q, do, delta, k_src, v_src, LSE + bh * N_Q, mask, offs_m, lo, full_hi, qk_scale, HEAD_DIM,
                       V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=False, HAS_WINDOW=HAS_WINDOW,
                       CHECK_N=False)
        dq = _dq_inner(dq, q, do, delta, k_src, v_src, LSE + bh * N_Q, mask, offs_m, full_hi, hi, qk_scale, HEAD_DIM,
                       V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=True, HAS_WINDOW=HAS_WINDOW,
                       CHECK_N=not EVEN_N)
    else:
        dq = _dq_inner(dq, q, do, delta, k_src, v_src, LSE + bh * N_Q, mask, offs_m, lo, hi, qk_scale, HEAD_DIM,
                       V_HEAD_DIM, BLOCK_N, MASK_KIND=MASK_KIND, APPLY_CAUSAL=IS_CAUSAL, HAS_WINDOW=HAS_WINDOW,
                       CHECK_N=not EVEN_N)
    dq = dq * tl.cast(sm_scale, tl.float32)
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))
# EVOLVE-BLOCK-END
