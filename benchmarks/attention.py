"""Kernel level: avo attention vs SDPA (default/cuDNN, flash, efficient, dense mask), FlexAttention and Inductor's
own fusion of hand-written attention, side by side in one process on one GPU (issue 7).

Per spec: TFLOP/s from analytic FLOPs of useful work (causal / window count attended pairs only), each provider
timed with do_bench (median, L2 flushed); speedups are time ratios avo vs each provider. avo's output is checked
against a float64 reference (batch 0, first GQA group) before its time counts toward a target. avo runs what
``torch.compile(backend="avo")`` would run: the store's tuned record when there is one ("avo", kernel id and store
layer printed), else the plain untuned template ("avo-untuned"), timed under torch.compile on CUDA (the kernel
inlined, as the backend does; the eager op's time is kept as "avo-eager"). A provider that cannot run a spec
gives an "n/a: reason" cell; the run goes on.
Decode rows (q_len <= 16) add the HBM floor: bytes(Q+K+V+O) / copy bandwidth measured in this run, and every
provider on them is timed as CUDA-graph replays (launch overhead would otherwise be most of the time); the
"timing" column says which method a row used.
Specs: the package's spec text (``avo_inductor.spec.parse_spec_text``), ";"-separated; the suites use its comma-row
form "B,H,HKV,N,D,mask" or "B,H,HKV,NQ,NK,D,mask", mask none|causal|bias|padding|alibi|windowW (causal sliding
window), optional ",train" = forward + backward; --dtype / --train fill what a spec leaves out. Suite issue7 =
core + masked + decode + two training specs: one invocation gives the whole table, then the targets table last.
Usage: python -m benchmarks.attention [--suite issue7|issue4|core|masked|decode|train7|all] [--specs "..."] [--train]
         [--providers a,b] [--quick] [--deadline-s S] [--avo-mode auto|compiled|eager] [--template T] [--out DIR]
         [--stem NAME]
Writes <out>/<stem>.csv and <stem>.png (default out benchmarks/results/<gpu>/) and <out>/targets.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avo_inductor import kernel_for
from avo_inductor.search import bench
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind, parse_spec_text

from .common import (
    RESULTS,
    Panel,
    bar_panels,
    gpu_slug,
    print_table,
    time_ms,
    write_csv,
)
from .targets import evaluate_targets

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SUITES = {
    "issue4": "4,32,32,4096,128,none;4,32,32,4096,128,causal;8,16,16,2048,64,none;8,16,16,2048,64,causal;"
              "4,32,32,4096,128,bias",
    "core": "4,32,32,1024,128,none;4,32,32,4096,128,none;2,32,32,8192,128,none;4,32,32,4096,128,causal;"
            "2,32,32,8192,128,causal;4,32,8,4096,128,causal;8,16,16,2048,64,none;8,16,16,2048,64,causal;"
            "16,12,12,1024,64,causal",
    "masked": "4,32,32,4096,128,bias;8,16,16,2048,64,padding;4,32,32,4096,128,window1024;8,16,16,2048,64,alibi",
    "decode": "8,32,8,1,8192,128,none;1,32,8,1,32768,128,none;32,32,8,1,4096,128,none",
    "train7": "4,32,32,4096,128,causal,train;8,16,16,2048,64,causal,train",
}
SUITES["all"] = ";".join(SUITES[k] for k in ("core", "masked", "decode"))
SUITES["issue7"] = ";".join(SUITES[k] for k in ("core", "masked", "decode", "train7"))
PROVIDERS = ("sdpa-default", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "sdpa-dense-mask", "flex", "inductor")
SDPA_REFERENCES = ("sdpa-default", "sdpa-cudnn", "sdpa-efficient", "sdpa-dense-mask", "sdpa-flash")
SPEEDUP_PLOTTED = ("sdpa-default", "sdpa-dense-mask", "flex", "inductor")  # the targets' baselines (+ Inductor)
NA_CHARS = 120  # length of an "n/a: reason" cell in the CSV (the printed table truncates further)


# ---- specs --------------------------------------------------------------------------------------------------
def case_key(spec: AttentionSpec) -> str:
    """Canonical "B,H,HKV,NQ,NK,D,mask" (no dtype, no mode): what targets.py names its cases by."""
    if spec.window is not None:
        mask = f"window{spec.window}"
    elif spec.mask is not MaskKind.NONE:
        mask = spec.mask.value
    else:
        mask = "causal" if spec.causal else "none"
    return f"{spec.batch},{spec.q_heads},{spec.kv_heads},{spec.q_len},{spec.kv_len},{spec.head_dim},{mask}"


def section(spec: AttentionSpec) -> str:
    """Which panel of the plot (and which target family) a spec belongs to."""
    if spec.needs_grad:
        return "train"
    if spec.is_decode:
        return "decode"
    return "masked" if spec.window is not None or spec.mask is not MaskKind.NONE else "dense"


def parse_specs(text: str, dtype: str, train: bool) -> list[AttentionSpec]:
    """";"-separated spec texts; ``dtype`` / ``train`` for the specs that do not say."""
    return [parse_spec_text(s, dtype=dtype, needs_grad=train) for s in text.split(";") if s.strip()]


# ---- avo: what backend="avo" would run ----------------------------------------------------------------------
@dataclass(frozen=True)
class AvoChoice:
    """The kernel avo runs for a spec. label "avo" = tuned record from the store, "avo-untuned" = plain template."""

    label: str
    kernel_id: str
    layer: str
    tuned_for: str
    note: str = ""

    def describe(self) -> str:
        if self.label == "avo":
            return f"avo: tuned kernel {self.kernel_id} from {self.layer} (record {self.tuned_for}) {self.note}".strip()
        return f"avo-untuned: template kernel {self.kernel_id} ({self.note or 'store miss'})"


def resolve_avo(spec: AttentionSpec, device: torch.device, template: str | None = None) -> AvoChoice:
    """What the backend would run (the store's record, verified on first use, through ``kernel_for``), else the
    untuned template, so the benchmark times what users get; ``template`` pins the untuned template family of a
    store miss (A/B of the defaults)."""
    handle = kernel_for(spec, source="auto", device=device, template=template)
    if handle.source == "store":
        return AvoChoice("avo", handle.kernel_id, handle.layer, handle.record.spec.cache_key())
    return AvoChoice("avo-untuned", handle.kernel_id, "template", "-", handle.note or "store miss")


def avo_fn(spec: AttentionSpec, choice: AvoChoice, mask: torch.Tensor | None) -> Fn:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.avo.attention(q, k, v, mask, choice.kernel_id, spec.effective_scale, spec.causal,
                                       spec.window or 0, spec.mask.value)
    return run


# ---- the other providers ------------------------------------------------------------------------------------
# SDPA (each backend) and FlexAttention are the package's own built-in baselines (avo_inductor.search.bench), the
# same ones the search's evaluator times candidates against; only the benchmark-only columns live here.
BUILTIN = {"sdpa-default": "sdpa", "sdpa-cudnn": "sdpa_cudnn", "sdpa-flash": "sdpa_flash",
           "sdpa-efficient": "sdpa_efficient", "flex": "flex"}  # column -> avo_inductor.search.bench name


def builtin_provider(name: str, spec: AttentionSpec, inputs: Any) -> Fn:
    """A built-in provider (column ``name`` of BUILTIN) as fn(q, k, v), its mask prepared once, here."""
    return bench.builtin_baseline(BUILTIN[name], spec, inputs.mask, inputs.q.device)


def sdpa_dense_mask_provider(spec: AttentionSpec, inputs: Any) -> Fn | None:
    """SDPA given the materialised boolean keep-mask (no block skipping): the sliding-window target's baseline.

    Only for window specs (elsewhere it would duplicate sdpa-default at the cost of GPU minutes). Bias / ALiBi
    cannot be a boolean mask; they are passed additive.
    """
    if spec.window is None:
        return None
    additive = bench.dense_mask(spec, inputs.mask, inputs.q.device)
    scored = spec.mask in (MaskKind.BIAS, MaskKind.ALIBI)
    return bench.sdpa_call(spec, additive if scored else torch.isfinite(additive), False, None)


def inductor_provider(spec: AttentionSpec, inputs: Any) -> Fn:
    """Hand-written attention under backend="inductor": what users get today without avo."""
    mask = bench.dense_mask(spec, inputs.mask, inputs.q.device, torch.float32)
    rep = spec.q_heads // spec.kv_heads

    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-2, -1)).float() * spec.effective_scale
        if mask is not None:
            s = s + mask
        return torch.softmax(s, -1).to(q.dtype) @ v

    return torch.compile(attn, backend="inductor", dynamic=False)


def provider_builders(spec: AttentionSpec, inputs: Any) -> dict[str, Callable[[], Fn | None]]:
    """name -> builder; a builder is called inside the provider's own try, so building may fail per provider."""
    builders: dict[str, Callable[[], Fn | None]] = {
        name: (lambda name=name: builtin_provider(name, spec, inputs)) for name in BUILTIN}
    builders["sdpa-dense-mask"] = lambda: sdpa_dense_mask_provider(spec, inputs)
    builders["inductor"] = lambda: inductor_provider(spec, inputs)
    return {name: builders[name] for name in PROVIDERS}


# ---- measuring ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """do_bench budget per provider: small enough that ~18 specs x 8 providers fit one GPU call."""

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    graph: bool = False  # CUDA-graph replays (decode rows, every provider alike) instead of do_bench


@dataclass(frozen=True)
class Tensors:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor | None  # output gradient in train mode


def run_once(fn: Fn, t: Tensors) -> torch.Tensor:
    """Forward, plus backward in train mode (autograd.grad: no .grad accumulation kernels in the timing)."""
    out = fn(t.q, t.k, t.v)
    if t.do is not None:
        torch.autograd.grad(out, (t.q, t.k, t.v), t.do)
    return out


def na(exc: BaseException) -> str:
    """The cell text of a provider that failed: short enough for a CSV cell, specific enough to act on."""
    text = " ".join(str(exc).split())
    return f"n/a: {type(exc).__name__}: {text}"[:NA_CHARS]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(name: str, build: Callable[[], Fn | None], t: Tensors, flops: float,
            timing: Timing) -> tuple[dict[str, Any], torch.Tensor | None]:
    """One provider's cells and its output; a failure becomes an "n/a: reason" cell, never an exception."""
    try:
        fn = build()
        if fn is None:
            return {}, None
        out = run_once(fn, t).detach()
        ms = time_ms(lambda: run_once(fn, t), warmup_ms=timing.warmup_ms, rep_ms=timing.rep_ms, graph=timing.graph)
        return {f"{name} TFLOP/s": flops / ms * 1e-9, f"{name} ms": ms}, out
    except Exception as exc:  # noqa: BLE001 - any provider failure is a cell, not the end of the run
        free_memory()
        return {f"{name} TFLOP/s": na(exc), f"{name} ms": None}, None


def measure_avo(label: str, eager: Fn, t: Tensors, flops: float, timing: Timing,
                compiled: bool) -> tuple[dict[str, Any], torch.Tensor | None]:
    """avo's headline cells, timed as backend="avo" runs it: the op under torch.compile, kernel inlined.

    Called eagerly the op pays ~0.2-0.3 ms of Python launch per call on the H100, which dominated decode and
    small specs (decode B1 N32768: 0.53 ms eager vs 0.13 ms compiled), so the eager time ("avo-eager") is kept
    as a column but is not the headline. Without CUDA (interpreter: nothing to inline) the op runs eagerly.
    """
    if not compiled:
        cells, out = measure(label, lambda: eager, t, flops, timing)
        return {**cells, "avo mode": "eager"}, out
    cells, out = measure(label, lambda: torch.compile(eager, backend="inductor", dynamic=False), t, flops, timing)
    eager_cells, eager_out = measure("avo-eager", lambda: eager, t, flops, timing)
    if out is None:  # compiling failed: the eager op is what a user would be left with
        reason = cells[f"{label} TFLOP/s"]
        cells = {f"{label} TFLOP/s": eager_cells["avo-eager TFLOP/s"], f"{label} ms": eager_cells["avo-eager ms"]}
        return {**cells, **eager_cells, "avo mode": "eager (compile failed)", "avo compile error": reason}, eager_out
    return {**cells, **eager_cells, "avo mode": "compiled"}, out


def max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max |out - ref| over entries where ref is finite (SDPA gives NaN for fully masked rows, avo 0)."""
    finite = torch.isfinite(ref)
    diff = (out.double() - ref.double())[finite].abs()
    return float(diff.max()) if diff.numel() else 0.0


def reference_slice(spec: AttentionSpec, inputs: Any) -> tuple[torch.Tensor, int]:
    """Float64 reference for batch 0 and the first GQA group (q heads sharing kv head 0): cheap at any N."""
    from avo_inductor.kernels.reference import attention_reference

    g, mask = spec.gqa_group, inputs.mask
    if mask is not None:
        mask = mask[:g] if spec.mask is MaskKind.ALIBI else mask[:1, :g] if mask.dim() == 4 else mask[:1]
    ref = attention_reference(inputs.q[:1, :g], inputs.k[:1, :1], inputs.v[:1, :1], scale=spec.effective_scale,
                              causal=spec.causal, window=spec.window, mask_kind=spec.mask.value, mask=mask)
    return ref, g


def check_avo(avo_out: torch.Tensor, spec: AttentionSpec, inputs: Any) -> tuple[float, bool]:
    """avo's output on the reference slice vs float64, within the dtype's tolerance (the contract's check).

    Against float64, not SDPA: a baseline can be wrong too (SDPA given a bf16-built ALiBi bias was, by 2.9).
    """
    from avo_inductor.kernels.reference import tolerance

    ref, g = reference_slice(spec, inputs)
    out = avo_out[:1, :g].double()
    atol, rtol = tolerance(spec.torch_dtype)
    ok = bool(((out - ref).abs() <= atol + rtol * ref.abs()).all())
    return max_error(out, ref), ok


def copy_bandwidth(device: torch.device, nbytes: int, timing: Timing) -> float:
    """Device copy bandwidth in bytes/s: a large copy_ timed like the kernels; read + write = 2 x bytes."""
    n = max(nbytes // 4, 1)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup_ms=timing.warmup_ms, rep_ms=timing.rep_ms)
    return 2 * n * 4 / (ms * 1e-3)


def hbm_bytes(spec: AttentionSpec) -> int:
    """Bytes a decode step must move at least once: Q + K + V + O (K/V at kv_heads: GQA reads them once)."""
    elt = torch.empty((), dtype=spec.torch_dtype).element_size()
    q = spec.batch * spec.q_heads * spec.q_len * (spec.head_dim + spec.v_head_dim)  # Q read + O written
    kv = spec.batch * spec.kv_heads * spec.kv_len * (spec.head_dim + spec.v_head_dim)
    return (q + kv) * elt


def floor_cells(spec: AttentionSpec, bandwidth: float | None, avo_ms: float | None) -> dict[str, Any]:
    """Decode rows: the HBM floor and avo's time over it (the decode target: <= 1.15)."""
    if not spec.is_decode:
        return {}
    if not bandwidth:
        return {"hbm-floor ms": None, "hbm-floor TFLOP/s": "n/a: copy bandwidth not measured"}
    floor_ms = hbm_bytes(spec) / bandwidth * 1e3
    cells: dict[str, Any] = {"hbm-floor ms": floor_ms, "hbm-floor TFLOP/s": spec.flops() / floor_ms * 1e-9,
                             "copy GB/s": bandwidth / 1e9}
    if avo_ms:
        cells["avo time / hbm floor"] = avo_ms / floor_ms
    return cells


def speedups(row: dict[str, Any], avo_label: str, names: Sequence[str]) -> dict[str, float]:
    """avo/<provider> = provider time / avo time (> 1: avo faster), for every provider that ran."""
    avo_ms = row.get(f"{avo_label} ms")
    if not avo_ms:
        return {}
    return {f"avo/{n}": row[f"{n} ms"] / avo_ms for n in names if row.get(f"{n} ms")}


def base_row(spec: AttentionSpec) -> dict[str, Any]:
    return {"case": case_key(spec), "mode": "train" if spec.needs_grad else "fwd", "section": section(spec),
            "spec": spec.short()}


def make_tensors(spec: AttentionSpec, device: torch.device) -> tuple[Any, Tensors]:
    from avo_inductor.kernels.reference import make_inputs

    inputs = make_inputs(spec, device=device, seed=0)
    train = spec.needs_grad
    q, k, v = (x.detach().requires_grad_(train) for x in (inputs.q, inputs.k, inputs.v))
    do = torch.randn_like(inputs.q[..., : spec.v_head_dim]) if train else None
    return inputs, Tensors(q, k, v, do)


def bench_spec(spec: AttentionSpec, providers: Sequence[str], timing: Timing,
               bandwidth: float | None = None, compiled: bool = False, template: str | None = None) -> dict[str, Any]:
    """One spec: avo first, then every provider, the correctness check, speedups and (decode) the HBM floor."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch._dynamo.reset()
    # Decode is launch-bound: time every provider as CUDA-graph replays, as the search does (bench.graph_timed).
    timing = dataclasses.replace(timing, graph=bench.graph_timed(spec) and device.type == "cuda")
    row = {**base_row(spec), "timing": "cuda_graph" if timing.graph else ("do_bench" if device.type == "cuda" else "wall")}
    inputs, t = make_tensors(spec, device)
    flops = spec.flops(backward=spec.needs_grad)
    try:
        choice = resolve_avo(spec, device, template)
    except Exception as exc:  # noqa: BLE001 - no avo kernel at all is still a row
        choice = AvoChoice("avo", "-", "-", "-", na(exc))
    print(f"  {choice.describe()}", flush=True)
    row.update({"avo kernel": choice.label, "avo kernel id": choice.kernel_id, "avo layer": choice.layer,
                "avo record": choice.tuned_for})
    if choice.kernel_id == "-":
        cells, avo_out = {f"{choice.label} TFLOP/s": choice.note, f"{choice.label} ms": None, "avo mode": "-"}, None
    else:
        cells, avo_out = measure_avo(choice.label, avo_fn(spec, choice, inputs.mask), t, flops, timing, compiled)
    row.update(cells)
    ref, ref_name = None, None
    for name in providers:
        cells, out = measure(name, provider_builders(spec, inputs)[name], t, flops, timing)
        row.update(cells)
        if ref is None and out is not None and name in SDPA_REFERENCES:
            ref, ref_name = out, name
        del out
    row.update(correctness_cells(avo_out, ref, ref_name, spec, inputs))
    row.update(speedups(row, choice.label, providers))
    row.update(floor_cells(spec, bandwidth, row.get(f"{choice.label} ms")))
    del inputs, t, avo_out, ref
    free_memory()
    return row


def correctness_cells(avo_out: torch.Tensor | None, ref: torch.Tensor | None, ref_name: str | None,
                      spec: AttentionSpec, inputs: Any) -> dict[str, Any]:
    """avo ok (vs float64 on a slice) and max errors vs float64 and vs the first SDPA variant that ran.

    A failed check is reported, not raised: the targets then count the spec as not met (N/A), never as PASS.
    """
    if avo_out is None:
        return {"avo ok": None}
    try:
        err, ok = check_avo(avo_out, spec, inputs)
    except Exception as exc:  # noqa: BLE001 - e.g. OOM on the reference: unchecked, not a crash
        return {"avo ok": None, "avo max|err| vs f64": na(exc)}
    cells: dict[str, Any] = {"avo ok": ok, "avo max|err| vs f64": err}
    if ref is not None:
        cells.update({"avo max|err| vs sdpa": max_error(avo_out, ref), "sdpa ref": ref_name})
    return cells


# ---- the run ------------------------------------------------------------------------------------------------
def skipped_row(spec: AttentionSpec, reason: str) -> dict[str, Any]:
    return {**base_row(spec), "avo kernel": f"n/a: {reason}"}


def run_specs(specs: Sequence[AttentionSpec], providers: Sequence[str], timing: Timing, bandwidth: float | None,
              deadline_s: float | None, on_row: Callable[[list[dict[str, Any]]], None],
              compiled: bool = False, template: str | None = None) -> list[dict[str, Any]]:
    """Every spec in turn; a spec that crashes as a whole, or starts past the deadline, is still a row."""
    start, rows = time.monotonic(), []
    for spec in specs:
        elapsed = time.monotonic() - start
        print(f"[{elapsed:6.1f}s] {spec.short()}", flush=True)
        if deadline_s is not None and elapsed >= deadline_s:
            rows.append(skipped_row(spec, f"skipped, deadline {deadline_s:.0f}s passed"))
        else:
            try:
                rows.append(bench_spec(spec, providers, timing, bandwidth, compiled, template))
            except Exception as exc:  # noqa: BLE001 - e.g. OOM making inputs: this spec only
                free_memory()
                rows.append(skipped_row(spec, na(exc)[5:]))
        print("  " + compact(rows[-1]), flush=True)
        on_row(rows)
    return rows


def compact(row: dict[str, Any]) -> str:
    """One log line per spec: times and speedups, so a cut-off run still shows what it measured."""
    keep = {k: v for k, v in row.items() if k.endswith(("TFLOP/s", "floor")) or k.startswith("avo/")
            or k in ("avo ok",)}
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())


def warm_up(seconds: float = 1.0) -> None:
    """Matmuls for about a second so the first spec is not timed on a GPU still ramping its clocks."""
    if not torch.cuda.is_available():
        return
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
    del a
    free_memory()


def measure_bandwidth(specs: Sequence[AttentionSpec], quick: bool, timing: Timing) -> float | None:
    """Copy bandwidth for the decode floor, only when a decode spec is in the run (1 GiB on a GPU, past any L2)."""
    if not any(s.is_decode for s in specs):
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nbytes = (256 if quick else 1024) * 2**20 if device.type == "cuda" else 8 * 2**20
    try:
        bw = copy_bandwidth(device, nbytes, timing)
    except Exception as exc:  # noqa: BLE001 - no floor, decode targets become N/A
        print(f"copy bandwidth: {na(exc)}")
        return None
    finally:
        free_memory()
    print(f"copy bandwidth: {bw / 1e9:.1f} GB/s ({nbytes / 2**20:.0f} MiB copy_)", flush=True)
    return bw


def provider_names(rows: Sequence[dict[str, Any]], providers: Sequence[str]) -> list[str]:
    """avo label(s) that occur, then the providers, then the floor: the column/series order everywhere."""
    labels = [n for n in ("avo", "avo-untuned") if any(r.get("avo kernel") == n for r in rows)]
    return labels + list(providers) + ["hbm-floor"]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def plot_panels(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[Panel]:
    """One TFLOP/s panel per section (decode in microseconds, with the HBM floor), then avo's speedups."""
    panels = []
    titles = {"dense": "dense forward", "masked": "masked forward", "train": "forward + backward",
              "decode": "decode (q_len 1)"}
    for sec, title in titles.items():
        sub = [r for r in rows if r.get("section") == sec]
        if not sub:
            continue
        if sec == "decode":
            series = {n: [(_num(r.get(f"{n} ms")) or 0) * 1e3 or None for r in sub] for n in names}
            ylabel = "microseconds (lower is better)"
        else:
            series = {n: [_num(r.get(f"{n} TFLOP/s")) for r in sub] for n in names if n != "hbm-floor"}
            ylabel = "TFLOP/s"
        series = {n: v for n, v in series.items() if any(v)}
        if series:
            panels.append(Panel(title, [r["spec"] for r in sub], series, ylabel))
    spd = {f"avo/{n}": [_num(r.get(f"avo/{n}")) for r in rows] for n in SPEEDUP_PLOTTED if n in names}
    spd = {n: v for n, v in spd.items() if any(v)}
    if spd:
        panels.append(Panel("avo speedup (time ratio)", [r["spec"] for r in rows], spd, "x", hline=1.0))
    return panels


def summary_columns(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    cols = ["spec", "avo kernel", "avo kernel id", "avo mode"] + [f"{n} TFLOP/s" for n in names if n != "hbm-floor"]
    cols += ["avo/sdpa-default", "avo/sdpa-cudnn", "avo/sdpa-dense-mask", "avo/flex", "avo/inductor",
             "avo-eager ms", "hbm-floor ms", "avo time / hbm floor", "avo ok", "avo max|err| vs f64", "avo max|err| vs sdpa"]
    return [c for c in cols if any(r.get(c) is not None for r in rows)]


def default_stem(suite: str, specs: str | None, train: bool) -> str:
    """issue4 keeps its historical name (attention.csv); other suites are named after themselves."""
    stem = "attention-custom" if specs else ("attention" if suite == "issue4" else f"attention-{suite}")
    return stem + ("-train" if train else "")


def write_outputs(out: Path, stem: str, rows: list[dict[str, Any]], providers: Sequence[str],
                  final: bool) -> list[dict[str, Any]]:
    """CSV after every spec (a cut-off run keeps its rows); plot and targets.csv at the end. Returns the targets."""
    write_csv(out / f"{stem}.csv", rows)
    if not final:
        return []
    names = provider_names(rows, providers)
    bar_panels(out / f"{stem}.png", plot_panels(rows, names), f"attention, avo vs built-ins ({gpu_slug()})")
    targets = evaluate_targets(rows)
    if targets:
        write_csv(out / "targets.csv", targets)
    return targets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="issue4", choices=sorted(SUITES))
    parser.add_argument("--specs", default=None, help="';'-separated specs, overrides --suite")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--train", action="store_true", help="time forward + backward for every spec")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help=f"subset of {','.join(PROVIDERS)}")
    parser.add_argument("--quick", action="store_true", help="short do_bench (warmup 5 ms, rep 20 ms): smoke runs")
    parser.add_argument("--warmup-ms", type=float, default=None)
    parser.add_argument("--rep-ms", type=float, default=None)
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="start no new spec after this many seconds (rows say skipped); outputs still written")
    parser.add_argument("--avo-mode", default="auto", choices=("auto", "compiled", "eager"),
                        help="how avo is timed: under torch.compile (auto on CUDA) or the op called eagerly")
    parser.add_argument("--template", default=None, help="untuned template of a store miss (default: the "
                        "hardware's default per spec), e.g. flash_ws90 for an A/B of the defaults")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--stem", default=None, help="output file stem (default from the suite)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.providers.split(",") if p and p not in PROVIDERS]
    if unknown:
        parser.error(f"unknown provider(s) {unknown}; choose from {', '.join(PROVIDERS)}")
    return args


def main(argv: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run, write <stem>.csv/.png and targets.csv, print the results table and the targets table last."""
    args = parse_args(argv)
    specs = parse_specs(args.specs or SUITES[args.suite], args.dtype, args.train)
    providers = [p for p in args.providers.split(",") if p]
    base = Timing(5.0, 20.0) if args.quick else Timing()
    timing = Timing(args.warmup_ms or base.warmup_ms, args.rep_ms or base.rep_ms)
    out, stem = args.out or RESULTS / gpu_slug(), args.stem or default_stem(args.suite, args.specs, args.train)
    compiled = args.avo_mode == "compiled" or (args.avo_mode == "auto" and torch.cuda.is_available())
    import triton

    print(f"device {HardwareKey.current().slug}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{len(specs)} specs, providers {providers}, do_bench warmup {timing.warmup_ms} ms rep {timing.rep_ms} ms, "
          f"avo timed {'under torch.compile' if compiled else 'eagerly'}")
    warm_up()
    bandwidth = measure_bandwidth(specs, args.quick, timing)
    rows = run_specs(specs, providers, timing, bandwidth, args.deadline_s,
                     lambda rs: write_outputs(out, stem, rs, providers, final=False), compiled, args.template)
    targets = write_outputs(out, stem, rows, providers, final=True)
    print()
    print_table(rows, summary_columns(rows, provider_names(rows, providers)), na_width=28)
    print(f"\nwrote {out / (stem + '.csv')} and {stem}.png" + (", targets.csv" if targets else ""))
    if targets:
        print("\ntargets")
        print_table(targets, ["target", "mode", "threshold", "measured", "status", "missed by", "note"])
    return rows, targets


if __name__ == "__main__":
    main()
