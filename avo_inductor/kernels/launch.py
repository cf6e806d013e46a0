"""Trusted host launcher: the ONE fixed ABI every attention kernel source follows (rendered or agent-written).

Kernels never allocate, never see Python objects, and are launched only from here, through
``torch.library.wrap_triton`` so Inductor sees (and inlines) each launch when traced inside a triton_op.

Forward ``{entry}`` (all arguments by keyword, in this order):
    Q, K, V, O, LSE, MASK,
    stride_{q,k,v,o,m}{b,h,m|n,d}  -- 4 strides each for q, k, v, o and the mask operand (20 ints)
    BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale (float, may arrive as fp64), window (int, 0 = none),
    constexprs HEAD_DIM, V_HEAD_DIM, BLOCK_D, BLOCK_DV (next pow2 >= 16 of the head dims), BLOCK_M, BLOCK_N,
    IS_CAUSAL (also set when window > 0), HAS_WINDOW, MASK_KIND (0 none, 1 bias, 2 keep-mask bool,
    3 alibi slopes), EVEN_M, EVEN_N (lengths divide the tiles; only with even_fast_path), SPLITS.
  MASK is a (B, Hq, Nq, Nk)-broadcast view (stride 0 on broadcast dims); padding becomes a keep-mask with
  strides (sb, 0, 0, sn); alibi passes the (Hq,) fp32 slopes with strides (0, s, 0, 0); none passes Q, all 0.
  With launch["alibi_bound"] the alibi operand is one contiguous fp32 buffer (s = 1): the Hq slopes, then the
  largest key norm ||k_j|| of each (batch, kv head), B * Hkv values, batch-major.
  LSE is contiguous fp32 (B, Hq * SPLITS, Nq), natural log, +inf for rows with no allowed key.
  With SPLITS > 1, O is a contiguous fp32 (B, Hq * SPLITS, Nq, Dv) partial buffer (head index h * SPLITS + s)
  and ``{entry}_reduce``(OP, LSEP, O, LSE, stride_o{b,h,m,d}, BATCH, H_Q, N_Q, V_HEAD_DIM, BLOCK_M, BLOCK_DV,
  SPLITS) combines it, grid (cdiv(Nq, BLOCK_M), B * Hq); the reduce's BLOCK_M is its own row tile
  (REDUCE_BLOCK_M), not the forward's.
  With launch["split_combine"] true (and SPLITS > 1) no reduce runs: ``{entry}_split_combine`` takes the forward's
  arguments (O, LSE the partial buffers above) followed by OF, LSEF (the output and its lse), TICKETS (a zeroed
  int32 buffer, one counter per forward row tile of each batch * head of the grid's second axis, tile index
  head_index * cdiv(rows, BLOCK_M) + row tile) and stride_f{b,h,m,d} of OF, with the forward's grid: the last
  program of a tile to take its ticket combines that tile's partials.
Grid rules (launch["grid"]): "fwd" (cdiv(Nq, BLOCK_M), B * Hq) with kv_splits 1; "splitkv"
  (cdiv(Nq, BLOCK_M) * SPLITS, B * Hq); "persistent" (min(tiles, SM count),), tiles walked in-kernel.
Packed GQA (launch["pack_gqa"] true; the source must pack too, flash_v1 renders PACK_GQA = True): the forward's
  rows are the Nq * GROUP (query position, head-in-group) pairs of one kv head, row r -> position r // GROUP,
  q head kv_head * GROUP + r % GROUP, so every grid rule above uses cdiv(Nq * GROUP, BLOCK_M) row tiles and
  B * Hkv heads instead of cdiv(Nq, BLOCK_M) and B * Hq, and EVEN_M means BLOCK_M divides Nq * GROUP. O, LSE and
  the split partials keep the layouts above (each row is stored at its real head and position). The reduce packs
  every (batch, q head, position) row densely: grid (cdiv(B * Hq * Nq, BLOCK_M), 1).
Tensor descriptors (launch["tma"] true): the source may build device-side descriptors over K and V as (N_KV, D)
  tiles with strides (stride_kn, 1); the launcher guarantees unit last strides and 16-byte aligned rows and base
  (copying K/V only when they are not) and installs Triton's global-scratch allocator for direct launches.
Grid rules "ws90" / "ws90_persistent" (Gluon, Hopper; templates/flash_ws90_fwd.py): ``{entry}``(Q_DESC, K_DESC,
  V_DESC, B_DESC, O, LSE, MASK, stride_o{b,h,m}, stride_m{b,h,m,n}, BATCH, H_Q, GROUP, N_Q, N_KV, qk_scale =
  sm_scale * log2(e), constexprs BLOCK_M (rows per math warpgroup), BLOCK_N, HEAD_D, STAGES (= num_stages),
  IS_CAUSAL, MASK_KIND 0/1/3, BIAS_TMA, BIAS_STAGES, BIAS_BCAST_B, BIAS_BCAST_H), 1-d grid: one program per tile
  (cdiv(Nq, 2 * BLOCK_M) * B * Hq), or for "ws90_persistent" at most one per SM; MASK and its strides as in the
  forward ABI above. BIAS_TMA (a bias TMA can read, _ws90_bias_ring): B_DESC is a descriptor over the bias with
  block [1, 1, BLOCK_M, BLOCK_N], a broadcast batch/head dimension of size 1 (BIAS_BCAST_B/H: read at index 0),
  BIAS_STAGES its ring depth per math warpgroup (render.ws90_bias_stages); otherwise B_DESC is None; the
  descriptors are Gluon host TensorDescriptors over the 4-d q/k/v (unit last stride, 16-byte aligned strides and
  base, copied when not) with blocks [1, 1, BLOCK_M or BLOCK_N, D]; O has a unit last stride, LSE is as above.
  No keep-masks, window or split-K; the launch is always direct (see op.py: the op stays opaque to Inductor).
Backward ``{bwd}_preprocess``(O, DO, DELTA, stride_o(4), stride_do(4), H_Q, N_Q, V_HEAD_DIM, BLOCK_M, BLOCK_DV),
  grid (cdiv(Nq, BWD_BLOCK_M), B * Hq), DELTA contiguous fp32 (B, Hq, Nq) = rowsum(o * do).
  ``{bwd}_dkdv`` and ``{bwd}_dq`` share one argument list:
    Q, K, V, DO, LSE, DELTA, MASK, DQ, DK, DV, stride_{q,k,v,do,m,dq,dk,dv} (4 each),
    BATCH, H_Q, GROUP, N_Q, N_KV, sm_scale, window, and the forward's constexprs without SPLITS
    (BLOCK_M/BLOCK_N = BWD_BLOCK_M/BWD_BLOCK_N).
  Grid rule "bwd": dkdv (cdiv(Nk, BWD_BLOCK_N), B * Hkv), summing the GQA group in-kernel;
  dq (cdiv(Nq, BWD_BLOCK_M), B * Hq).
  launch["bwd_dq_atomic"] true: DQ is a zero-filled contiguous fp32 (B, Hq, Nq, D) buffer that ``{bwd}_dkdv``
  atomically adds its dq = scale * dS K contributions to; ``{bwd}_dq`` is not launched and the launcher casts the
  buffer into dq. With launch["bwd_dq_tma"] too, its rows are padded to a multiple of 4 floats (the copy engine's
  16-byte rule; DQ is a view of the first D columns) and Triton's scratch allocator is set for the kernel's
  device-side descriptors.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..artifact import WS90_GRIDS, LaunchConfig
from ..spec import next_power_of_two
from . import key_norms
from .interpreter import ensure_interpreter_fixes
from .launch_plan import PLANS, DescriptorSpec, ForwardPlan, PlannedLaunch, plan_key
from .operands import check_mask_operand
from .reference import MASK_KINDS

MASK_CODES = {"none": 0, "bias": 1, "bool": 2, "padding": 2, "alibi": 3}
WS90_MASK_CODES = (0, 1, 3)  # none, bias, alibi
_CPU_PROGRAMS = 4  # "SM count" of the interpreter for the persistent grid
# Rows per program of the split-K reduce: one. A decode reduce has only B * Hq * Nq rows (32 for one sequence of
# 32 heads); tiles of the forward's BLOCK_M gave it 2 programs, each reading every split's partial rows in turn.
REDUCE_BLOCK_M = 1


def _cdiv(a: Any, b: int) -> Any:
    return (a + b - 1) // b


def _known_multiple(n: Any, block: int) -> bool:
    """True only when n % block == 0 holds without adding a guard (SymInt lengths take the masked path)."""
    if isinstance(n, int):
        return n % block == 0
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return bool(statically_known_true(n % block == 0))


class TritonKernel(Protocol):
    """A launchable @triton.jit (or Gluon) function: ``kernel[grid](**kwargs)``. Triton ships no type stubs, so
    this names what the launcher uses: indexing by a grid, and the ``__call__`` (valid only inside another kernel)
    that makes it the callable ``torch.library.wrap_triton`` takes."""

    def __getitem__(self, grid: Any) -> Callable[..., Any]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class KernelFunctions:
    """The @triton.jit functions of one loaded source; backward ones are None without a bwd entry point."""

    fwd: TritonKernel
    reduce: TritonKernel | None = None
    split_combine: TritonKernel | None = None
    bwd_preprocess: TritonKernel | None = None
    bwd_dkdv: TritonKernel | None = None
    bwd_dq: TritonKernel | None = None
    bwd_ws90: TritonKernel | None = None  # the fused Gluon backward (launch["bwd_ws90"])

    @property
    def has_backward(self) -> bool:
        return self.bwd_dkdv is not None and self.bwd_dq is not None and self.bwd_preprocess is not None


def _plain_eager(grid: tuple[Any, ...], args: Any) -> bool:
    """True for an eager call on real tensors: no dynamo, no dispatch mode (fake/proxy tracing), no tensor
    subclass (FakeTensor, FunctionalTensor), no symbolic grid."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    if not all(isinstance(g, int) for g in grid):
        return False
    return all(type(a) is torch.Tensor for a in args if isinstance(a, torch.Tensor))


def _launch(fn: TritonKernel, grid: tuple[Any, ...], **kwargs: Any) -> Any:
    """Launch ``fn`` (returns what Triton's launch returns: the CompiledKernel of an eager GPU launch)."""
    ensure_interpreter_fixes()
    if _plain_eager(grid, kwargs.values()):
        # wrap_triton's higher-order-op dispatch costs ~0.1-1 ms per launch in eager mode (torch's own triton_op
        # turns it off there too); the search's timing and direct calls would measure that overhead, not the kernel.
        return fn[grid](**kwargs)
    torch.library.wrap_triton(fn)[grid](**kwargs)
    return None


def _scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Triton's global-scratch allocator (device-side tensor descriptors live there): Inductor installs its own
    when it launches; direct launches need this one."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def _descriptor_ready(t: torch.Tensor, full_rank: bool = False) -> bool:
    """TMA's rules for a (B, H, N, D) operand read as (N, D) tiles: unit last stride, 16-byte aligned row stride
    and base (a fake tensor under tracing has no address; Inductor's buffers and views of them are aligned).
    ``full_rank``: a 4-d descriptor over the whole tensor (flash_ws90), so the batch and head strides must be
    positive multiples of 16 bytes too (a broadcast stride 0 is not a TMA stride)."""
    size = t.element_size()
    if t.stride(3) != 1 or not _known_multiple(t.stride(2) * size, 16):
        return False
    if full_rank and not all(t.stride(i) > 0 and _known_multiple(t.stride(i) * size, 16) for i in range(3)):
        return False
    fake = type(t) is not torch.Tensor
    return fake or t.data_ptr() % 16 == 0


def _for_descriptors(t: torch.Tensor, full_rank: bool = False) -> torch.Tensor:
    """``t`` itself when descriptors can read it, else a contiguous copy (a fresh allocation is aligned; a
    contiguous view at an odd offset would pass ``.contiguous()`` unchanged)."""
    if _descriptor_ready(t, full_rank):
        return t
    t = t.clone(memory_format=torch.contiguous_format)
    if not _descriptor_ready(t, full_rank):
        raise ValueError(f"tensor-descriptor kernels need 16-byte rows; head dim {t.shape[3]} of {t.dtype} has "
                         f"{t.shape[3] * t.element_size()} bytes")
    return t


def mask_operand(q: torch.Tensor, mask: torch.Tensor | None, mask_kind: str, n_kv: Any,
                 alibi_keys: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[Any, ...], int]:
    """(tensor, 4 strides, MASK_KIND code) as the kernels read the mask; views only, no copies but alibi's cast.
    ``alibi_keys``: the K of a launch["alibi_bound"] forward, whose per-head largest key norms follow the slopes."""
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"mask_kind must be one of {MASK_KINDS}; got {mask_kind!r}")
    code = MASK_CODES[mask_kind]
    if code == 0:
        return q, (0, 0, 0, 0), 0
    if mask is None:
        raise ValueError(f"mask_kind={mask_kind!r} needs a mask tensor")
    b, hq, nq = q.shape[0], q.shape[1], q.shape[2]
    if mask_kind == "alibi":
        slopes = mask.reshape(-1).to(torch.float32)
        if slopes.shape[0] != hq:
            raise ValueError(f"alibi slopes must have one value per q head ({hq}); got shape {tuple(mask.shape)}")
        if alibi_keys is not None:
            slopes = _with_key_norms(slopes, alibi_keys)
        return slopes, (0, slopes.stride(0), 0, 0), code
    if mask_kind == "padding":
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"padding mask must be a (B, Nk) bool tensor; got {tuple(mask.shape)} {mask.dtype}")
        # Passed as bool (Triton reads it as *i1, as Inductor's own kernels do): a .view(torch.uint8) here is an
        # aten.view.dtype in the traced graph, which Inductor cannot lower for bool ("torch.bool is not supported
        # by torch.iinfo"), so backend="avo" failed to compile every padded model on CUDA.
        return mask, (mask.stride(0), 0, 0, mask.stride(1)), code
    if (mask.dtype == torch.bool) != (mask_kind == "bool"):
        raise ValueError(f"mask_kind={mask_kind!r} got a {mask.dtype} mask (bool needs torch.bool, bias a float)")
    if mask.dim() > 4:
        raise ValueError(f"mask must be broadcastable to (B, H, Nq, Nk); got shape {tuple(mask.shape)}")
    m = torch.broadcast_to(mask, (b, hq, nq, n_kv))
    return m, tuple(m.stride()), code


def _with_key_norms(slopes: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The slopes followed by the largest key norm of each (batch, kv head), one contiguous fp32 buffer."""
    b, hkv, nk, d = k.shape
    buf = torch.cat([slopes, slopes.new_zeros(b * hkv)])
    block_d = next_power_of_two(d)
    _launch(key_norms.key_norm_max, (b * hkv, _cdiv(nk, key_norms.ROWS_PER_PROGRAM)), K=k, OUT=buf,
            OUT_OFFSET=slopes.shape[0], **_strides("k", k, "bhnd"), H_KV=hkv, N_KV=nk, HEAD_DIM=d,
            BLOCK_N=max(16, 4096 // block_d), BLOCK_D=block_d, ROWS=key_norms.ROWS_PER_PROGRAM)
    return buf


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one of float16/bfloat16/float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[1] % k.shape[1] or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"incompatible q/k/v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def _scalars(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, causal: bool,
             window: int, mask_kind: str) -> dict[str, Any]:
    d, dv = q.shape[3], v.shape[3]
    window = int(window or 0)
    sm_scale = float(1.0 / math.sqrt(d) if scale is None else scale)
    if not (math.isfinite(sm_scale) and sm_scale > 0):
        # The kernels take the row max on unscaled scores: a non-positive scale would pick the wrong max.
        raise ValueError(f"attention scale must be a positive finite float; got {sm_scale}")
    return dict(BATCH=q.shape[0], H_Q=q.shape[1], GROUP=q.shape[1] // k.shape[1], N_Q=q.shape[2], N_KV=k.shape[2],
                sm_scale=sm_scale, window=window,
                HEAD_DIM=d, V_HEAD_DIM=dv, BLOCK_D=next_power_of_two(d), BLOCK_DV=next_power_of_two(dv),
                IS_CAUSAL=bool(causal or window > 0), HAS_WINDOW=window > 0)


def spec_call_args(spec: Any) -> dict[str, Any]:
    """``forward``/``backward``'s attention arguments for an AttentionSpec (scale, causal, window with 0 = none,
    mask_kind): one mapping for every harness that launches a kernel for a spec."""
    return dict(scale=spec.scale, causal=spec.causal, window=spec.window or 0, mask_kind=spec.mask.value)


def _strides(prefix: str, t: torch.Tensor | tuple[Any, ...], names: str = "bhmd") -> dict[str, Any]:
    s = t if isinstance(t, tuple) else t.stride()
    return {f"stride_{prefix}{n}": s[i] for i, n in enumerate(names)}


def forward(fns: KernelFunctions, cfg: LaunchConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None, *, scale: float | None, causal: bool, window: int, mask_kind: str,
            out: torch.Tensor | None = None, lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward: returns out (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) fp32.

    ``out``/``lse`` may be passed pre-allocated (tests poison them with NaN to catch unwritten elements).
    An eager call reuses the launch plan of an earlier call with the same key (launch_plan.py); a traced call,
    or one with ``out``/``lse`` given, builds its plan afresh.
    """
    eager = out is None and lse is None and _plain_eager((), (q, k, v, mask))
    alibi_keys = k if cfg.alibi_bound else None
    key = None
    if eager:  # a plan of the same key passed every check below when it was made: a hit skips them
        key = plan_key((id(fns), id(cfg)), q, k, v, mask, (mask_kind, scale, causal, window))
        plan = PLANS.get(key)
        if plan is not None:
            m = mask_operand(q, mask, mask_kind, k.shape[2], alibi_keys)[0]
            return plan.run({"q": q, "k": k, "v": v, "mask": m}, None, None, True)
    _check_qkv(q, k, v)  # before anything indexes their shapes: a clear error for a bad call
    check_mask_operand(mask_kind, mask, q, k, v)  # plan_key holds the mask's shape/dtype/device: a hit passed this
    m, m_strides, code = mask_operand(q, mask, mask_kind, k.shape[2], alibi_keys)
    tensors = {"q": q, "k": k, "v": v, "mask": m}
    plan = _plan_forward(fns, cfg, tensors, m_strides, code, scale=scale, causal=causal, window=window,
                         mask_kind=mask_kind, out_strides=None if out is None else tuple(out.stride()))
    result = plan.run(tensors, out, lse, eager)
    if key is not None:
        plan.owner = (fns, cfg)
        PLANS.put(key, plan)
    return result


def _launch_direct(fn: TritonKernel, grid: tuple[Any, ...], **kwargs: Any) -> Any:
    """A Gluon kernel's launch: always direct (wrap_triton cannot trace Gluon host descriptors)."""
    return fn[grid](**kwargs)


def _plan_forward(fns: KernelFunctions, cfg: LaunchConfig, tensors: dict[str, Any], m_strides: tuple[Any, ...],
                  code: int, *, scale: float | None, causal: bool, window: int, mask_kind: str,
                  out_strides: tuple[Any, ...] | None = None) -> ForwardPlan:
    """The forward's plan for these tensors (scale, mask and template limits checked here, once per plan key);
    ``out_strides``: those of a caller's pre-allocated out (default a fresh contiguous one)."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    b, hq, nq = q.shape[0], q.shape[1], q.shape[2]
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[3]
    sc = _scalars(q, k, v, scale, causal, window, mask_kind)
    out_shape, lse_shape = (b, hq, nq, dv), (b, hq, nq)
    out_strides = out_strides or _contiguous_strides(out_shape)
    if cfg.grid in WS90_GRIDS:
        if code not in WS90_MASK_CODES or window:
            raise ValueError(f"a ws90 (Gluon) kernel takes no window and mask kinds none/bias/alibi; got "
                             f"{mask_kind!r}, window {window}")
        return _plan_ws90(fns, cfg, q, k, v, tensors["mask"], m_strides, code, sc, out_shape, lse_shape, out_strides)
    copies = tuple(role for role in ("k", "v") if cfg.tma and not _descriptor_ready(tensors[role]))
    splits = cfg.kv_splits
    even = cfg.even_fast_path
    buffers: dict[str, tuple[tuple[Any, ...], torch.dtype]] = {}
    o_role, l_role = "out", "lse"
    zeroed: tuple[str, ...] = ()
    if splits > 1:
        buffers = {"o_buf": ((b, hq * splits, nq, dv), torch.float32), "l_buf": ((b, hq * splits, nq), torch.float32)}
        o_role, l_role = "o_buf", "l_buf"
    # Packed GQA: tiles over the Nq * GROUP (position, head-in-group) rows of each (batch, kv head).
    rows, heads = (nq * sc["GROUP"], hkv) if cfg.pack_gqa else (nq, hq)
    num_m = _cdiv(rows, cfg.block_m)
    combine = fns.split_combine if splits > 1 and cfg.split_combine else None  # the one-launch form's entry
    if splits > 1 and cfg.split_combine:
        if combine is None:
            raise RuntimeError("split_combine needs the source's '{entry}_split_combine' kernel")
        # Zeroed every call, never kept between calls: a counter shared by two launches in flight on two streams
        # (or two CUDA-graph replays) would hand one of them the last ticket before its partials are stored.
        buffers["tickets"] = ((num_m * b * heads,), torch.int32)
        zeroed = ("tickets",)
    if cfg.grid == "persistent":
        n_prog = (torch.cuda.get_device_properties(q.device).multi_processor_count
                  if q.device.type == "cuda" else _CPU_PROGRAMS)
        grid: tuple[Any, ...] = (torch.sym_min(num_m * splits * b * heads, n_prog),)
    else:
        grid = (num_m * splits, b * heads)
    o_strides = _contiguous_strides(buffers["o_buf"][0]) if splits > 1 else out_strides
    fwd_static = dict(
        **_strides("q", q), **_strides("k", k, "bhnd"), **_strides("v", v, "bhnd"), **_strides("o", o_strides),
        **_strides("m", m_strides, "bhmn"), **sc, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, MASK_KIND=code,
        EVEN_M=even and _known_multiple(rows, cfg.block_m), EVEN_N=even and _known_multiple(nk, cfg.block_n),
        SPLITS=splits, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    fwd_roles = dict(Q="q", K="k", V="v", O=o_role, LSE=l_role, MASK="mask")
    if combine is not None:
        launches = [PlannedLaunch(combine, grid, {**fwd_static, **_strides("f", out_strides)},
                                  {**fwd_roles, "OF": "out", "LSEF": "lse", "TICKETS": "tickets"})]
    else:
        launches = [PlannedLaunch(fns.fwd, grid, fwd_static, fwd_roles)]
    if splits > 1 and combine is None:
        if fns.reduce is None:
            raise RuntimeError("kv_splits > 1 needs the source's '{entry}_reduce' kernel")
        rb = REDUCE_BLOCK_M
        reduce_grid = (_cdiv(b * hq * nq, rb), 1) if cfg.pack_gqa else (_cdiv(nq, rb), b * hq)
        launches.append(PlannedLaunch(fns.reduce, reduce_grid, dict(
            **_strides("o", out_strides), BATCH=b, H_Q=hq, N_Q=nq, V_HEAD_DIM=dv, BLOCK_M=rb,
            BLOCK_DV=sc["BLOCK_DV"], SPLITS=splits, num_warps=1, num_stages=1),
            dict(OP="o_buf", LSEP="l_buf", O="out", LSE="lse")))
    return ForwardPlan(out_shape, lse_shape, buffers, copies, False, {}, tuple(launches), via=_launch,
                       copy=_for_descriptors, allocator=_scratch if cfg.tma else None, zeroed=zeroed)


def _contiguous_strides(shape: tuple[Any, ...]) -> tuple[Any, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step = step * size
    return tuple(reversed(strides))


def _plan_ws90(fns: KernelFunctions, cfg: LaunchConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor, m_strides: tuple[Any, ...], code: int, sc: dict[str, Any],
               out_shape: tuple[Any, ...], lse_shape: tuple[Any, ...], out_strides: tuple[Any, ...]) -> ForwardPlan:
    """A flash_ws90 forward's plan (launched directly: Gluon kernels do not go through wrap_triton)."""
    d = q.shape[3]
    if q.dtype not in (torch.float16, torch.bfloat16) or v.shape[3] != d:
        raise ValueError(f"a ws90 kernel takes 16-bit q/k/v with equal head dims; got {q.dtype}, {d}/{v.shape[3]}")
    copies = tuple(role for role, t in (("q", q), ("k", k), ("v", v)) if not _descriptor_ready(t, full_rank=True))
    descriptors = {f"{role}_desc": DescriptorSpec(role, (1, 1, rows, d), _ws90_layout((1, 1, rows, d), q.dtype))
                   for role, rows in (("q", cfg.block_m), ("k", cfg.block_n), ("v", cfg.block_n))}
    # O needs a unit last stride: a caller's out without one gets a contiguous buffer copied into it (plan.run).
    o_strides = out_strides if out_strides[3] == 1 else _contiguous_strides(out_shape)
    bias = _ws90_bias_ring(mask, m_strides, q.dtype, cfg, d) if code == 1 else None
    if bias is not None:
        block = (1, 1, cfg.block_m, cfg.block_n)
        descriptors["b_desc"] = DescriptorSpec("mask", block, _ws90_layout(block, q.dtype))
    tiles = _cdiv(sc["N_Q"], 2 * cfg.block_m) * sc["BATCH"] * sc["H_Q"]
    if cfg.grid == "ws90_persistent":
        tiles = min(tiles, torch.cuda.get_device_properties(q.device).multi_processor_count)
    grid = (tiles,)
    static = dict(stride_ob=o_strides[0], stride_oh=o_strides[1], stride_om=o_strides[2],
                  **_strides("m", m_strides, "bhmn"), BATCH=sc["BATCH"], H_Q=sc["H_Q"], GROUP=sc["GROUP"],
                  N_Q=sc["N_Q"], N_KV=sc["N_KV"], qk_scale=sc["sm_scale"] * math.log2(math.e), BLOCK_M=cfg.block_m,
                  BLOCK_N=cfg.block_n, HEAD_D=d, STAGES=cfg.num_stages, IS_CAUSAL=sc["IS_CAUSAL"], MASK_KIND=code,
                  BIAS_TMA=bias is not None, BIAS_STAGES=bias.stages if bias else 1,
                  BIAS_BCAST_B=bool(bias and bias.broadcast_batch), BIAS_BCAST_H=bool(bias and bias.broadcast_head),
                  num_warps=cfg.num_warps)
    roles = dict(Q_DESC="q_desc", K_DESC="k_desc", V_DESC="v_desc", O="out", LSE="lse", MASK="mask")
    if bias is not None:
        roles["B_DESC"] = "b_desc"
    else:
        static["B_DESC"] = None
    launch = PlannedLaunch(fns.fwd, grid, static, roles)
    return ForwardPlan(out_shape, lse_shape, {}, copies, True, descriptors, (launch,), via=_launch_direct,
                       copy=_for_descriptors, descriptor=_ws90_descriptor, unit_stride_out=True)


@dataclass(frozen=True)
class BiasRing:
    """How flash_ws90 streams an additive bias through TMA: ring depth per math warpgroup, and which of the bias's
    batch / head dimensions are broadcast (stride 0: the descriptor has size 1 there, the kernel reads index 0)."""

    stages: int
    broadcast_batch: bool
    broadcast_head: bool


def _ws90_bias_ring(mask: torch.Tensor, m_strides: tuple[Any, ...], dtype: torch.dtype, cfg: LaunchConfig,
                    head_dim: int) -> BiasRing | None:
    """The TMA ring for a (B, H, Nq, Nk) bias view, or None where flash_ws90 reads it by pointer loads: TMA takes
    a bias of q's 16-bit type with unit key stride, a positive 16-byte aligned row stride, batch and head strides
    that are 16-byte multiples or broadcast, a 16-byte aligned base, and a ring that fits shared memory beside
    the Q/K/V tiles (two stages where they fit, else one)."""
    from .render import ws90_bias_stages

    size = mask.element_size()
    row, key = m_strides[2], m_strides[3]
    if mask.dtype != dtype or key != 1 or not (_known_multiple(row * size, 16) and row != 0):
        return None
    if not all(s == 0 or _known_multiple(s * size, 16) for s in m_strides[:2]):
        return None
    if type(mask) is torch.Tensor and mask.data_ptr() % 16:
        return None
    stages = ws90_bias_stages(cfg.block_m, cfg.block_n, cfg.num_stages, head_dim)
    if stages == 0:
        return None
    return BiasRing(stages, m_strides[0] == 0, m_strides[1] == 0)


@functools.cache
def _ws90_layout(block: tuple[int, ...], dtype: torch.dtype) -> Any:
    from triton.experimental.gluon import language as gl

    element = gl.bfloat16 if dtype == torch.bfloat16 else gl.float16
    return gl.NVMMASharedLayout.get_default_for(list(block), element)


def _ws90_descriptor(t: torch.Tensor, spec: DescriptorSpec) -> Any:
    """A Gluon host TensorDescriptor over the whole 4-d ``t`` (Triton validates it: unit last stride, aligned).
    A broadcast dimension (stride 0, a bias's batch or head) becomes size 1 with the stride a contiguous tensor
    would have there (TMA strides are positive); the kernel reads it at index 0."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    shape, strides = list(t.shape), list(t.stride())
    for i in range(len(shape) - 2, -1, -1):
        if strides[i] == 0:
            shape[i], strides[i] = 1, strides[i + 1] * shape[i + 1]
    return TensorDescriptor(t, shape, strides, list(spec.block), spec.layout)


def _dq_accumulator(q: torch.Tensor, padded: bool) -> torch.Tensor:
    """The zeroed fp32 dq buffer of bwd_dq_atomic, shaped like q; ``padded``: rows of a multiple of 4 floats (TMA
    needs 16-byte row strides), returned as a view of the first D columns."""
    d = q.shape[3]
    width = _cdiv(d, 4) * 4 if padded else d
    acc = torch.zeros((*q.shape[:3], width), dtype=torch.float32, device=q.device)
    return acc[..., :d] if width != d else acc


def backward(fns: KernelFunctions, cfg: LaunchConfig, do: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, mask: torch.Tensor | None, *, scale: float | None,
             causal: bool, window: int, mask_kind: str, dq: torch.Tensor | None = None, dk: torch.Tensor | None = None,
             dv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the Triton backward: (dq, dk, dv) shaped like q, k, v (dk/dv summed over each GQA group)."""
    # fns.has_backward, spelled out so each kernel is narrowed to non-None below.
    preprocess_fn, dkdv_fn, dq_fn = fns.bwd_preprocess, fns.bwd_dkdv, fns.bwd_dq
    if preprocess_fn is None or dkdv_fn is None or dq_fn is None:
        raise RuntimeError("this kernel has no Triton backward entry point; use the recompute fallback")
    _check_qkv(q, k, v)
    check_mask_operand(mask_kind, mask, q, k, v)
    b, hq, nq = q.shape[0], q.shape[1], q.shape[2]
    hkv, nk = k.shape[1], k.shape[2]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format) if dq is None else dq
    dk = torch.empty_like(k, memory_format=torch.contiguous_format) if dk is None else dk
    dv = torch.empty_like(v, memory_format=torch.contiguous_format) if dv is None else dv
    if lse.dtype != torch.float32 or not lse.is_contiguous():
        raise ValueError(f"lse must be contiguous float32 (B, Hq, Nq); got {lse.dtype}, strides {lse.stride()}")
    delta = torch.empty((b, hq, nq), dtype=torch.float32, device=q.device)
    sc = _scalars(q, k, v, scale, causal, window, mask_kind)
    bm, bn = cfg.bwd_block_m, cfg.bwd_block_n
    _launch(preprocess_fn, (_cdiv(nq, bm), b * hq), O=o, DO=do, DELTA=delta, **_strides("o", o),
            **_strides("do", do), H_Q=hq, N_Q=nq, V_HEAD_DIM=sc["V_HEAD_DIM"], BLOCK_M=bm, BLOCK_DV=sc["BLOCK_DV"],
            num_warps=4, num_stages=1)
    if cfg.bwd_ws90 and fns.bwd_ws90 is not None and _fused_bwd_serves(q, k, v, mask_kind, sc):
        _backward_ws90(fns.bwd_ws90, do, q, k, v, lse, delta, dq, dk, dv, sc)
        return dq, dk, dv
    m, m_strides, code = mask_operand(q, mask, mask_kind, nk)
    even = cfg.even_fast_path
    args = dict(Q=q, K=k, V=v, DO=do, LSE=lse, DELTA=delta, MASK=m, DQ=dq, DK=dk, DV=dv,
                **_strides("q", q), **_strides("k", k, "bhnd"), **_strides("v", v, "bhnd"), **_strides("do", do),
                **_strides("m", m_strides, "bhmn"), **_strides("dq", dq), **_strides("dk", dk, "bhnd"),
                **_strides("dv", dv, "bhnd"), **sc, MASK_KIND=code, num_warps=cfg.bwd_num_warps,
                num_stages=cfg.bwd_num_stages)

    def tiles(tm: int, tn: int) -> dict[str, Any]:
        return dict(BLOCK_M=tm, BLOCK_N=tn, EVEN_M=even and _known_multiple(nq, tm),
                    EVEN_N=even and _known_multiple(nk, tn))

    if cfg.bwd_dq_atomic:
        # dk/dv's kernel adds every key tile's dq contribution into one fp32 buffer; no dq kernel.
        dq_acc = _dq_accumulator(q, padded=cfg.bwd_dq_tma)
        if cfg.bwd_dq_tma:
            import triton

            triton.set_allocator(_scratch)  # a context variable: set on every call, whichever thread launches
        _launch(dkdv_fn, (_cdiv(nk, bn), b * hkv), **{**args, "DQ": dq_acc, **_strides("dq", dq_acc)},
                **tiles(bm, bn))
        dq.copy_(dq_acc)
        return dq, dk, dv
    _launch(dkdv_fn, (_cdiv(nk, bn), b * hkv), **args, **tiles(bm, bn))
    dq_m, dq_n = (bn, bm) if cfg.bwd_dq_swap else (bm, bn)
    _launch(dq_fn, (_cdiv(nq, dq_m), b * hq), **args, **tiles(dq_m, dq_n))
    return dq, dk, dv


# The fused Gluon backward's tiles (templates/flash_ws90_bwd.py): 64-row query tiles, two math warpgroups of 64 keys.
WS90_BWD_BLOCK_M = 64
WS90_BWD_BLOCK_N = 64
WS90_BWD_STAGES = 2


def _fused_bwd_serves(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_kind: str, sc: dict[str, Any]) -> bool:
    """Whether this call is one the fused Gluon backward implements (render admits only such specs; a record's
    shape class can still hand the launcher a call outside them, which then takes the Triton backward)."""
    d = q.shape[3]
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and k.dtype == q.dtype and v.dtype == q.dtype
            and d in (64, 128) and k.shape[3] == d and v.shape[3] == d and mask_kind == "none"
            and not sc["HAS_WINDOW"])


def _backward_ws90(fn: TritonKernel, do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   lse: torch.Tensor, delta: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
                   sc: dict[str, Any]) -> None:
    """Launch the fused backward: descriptors over 16-byte-aligned q/k/v/dO (copies where a stride is not), dq
    accumulated in a zeroed contiguous fp32 buffer by TMA reduce-adds and cast into ``dq``; dk/dv written with unit
    last stride (a caller's buffer without one gets a contiguous one copied in)."""
    d = q.shape[3]
    q, k, v, do = (_for_descriptors(t, full_rank=True) for t in (q, k, v, do))
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk_out = dk if dk.stride(3) == 1 else torch.empty_like(dk, memory_format=torch.contiguous_format)
    dv_out = dv if dv.stride(3) == 1 else torch.empty_like(dv, memory_format=torch.contiguous_format)
    bm, bn = WS90_BWD_BLOCK_M, WS90_BWD_BLOCK_N
    grid = (_cdiv(sc["N_KV"], 2 * bn) * sc["BATCH"] * (sc["H_Q"] // sc["GROUP"]),)
    tiles = ((q, bm), (k, 2 * bn), (v, 2 * bn), (do, bm), (dq_acc, bm))
    fn[grid](*(ws90_bwd_descriptor(t, rows) for t, rows in tiles), lse, delta, dk_out, dv_out,
             *dk_out.stride()[:3], *dv_out.stride()[:3], sc["BATCH"], sc["H_Q"], sc["GROUP"], sc["N_Q"], sc["N_KV"],
             sc["sm_scale"] * math.log2(math.e), sc["sm_scale"], BLOCK_M=bm, BLOCK_N=bn, HEAD_D=d,
             STAGES=WS90_BWD_STAGES, IS_CAUSAL=sc["IS_CAUSAL"], num_warps=4)
    dq.copy_(dq_acc)
    if dk_out is not dk:
        dk.copy_(dk_out)
    if dv_out is not dv:
        dv.copy_(dv_out)


def ws90_bwd_descriptor(t: torch.Tensor, rows: int) -> Any:
    """A fused-backward descriptor over 4-d ``t``: tiles of ``rows`` x half the head dim, 16-bit operands in their
    default swizzle, the fp32 dq accumulator unswizzled (64 fp32 columns are 256 bytes, wider than any TMA swizzle
    span). The launch and benchmarks/probes/ptx_digest.py (which types the kernel's signature with it) share it."""
    block = (1, 1, rows, t.shape[3] // 2)
    return _ws90_descriptor(t, DescriptorSpec("", block, _fp32_unswizzled() if t.dtype == torch.float32
                                              else _ws90_layout(block, t.dtype)))


@functools.cache
def _fp32_unswizzled() -> Any:
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=4)
