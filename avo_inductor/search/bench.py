"""Timing helpers, the built-in attention baselines and the GPU peak table (shared by the evaluator and benchmarks).

GPU timing is ``triton.testing.do_bench`` (median, L2 flushed by do_bench before every call) over rotated input
buffers, candidate and baseline interleaved round by round in one process, so clock drift and thermal state hit
both alike. Decode specs (launch-bound: ~0.1 ms kernels behind a ~0.25 ms Python launcher) are instead timed as
CUDA-graph replays of the same number of calls for every fn, without an L2 flush between calls (their K/V
caches are far larger than L2; small ones favour candidate and baseline alike). On CPU (Triton interpreter)
timing is a wall-clock median of a few runs and informative only.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..kernels.reference import additive_mask
from ..spec import AttentionSpec, MaskKind

# Dense tensor-core peak (no sparsity), TFLOP/s, from NVIDIA datasheets; HBM bandwidth in TB/s.
# Matched by substring of torch.cuda.get_device_name(), first match wins (so "H100 PCIe" precedes "H100").
# fp32 means tf32 tensor cores (tl.dot's default on fp32). The CPU interpreter gets a generous 1 TFLOP/s cap:
# numpy on a few cores cannot beat that, so a higher claim on CPU means the harness was fooled.
PEAK_TABLE: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756.5, "float16": 756.5, "float32": 378.0, "hbm_tbs": 2.0}),
    ("H100 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 417.5, "hbm_tbs": 3.9}),
    ("H100", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7, "hbm_tbs": 3.35}),
    ("H200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7, "hbm_tbs": 4.8}),
    ("GH200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7, "hbm_tbs": 4.0}),
    ("B200", {"bfloat16": 2250.0, "float16": 2250.0, "float32": 1100.0, "hbm_tbs": 8.0}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0, "hbm_tbs": 2.039}),
    ("L40S", {"bfloat16": 362.05, "float16": 362.05, "float32": 183.0, "hbm_tbs": 0.864}),
    ("triton-interpreter", {"bfloat16": 1.0, "float16": 1.0, "float32": 1.0, "hbm_tbs": 0.1}),
    ("cpu", {"bfloat16": 1.0, "float16": 1.0, "float32": 1.0, "hbm_tbs": 0.1}),
)
# A Triton kernel more than 10% faster than cuDNN on the same shape is far more likely a timing artefact than a
# breakthrough (cuDNN ~570-617 TFLOP/s vs tuned Triton ~410-490 on the H100, see ANCHORS.md): re-measure it.
MAX_CUDNN_RATIO = 1.10


def peak_entry(device_name: str) -> dict[str, float] | None:
    """The peak-table row for ``device_name`` (substring match), or None for an unknown device."""
    for key, row in PEAK_TABLE:
        if key.lower() in device_name.lower():
            return row
    return None


def peak_tflops(device_name: str, dtype: str) -> float | None:
    row = peak_entry(device_name)
    return None if row is None else row.get(dtype)


@dataclass(frozen=True)
class Plausibility:
    """ok False: physically impossible (above the device peak). needs_remeasure: suspicious, time again."""

    ok: bool
    needs_remeasure: bool
    tflops: float
    peak_tflops: float | None
    cudnn_ratio: float | None
    message: str


def same_work_as_cudnn(spec: AttentionSpec) -> bool:
    """True when SDPA's cuDNN path does the same work as a flash kernel on ``spec`` (no mask, or plain causal).

    With a window, bias, padding or ALiBi, SDPA is handed a dense (Nq, Nk) mask: it reads it and skips no
    block, so a kernel several times faster is expected, not suspicious. Only the peak-rate bound applies there
    (on H100, a sliding-window kernel at 4.2x cuDNN was refused promotion as "implausible" before this rule)."""
    return not sdpa_needs_mask(spec)


def check_plausibility(flops: float, median_ms: float, device_name: str, dtype: str,
                       cudnn_ms: float | None = None) -> Plausibility:
    """Judge a measured time: a rate above the device's peak is rejected, > MAX_CUDNN_RATIO x cuDNN is flagged.

    ``flops`` must count useful work (``AttentionSpec.flops()``: attended pairs only), or a good sliding-window
    kernel would be charged for dense work and look impossible.
    """
    if not (median_ms > 0 and math.isfinite(median_ms)):
        return Plausibility(False, False, math.inf, None, None, f"non-positive or non-finite time {median_ms!r} ms")
    tflops = flops / (median_ms * 1e-3) / 1e12
    peak = peak_tflops(device_name, dtype)
    ratio = (cudnn_ms / median_ms) if cudnn_ms else None
    if peak is not None and tflops > peak:
        return Plausibility(False, False, tflops, peak, ratio,
                            f"claimed {tflops:.1f} TFLOP/s exceeds the {device_name} {dtype} peak of "
                            f"{peak:.1f} TFLOP/s")
    if ratio is not None and ratio > MAX_CUDNN_RATIO:
        return Plausibility(True, True, tflops, peak, ratio,
                            f"{ratio:.2f}x cuDNN on the same shape (> {MAX_CUDNN_RATIO}x): needs re-measurement")
    return Plausibility(True, False, tflops, peak, ratio, "")


@dataclass(frozen=True)
class Timing:
    """median_ms: median over rounds of each round's median. spread: (max - min) / median over rounds."""

    median_ms: float
    spread: float
    samples_ms: tuple[float, ...]
    method: str

    @classmethod
    def from_samples(cls, samples: Sequence[float], method: str) -> Timing:
        """The median and spread of per-round samples: what the timing worker reports and the parent recomputes."""
        med = statistics.median(samples)
        return cls(med, (max(samples) - min(samples)) / med if med > 0 else math.inf, tuple(samples), method)

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "spread": self.spread, "samples_ms": list(self.samples_ms),
                "method": self.method}


class Rotating:
    """Cycles through several argument sets so no timed call sees the buffers of the previous one.

    A kernel that caches its result keyed on pointer or shape gets stale answers (caught by correctness) and no
    timing benefit, and the inputs are not warm in L2 from the previous iteration.
    """

    def __init__(self, fn: Callable[..., Any], arg_sets: Sequence[Sequence[Any]]) -> None:
        if not arg_sets:
            raise ValueError("Rotating needs at least one argument set")
        self.fn, self.arg_sets, self.i = fn, list(arg_sets), 0

    def __call__(self) -> Any:
        args = self.arg_sets[self.i % len(self.arg_sets)]
        self.i += 1
        return self.fn(*args)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # device-wide: work on any stream is finished before the clock stops


def _wall_median_ms(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_interleaved(fns: Mapping[str, Callable[[], Any]], device: torch.device | str, *, rounds: int = 5,
                     rep_ms: int = 100, cpu_reps: int = 3, use_graphs: bool = False,
                     graphs: dict[str, CapturedCalls] | None = None) -> dict[str, Timing]:
    """Time every fn, interleaved: round r times fn_0, fn_1, ... (order alternating each round).

    GPU: each round is one ``do_bench(return_mode="median")``, or with ``use_graphs`` (decode, see
    ``graph_timed``) the median of CUDA-graph replays; ``graphs`` (a dict to fill) receives the captured graphs
    so the caller can check that a replay reproduces the outputs it timed. CPU: each round is a wall-clock
    median of ``cpu_reps`` calls. Returns name -> Timing; ``Timing.method`` says which method ran.
    """
    device = torch.device(device)
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    captured, method = capture_all(fns, device) if use_graphs and device.type == "cuda" else (None, "do_bench")
    if captured is not None:
        if graphs is not None:
            graphs.update(captured)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                samples[name].append(captured[name].median_ms_per_call(device))
    elif device.type == "cuda":
        import triton.testing

        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                samples[name].append(float(triton.testing.do_bench(fns[name], warmup=10, rep=rep_ms,
                                                                   return_mode="median")))
    else:
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                samples[name].append(_wall_median_ms(fns[name], device, cpu_reps))
        method = "wall"
    return {name: Timing.from_samples(vals, method) for name, vals in samples.items()}


def median_ci_ranks(n: int, alpha: float = 0.05) -> int:
    """k such that [x_(k), x_(n+1-k)] (1-based order statistics) covers the median of n samples with probability
    >= 1 - alpha, whatever their distribution (binomial(n, 1/2) tails); 1 (min and max) when n is too small."""
    if n < 1:
        raise ValueError(f"need at least one sample; got n={n}")
    k, tail = 1, 0.0
    while k < (n + 1) // 2:
        tail += math.comb(n, k - 1) / 2 ** n  # P(fewer than k samples below the median)
        if tail + math.comb(n, k) / 2 ** n > alpha / 2:
            break
        k += 1
    return k


def paired_spread(candidate: Timing, baseline: Timing, alpha: float = 0.05) -> float:
    """Relative half-width of a distribution-free confidence interval of the median per-round ratio
    baseline/candidate. ``time_interleaved`` times both in every round, back to back, so clock and thermal drift
    common to both cancel in the ratio: the figure says how well the speedup is known, not how much each fn's
    time wandered on its own (``Timing.spread``)."""
    ratios = sorted(b / c for c, b in zip(candidate.samples_ms, baseline.samples_ms, strict=True) if c > 0)
    if len(ratios) < 2:
        return math.inf
    k = median_ci_ranks(len(ratios), alpha)
    med = statistics.median(ratios)
    return max(med - ratios[k - 1], ratios[len(ratios) - k] - med) / med


GRAPH_CALLS = 16  # calls per captured graph, the same for every fn timed together


def graph_timed(spec: AttentionSpec) -> bool:
    """Decode specs are launch-bound: per-call event timing would charge the host's launch overhead (~0.25 ms for
    the Python launcher, far less for SDPA's C++ path) to the kernel. On an H100 that made every decode candidate
    look 0.15-0.43x SDPA, while a compiled model launches through Inductor."""
    return spec.is_decode


class CapturedCalls:
    """``calls`` back-to-back calls of ``fn`` recorded in one CUDA graph (its own memory pool), so timing its
    replay measures GPU work only, for candidate and baselines alike. ``replay()`` re-runs exactly that work."""

    def __init__(self, fn: Callable[[], Any], calls: int, device: torch.device) -> None:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        self.calls, self.graph = calls, torch.cuda.CUDAGraph()
        # The outer stream context restores the caller's stream even when capture_end raises (a fn that syncs).
        with torch.cuda.stream(side):
            # Warm-up outside the capture (compilation, allocator, per-input mask preparation): once per rotated
            # input set, so nothing but the timed work lands in the graph.
            for _ in range(max(2, len(getattr(fn, "arg_sets", ())))):
                fn()
            side.synchronize()
            with torch.cuda.graph(self.graph, stream=side):
                for _ in range(calls):
                    fn()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)

    def replay(self) -> None:
        self.graph.replay()

    def median_ms_per_call(self, device: torch.device, reps: int = 10) -> float:
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / self.calls)
        torch.cuda.synchronize(device)
        return statistics.median(times)


def capture_all(fns: Mapping[str, Callable[[], Any]],
                device: torch.device) -> tuple[dict[str, CapturedCalls] | None, str]:
    """(graphs, method): CUDA graphs of GRAPH_CALLS calls for every fn, or (None, why) when one of them cannot be
    captured (a baseline that syncs the host), in which case every fn is timed with do_bench instead: one method
    for all, so candidate and baselines stay comparable."""
    try:
        return {name: CapturedCalls(fn, GRAPH_CALLS, device) for name, fn in fns.items()}, "cuda_graph"
    except Exception as exc:
        torch.cuda.synchronize(device)
        return None, f"do_bench (graph capture failed: {type(exc).__name__}: {str(exc)[:120]})"


def wall_ms_per_call(fn: Callable[[], Any], device: torch.device | str, calls: int = 20) -> float:
    """Wall-clock ms per call over ``calls`` back-to-back calls with one device-wide sync at the end.

    Cross-check for event timing: work hidden on a side stream or thread shows up here, not in events.
    """
    device = torch.device(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3 / calls


# ---- built-in baselines -------------------------------------------------------------------------------------
# The one implementation of the built-in providers, shared by the evaluator (which picks the fastest as the
# baseline a candidate must beat) and benchmarks/attention.py. Each is what a user would write for the spec:
# SDPA gets is_causal for plain square causal and the materialised additive mask only when something is masked;
# FlexAttention gets causal / window / padding / bool as a block-mask mask_mod (so masked blocks are skipped),
# ALiBi as a score_mod from the (H,) slopes and a bias as a score_mod indexing the bias tensor (broadcast dims
# indexed at 0), never a dense (B, H, N, N) tensor it would have to read for every score.
# FlexAttention caveat: on CPU (torch 2.13) compiled flex gave run-to-run different, wrong outputs (even NaN) for
# lengths that are not a multiple of 32 (40, 200; 32/64/128/256 were right), cf. pytorch/pytorch#159247 (kv length
# not a multiple of the kv block size). Baseline outputs are not checked here, only timed; the CPU tests use
# multiples of 32.
SDPA_BACKENDS: dict[str, str | None] = {"sdpa": None, "sdpa_flash": "FLASH_ATTENTION",
                                        "sdpa_efficient": "EFFICIENT_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION"}
BUILTIN_NAMES: tuple[str, ...] = (*SDPA_BACKENDS, "flex")
# The fallback: what the compiled model runs at a site the store has no kernel for, and so what a kernel must beat
# to be stored (search/promotion.py). A miss keeps the user's SDPA call or rewrites hand-written attention to one
# (detect/rewrite.py rewrite_to_sdpa): SDPA with its default backend choice, is_causal for plain square causal,
# otherwise a mask covering window / padding / bool / bias / ALiBi: the "sdpa" provider above. Its mask is
# prepared once here, and additive; the rewrite passes a bool keep-mask where it can, which SDPA converts to this
# additive form on every call, so the fallback is charged no more than the model pays for it.
FALLBACK = "sdpa"
_MASK_CACHE = 4  # prepared masks kept per baseline fn (the evaluator rotates 2-3 input sets)

Fn3 = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def dense_mask(spec: AttentionSpec, mask: torch.Tensor | None, device: torch.device | str,
               dtype: torch.dtype | None = None, *, structural: bool = True) -> torch.Tensor | None:
    """The spec's mask (with ``structural``, also its causal/window part) as one additive tensor, or None.

    The reference's own mask builder: built in float32 and cast to ``dtype`` (default the spec dtype) at the end,
    so ALiBi distances stay exact in bf16. Broadcastable to (B, Hq, Nq, Nk); -inf = masked.
    """
    return additive_mask(spec.batch, spec.q_heads, spec.q_len, spec.kv_len, causal=spec.causal and structural,
                         window=spec.window if structural else None, mask_kind=spec.mask.value, mask=mask,
                         dtype=spec.torch_dtype if dtype is None else dtype, device=device)


def structure_free(spec: AttentionSpec) -> bool:
    """True when the causal / window flags restrict nothing (no flags, or one query row that sees every key)."""
    if not spec.causal and spec.window is None:
        return True
    return spec.q_len == 1 and spec.kv_len >= 1 and (spec.window is None or spec.window >= spec.kv_len)


def sdpa_uses_is_causal(spec: AttentionSpec) -> bool:
    """Plain square causal: SDPA's own is_causal (top-left aligned) is the spec's bottom-right causal."""
    return (spec.causal and spec.q_len == spec.kv_len and spec.window is None and spec.mask is MaskKind.NONE
            and not structure_free(spec))


def sdpa_needs_mask(spec: AttentionSpec) -> bool:
    """Whether SDPA must be given a materialised mask (anything but no mask / plain causal)."""
    return spec.mask is not MaskKind.NONE or not (structure_free(spec) or sdpa_uses_is_causal(spec))


def sdpa_call(spec: AttentionSpec, attn_mask: torch.Tensor | None, is_causal: bool, backend: str | None) -> Fn3:
    """fn(q, k, v) calling SDPA with this mask, the spec's scale and GQA, under ``backend`` (an SDPBackend name)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kwargs: dict[str, Any] = dict(attn_mask=attn_mask, is_causal=is_causal, scale=spec.effective_scale,
                                  enable_gqa=spec.q_heads != spec.kv_heads)
    forced = None if backend is None else getattr(SDPBackend, backend)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if forced is None:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
        with sdpa_kernel(forced):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
    return run


def sdpa_baseline(spec: AttentionSpec, mask: torch.Tensor | None, device: torch.device | str,
                  backend: str | None = None) -> Fn3:
    """SDPA as a user would call it: is_causal for plain causal, else the additive mask (built once, here)."""
    attn_mask = dense_mask(spec, mask, device) if sdpa_needs_mask(spec) else None
    return sdpa_call(spec, attn_mask, sdpa_uses_is_causal(spec), backend)


_COMPILED_FLEX: Any = None


FLEX_RECOMPILE_LIMIT = 256


def compiled_flex() -> Callable[..., torch.Tensor]:
    """torch.compile(flex_attention), made once per process (dynamo caches per shape / mod underneath).

    A campaign worker compiles it for every spec it times; past dynamo's default recompile limit (8) flex would
    silently run eagerly (slow, memory hungry) and drop out of the "best built-in", inflating speedups, so
    this process's limit is raised (evaluator workers and benchmark scripts only: the backend never calls this)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        import torch._dynamo.config as dynamo_config
        from torch.nn.attention.flex_attention import flex_attention

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(int(getattr(dynamo_config, name)), FLEX_RECOMPILE_LIMIT))
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    """A tensor broadcastable to (B, H, Nq, Nk) with its leading broadcast dims made explicit."""
    if t.dim() > 4:
        raise ValueError(f"mask must be broadcastable to (B, H, Nq, Nk); got shape {tuple(t.shape)}")
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def _index4(t: torch.Tensor, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
    """t[b, h, q_idx, kv_idx] with size-1 (broadcast) dims indexed at 0."""
    return t[b if t.shape[0] > 1 else 0, h if t.shape[1] > 1 else 0, q_idx if t.shape[2] > 1 else 0,
             kv_idx if t.shape[3] > 1 else 0]


def flex_baseline(spec: AttentionSpec, mask: torch.Tensor | None, device: torch.device | str,
                  compiled: bool = True) -> Fn3:
    """FlexAttention for ``spec``: causal / window / padding / bool as a block-mask mask_mod, ALiBi and bias as a
    score_mod; the block mask is built here (not in the timed call). ``compiled`` False: eager flex (debugging)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    kind, off, window, causal = spec.mask, spec.kv_len - spec.q_len, spec.window, spec.causal
    keep: torch.Tensor | None = None  # bool, 4-d broadcastable, for mask_mod
    bias: torch.Tensor | None = None
    slopes: torch.Tensor | None = None
    if mask is None:
        if kind is not MaskKind.NONE:
            raise ValueError(f"mask_kind={kind.value!r} needs a mask tensor")
    elif kind is MaskKind.PADDING:
        if mask.dim() != 2:
            raise ValueError(f"padding mask must be (B, Nk); got shape {tuple(mask.shape)}")
        keep = mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    elif kind is MaskKind.BOOL:
        keep = _as_4d(mask.to(device=device, dtype=torch.bool))
    elif kind is MaskKind.BIAS:
        bias = _as_4d(mask.to(device))
    elif kind is MaskKind.ALIBI:
        slopes = mask.to(device=device, dtype=torch.float32).reshape(-1)
        if slopes.numel() != spec.q_heads:
            raise ValueError(f"alibi slopes must be ({spec.q_heads},); got shape {tuple(mask.shape)}")

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        ok = kv_idx <= q_idx + off if causal or window is not None else kv_idx >= 0
        if window is not None:
            ok = ok & (kv_idx > q_idx + off - window)
        if keep is not None:
            ok = ok & _index4(keep, b, h, q_idx, kv_idx)
        return ok

    def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        if bias is not None:
            return score + _index4(bias, b, h, q_idx, kv_idx)
        assert slopes is not None  # score_mod is the mod only for bias and alibi
        return score - slopes[h] * (q_idx + off - kv_idx).abs()

    block_mask = None
    if keep is not None or not structure_free(spec):
        block_b = keep.shape[0] if keep is not None and keep.shape[0] > 1 else None
        block_h = keep.shape[1] if keep is not None and keep.shape[1] > 1 else None
        block_mask = create_block_mask(mask_mod, block_b, block_h, spec.q_len, spec.kv_len, device=device)
    flex: Callable[..., torch.Tensor] = flex_attention
    if compiled:
        flex = compiled_flex()
    mod = score_mod if kind in (MaskKind.BIAS, MaskKind.ALIBI) else None
    gqa = spec.q_heads != spec.kv_heads

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return flex(q, k, v, score_mod=mod, block_mask=block_mask, scale=spec.effective_scale, enable_gqa=gqa)
    return run


def builtin_baseline(name: str, spec: AttentionSpec, mask: torch.Tensor | None, device: torch.device | str) -> Fn3:
    """The built-in provider ``name`` (one of BUILTIN_NAMES) for ``spec`` and this mask tensor: fn(q, k, v).

    Mask preparation (dense mask, block mask) happens here, once. Nothing checks that the backend runs on this
    device or shape: a forced SDPA backend that cannot run raises when called.
    """
    if name == "flex":
        return flex_baseline(spec, mask, device)
    if name not in SDPA_BACKENDS:
        raise ValueError(f"unknown built-in baseline {name!r}; expected one of {BUILTIN_NAMES}")
    return sdpa_baseline(spec, mask, device, SDPA_BACKENDS[name])


def _per_mask(build: Callable[[torch.Tensor | None], Fn3]) -> Callable[..., torch.Tensor]:
    """fn(q, k, v, mask) over a builder of fn(q, k, v) for one mask: each mask tensor is prepared once.

    The evaluator calls baselines with rotating input sets, each with its own mask tensor; preparing the mask
    (materialising a dense mask, building a block mask) inside every timed call would charge the baseline for
    work a user does once. Prepared masks are keyed by the tensor itself (identity, held, plus its version
    counter, so an in-place edit re-prepares).
    """
    cache: list[tuple[torch.Tensor | None, int, Fn3]] = []

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        version = -1 if mask is None else mask._version
        for held, held_version, fn in cache:
            if held is mask and held_version == version:
                return fn(q, k, v)
        fn = build(mask)
        cache.append((mask, version, fn))
        del cache[:-_MASK_CACHE]
        return fn(q, k, v)
    return run


def baseline_fns(spec: AttentionSpec, device: torch.device | str,
                 names: Sequence[str] | None = None) -> dict[str, Callable[..., torch.Tensor]]:
    """Built-in attention implementations for ``spec``: name -> fn(q, k, v, mask) -> out (B, Hq, Nq, Dv).

    ``names`` None: on CUDA SDPA default / flash / efficient / cudnn and FlexAttention, on CPU the SDPA default
    only (compiled flex on CPU costs seconds of C++ compile per spec and says nothing about a GPU). Availability
    is not checked here: :func:`available_baselines` runs each once.
    """
    device = torch.device(device)
    if names is None:
        names = BUILTIN_NAMES if device.type == "cuda" else ("sdpa",)
    unknown = [n for n in names if n not in BUILTIN_NAMES]
    if unknown:
        raise ValueError(f"unknown built-in baseline(s) {unknown}; expected some of {BUILTIN_NAMES}")

    def builder(name: str) -> Callable[[torch.Tensor | None], Fn3]:
        return lambda m: builtin_baseline(name, spec, m, device)
    return {n: _per_mask(builder(n)) for n in names}


def timing_inputs(spec: AttentionSpec, seeds: Sequence[int],
                  device: torch.device | str) -> tuple[list[Any], list[Any] | None]:
    """The rotated input sets the search times a spec over (one per seed), and the upstream gradients of a training
    spec (None for forward-only): the evaluator's timing worker and the timing probes draw the same inputs."""
    from ..check.cases import case_grad_output, case_inputs

    sets = [case_inputs(spec, s, device) for s in seeds]
    dos = [case_grad_output(spec, s, device) for s in seeds] if spec.needs_grad else None
    return sets, dos


def baseline_args(sets: Sequence[Any], dos: Sequence[Any] | None) -> list[tuple[Any, ...]]:
    """A built-in baseline's call arguments per input set: (q, k, v, mask), or for training fresh grad-requiring
    leaves and the upstream gradient (q, k, v, mask, do), as ``training_step`` takes them."""
    if dos is None:
        return [(x.q, x.k, x.v, x.mask) for x in sets]
    leaves = [[t.detach().requires_grad_(True) for t in (x.q, x.k, x.v)] for x in sets]
    return [(*qkv, x.mask, do) for qkv, x, do in zip(leaves, sets, dos, strict=True)]


def training_step(fn: Callable[..., torch.Tensor]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``fn(q, k, v, mask) -> out`` as a training step runs it: ``step(q, k, v, mask, do) -> (dq, dk, dv)``, the
    forward and its autograd backward (q, k, v must require grad). ``autograd.grad`` returns fresh gradients
    instead of accumulating into ``.grad``, so every call does the same work."""
    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
             do: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(fn(q, k, v, mask), (q, k, v), do)
    return step


def available_baselines(spec: AttentionSpec, device: torch.device | str, q: torch.Tensor, k: torch.Tensor,
                        v: torch.Tensor, mask: torch.Tensor | None, names: Sequence[str] | None = None, *,
                        do: torch.Tensor | None = None) -> dict[str, Callable[..., Any]]:
    """The baselines that run on this device for this spec (each called once; failures dropped). With ``do``
    (training specs; q, k, v requiring grad) they are ``training_step`` functions and must also run backward."""
    ok = {}
    for name, fn in baseline_fns(spec, device, names).items():
        call = fn if do is None else training_step(fn)
        try:
            call(q, k, v, mask) if do is None else call(q, k, v, mask, do)
            _sync(torch.device(device))
            ok[name] = call
        except Exception:  # a backend that does not support this shape/device is simply not a baseline
            continue
    return ok
