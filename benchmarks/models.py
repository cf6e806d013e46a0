"""End to end: a Llama-style and a GPT-2-style decoder, backend="avo" vs "inductor" vs eager (issue 7).

Per case (model, batch B, sequence N) and mode (``infer`` = forward under no_grad, ``train`` = forward + backward
of a scalar loss, grads reset to None each step) every variant ``backend:attn`` runs the same weights:
eager / inductor / avo on the hand-written attention model, plus the SDPA-attention model under inductor as the
reference avo should reach. Steady-state time: median of ``--iters`` steps after ``--warmup`` steps (CUDA events;
wall clock on CPU). Inference outputs are checked against eager (relative L2 error), so a fast wrong kernel shows.

Compile time = wall time of the first call (compile + one step). It is measured cold with respect to Inductor
for every variant alike: ``torch._dynamo.reset()``, then the first call runs inside
``torch._inductor.utils.fresh_cache()`` (a new empty TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR, Inductor's
in-memory kernel caches cleared) with the FX-graph and AOTAutograd caches switched off, so neither backend reuses
what an earlier measurement compiled. A warm-up compile of a tiny attention-free module under both backends comes
first, so one-time imports and Inductor's compile workers are not charged to the first case.
The avo cache is warm when the KernelStore (AVO_CACHE_DIR and its layers) holds records for the model's attention
specs: then the avo pass finds the kernel and inlines it ("hit"); otherwise it rewrites to SDPA ("fallback").
The path the measured compile actually took is recorded from the pass's own SiteReports (backend/report.py), with
the pass's own seconds. ``--seed-baseline`` makes every case a hit: the run uses a temporary copy of the store to
which the untuned baseline record of each missing spec is added (``explain()`` finds the specs); such hits say
"hit:baseline" and their step times are those of the untuned template. Compile overhead % = avo first call vs
inductor first call on the same model; pass % = the avo pass's own time vs inductor's first call
(ANCHORS target: <= 10 % on a cache hit).

Usage: python -m benchmarks.models [--cases llama:4:1024,gpt2:8:1024] [--modes infer,train]
         [--variants eager:handwritten,inductor:handwritten,avo:handwritten,inductor:sdpa] [--seed-baseline]
         [--quick] [--tiny] [--warmup 3] [--iters 10] [--out DIR]
Writes <out>/models.csv (one row per case and mode), <out>/compile.csv, <out>/models.png (default out
benchmarks/results/<gpu>/); a failed case or variant is a "failed: reason" cell, never a crash; prints the table last.
The defaults make 36 cold compiles: about 7 minutes on an H100, most of it compiling (``--quick``: about 1.5).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avo_inductor.example_models import ModelConfig, gpt2_style, llama_style

from .common import RESULTS, Panel, bar_panels, gpu_slug, print_table, write_csv

DEFAULT_CASES = "llama:4:1024,llama:2:4096,llama:4:2048,llama:1:8192,gpt2:8:1024,gpt2:2:4096"
QUICK_CASES = "llama:2:1024,gpt2:4:1024"
TINY_CASES = "llama:1:16,gpt2:1:16"
DEFAULT_VARIANTS = "eager:handwritten,inductor:handwritten,avo:handwritten,inductor:sdpa"
BACKENDS = ("eager", "inductor", "avo")
ATTNS = ("handwritten", "sdpa")
MODES = ("infer", "train")
ERR_CHARS = 160  # a "failed: reason" cell in the CSV; the printed table truncates further
INDUCTOR_CACHES = "cold: fresh_cache() dirs + in-memory caches cleared, fx_graph_cache and autograd cache off"


# ---- what to run ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    kind: str
    batch: int
    seq: int


@dataclass(frozen=True)
class Variant:
    backend: str
    attn: str

    @property
    def name(self) -> str:
        return f"{self.backend}[{self.attn}]"


@dataclass(frozen=True)
class Timing:
    warmup: int
    iters: int


def parse_cases(text: str) -> list[Case]:
    """``kind:batch:seq`` comma list (the flag's format since the first version), kind llama | gpt2."""
    cases = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in ("llama", "gpt2") or not (parts[1].isdigit() and parts[2].isdigit()):
            raise SystemExit(f"bad case {item!r}: use kind:batch:seq with kind llama or gpt2, e.g. llama:4:1024")
        cases.append(Case(parts[0], int(parts[1]), int(parts[2])))
    return cases


def parse_variants(text: str) -> list[Variant]:
    """``backend:attn`` comma list; backend eager | inductor | avo, attn handwritten | sdpa."""
    variants = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        backend, _, attn = item.partition(":")
        if backend not in BACKENDS or attn not in ATTNS:
            raise SystemExit(f"bad variant {item!r}: use backend:attn, backend in {BACKENDS}, attn in {ATTNS}")
        variants.append(Variant(backend, attn))
    return variants


def model_config(kind: str, attn: str, seq: int, tiny: bool) -> ModelConfig:
    """The issue's models (Llama: d 2048, 16 heads, 4 kv heads; GPT-2: d 768, 12 heads; 4 layers each), or a tiny
    1-layer version (head dim 16, Llama still GQA) cheap enough for the CPU Triton interpreter. GPT-2's tril
    buffer is sized to the case: 8192^2 bools per layer would be waste."""
    if kind == "llama":
        dims = dict(dim=32, n_heads=2, n_kv_heads=1, n_layers=1) if tiny else dict(dim=2048, n_heads=16, n_kv_heads=4)
    else:
        dims = dict(dim=32, n_heads=2, n_kv_heads=2, n_layers=1) if tiny else dict(dim=768, n_heads=12, n_kv_heads=12)
    return ModelConfig(**dims, max_seq_len=max(seq, 64), attn=attn)  # type: ignore[arg-type]


def build(case: Case, attn: str, tiny: bool, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Same seed for both attention variants: the SDPA model has exactly the hand-written model's weights.
    Initialised on the device: a CPU init of the 240M-parameter Llama costs seconds per case."""
    cfg = model_config(case.kind, attn, case.seq, tiny)
    torch.manual_seed(0)
    with torch.device(device):
        model = llama_style(cfg) if case.kind == "llama" else gpt2_style(cfg)
    return model.to(dtype=dtype)


# ---- one measurement --------------------------------------------------------------------------------------------
@dataclass
class PassLog:
    """What the avo pass did during one compile: its SiteReports, its own seconds, an escaped error."""

    sites: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""


@dataclass
class Measurement:
    ms: float | None = None
    first_s: float | None = None
    err: float | None = None


@contextlib.contextmanager
def observe_avo_pass(log: PassLog) -> Iterator[PassLog]:
    """Record into ``log`` the SiteReports and the time of every run_avo_pass the avo backend makes while active.

    Why not a separate explain(): the table must say which path the *measured* compile took, and the pass's
    own seconds are the overhead the ANCHORS target is about. They include the backend's wait for class checks
    that ran in the background while Inductor compiled (register.settle_deferred_checks): the part of a check
    the compile did not hide. Wraps the names register.py calls, restores them.
    """
    from avo_inductor.backend import register

    original = register.run_avo_pass
    original_settle = register.settle_deferred_checks

    def timed_settle(result: Any) -> bool:
        start = time.perf_counter()
        try:
            return original_settle(result)
        finally:
            log.seconds += time.perf_counter() - start

    def timed(gm: Any, settings: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            result = original(gm, settings, *args, **kwargs)
        except Exception as exc:
            log.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            log.seconds += time.perf_counter() - start
        log.sites.extend(result.sites)
        return result

    register.run_avo_pass = timed
    register.settle_deferred_checks = timed_settle
    try:
        yield log
    finally:
        register.run_avo_pass = original
        register.settle_deferred_checks = original_settle


@contextlib.contextmanager
def cold_inductor() -> Iterator[None]:
    """Inductor and Triton compile from scratch inside: fresh cache dirs, in-memory caches cleared, the FX-graph
    and AOTAutograd caches off (so neither backend pays for cache keys or saves the other cannot reuse either)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    import torch._inductor.utils as inductor_utils

    fresh = getattr(inductor_utils, "fresh_cache", None) or inductor_utils.fresh_inductor_cache
    patches = [(inductor_config, {"fx_graph_cache": False, "fx_graph_remote_cache": False}),
               (functorch_config, {"enable_autograd_cache": False})]
    with contextlib.ExitStack() as stack:
        for module, values in patches:
            stack.enter_context(module.patch({k: v for k, v in values.items() if hasattr(module, k)}))
        stack.enter_context(fresh())
        yield


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps_ms(step: Callable[[], Any], timing: Timing) -> float:
    """Median milliseconds of ``timing.iters`` steps after ``timing.warmup``: a model step is milliseconds long,
    so a fixed count (not do_bench's time budget, which gives one sample of a 150 ms step) keeps the median real."""
    for _ in range(timing.warmup):
        step()
    if not torch.cuda.is_available():
        samples = []
        for _ in range(timing.iters):
            start = time.perf_counter()
            step()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(timing.iters)]
    for start_ev, end_ev in events:
        start_ev.record()
        step()
        end_ev.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def make_step(fn: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module, x: torch.Tensor,
              train: bool) -> Callable[[], torch.Tensor]:
    """One inference forward, or one training step (forward, backward, grads reset to None like zero_grad)."""
    def infer() -> torch.Tensor:
        with torch.no_grad():
            return fn(x)

    def train_step() -> torch.Tensor:
        out = fn(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        return out.detach()

    return train_step if train else infer


def rel_err(out: torch.Tensor, ref: torch.Tensor | None) -> float | None:
    if ref is None:
        return None
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def measure(model: torch.nn.Module, variant: Variant, x: torch.Tensor, train: bool, timing: Timing,
            ref: torch.Tensor | None, passlog: PassLog | None = None) -> tuple[Measurement, torch.Tensor | None]:
    """Compile cold (timed first call), then time steady-state steps; returns the first output for checks.
    ``passlog`` (avo) is filled even when the compile fails, so a failed cell still says which path it took."""
    torch._dynamo.reset()
    model.train(train)
    result = Measurement()
    with contextlib.ExitStack() as stack:
        if passlog is not None:
            stack.enter_context(observe_avo_pass(passlog))
        if variant.backend == "eager":
            fn: Callable[[torch.Tensor], torch.Tensor] = model
        else:
            stack.enter_context(cold_inductor())
            fn = torch.compile(model, backend=_backend(variant.backend))
        step = make_step(fn, model, x, train)
        start = time.perf_counter()
        out = step()
        _sync()
        result.first_s = time.perf_counter() - start
        result.ms = time_steps_ms(step, timing)
    result.err = None if train else rel_err(out, ref)
    return result, (out if not train else None)


def _backend(name: str) -> Any:
    """The avo backend by its function (what the ``avo`` entry point names), so an uninstalled checkout runs too."""
    if name == "avo":
        from avo_inductor.backend.register import avo_backend

        return avo_backend
    return name


def failure_text(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"failed: {type(exc).__name__}: {first}"[:ERR_CHARS]


def free_memory(model: torch.nn.Module | None = None) -> None:
    """After a variant (or its failure): drop compiled code, grads and cached blocks so the next starts clean."""
    torch._dynamo.reset()
    if model is not None:
        model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the avo path -----------------------------------------------------------------------------------------------
def classify_path(log: PassLog | None, seeded: set[str]) -> tuple[str, str]:
    """(path, note) from the pass's SiteReports: hit | hit:baseline | fallback | mixed | skipped | error | none."""
    from avo_inductor.backend import report as rep

    if log is None:
        return "-", ""
    if log.error:
        return "error", log.error
    if not log.sites:
        return "none", "no attention site found"
    hits = [s for s in log.sites if s.action == rep.AVO]
    others = [s for s in log.sites if s.action != rep.AVO]
    note = next((s.reason for s in others if s.reason), "")
    if others and hits:
        return "mixed", f"{len(hits)}/{len(log.sites)} sites hit; {note}"
    if hits:
        kids = sorted({s.kernel_id for s in hits if s.kernel_id})
        tag = "hit:baseline" if kids and set(kids) <= seeded else "hit"
        spec = hits[0].spec.short() if hits[0].spec else ""
        return tag, f"{len(hits)} sites, {spec}, kernel {','.join(kids)}"
    actions = {s.action for s in others}
    if actions <= {rep.SDPA, rep.KEPT}:
        return "fallback", note
    return ("error" if rep.ERROR in actions else "skipped"), note


@contextlib.contextmanager
def seeded_store(enabled: bool) -> Iterator[Any]:
    """With ``enabled``: the run's store is a temporary copy of AVO_CACHE_DIR's records (tuned records keep
    winning), into which seed_baseline adds baseline records; the user's store is never written. Yields the
    store to seed, or None."""
    if not enabled:
        yield None
        return
    from avo_inductor.cache.store import LOCAL_LAYER, KernelStore
    from avo_inductor.settings import configure, get_settings

    original = get_settings()
    tmp = Path(tempfile.mkdtemp(prefix="avo-bench-store-"))
    with KernelStore.from_settings(original) as src:
        local = [hit.record for hit in src.iter_records() if hit.layer == LOCAL_LAYER]
    configure(cache_dir=tmp)
    store = KernelStore.from_settings()
    if local:
        store.put_many(local)
    try:
        yield store
    finally:
        store.close()
        configure(cache_dir=original.cache_dir)
        shutil.rmtree(tmp, ignore_errors=True)


def seed_baseline(store: Any, model: torch.nn.Module, x: torch.Tensor, train: bool) -> set[str]:
    """Put the baseline record of every spec explain() reports as a miss into ``store``; returns the kernel ids."""
    from avo_inductor.backend.explain import explain
    from avo_inductor.kernels.baseline import baseline_record

    model.train(train)
    with torch.set_grad_enabled(train):
        report = explain(model, x, quiet=True)
    torch._dynamo.reset()
    records = {s.spec: baseline_record(s.spec) for s in report if s.status == "miss" and s.spec is not None}
    if records:
        store.put_many(list(records.values()))
    return {r.kernel_id for r in records.values()}


# ---- one row = one case and mode ----------------------------------------------------------------------------------
@dataclass
class RunConfig:
    variants: list[Variant]
    timing: Timing
    tiny: bool
    device: str
    dtype: torch.dtype
    store: Any = None  # the seeded store, or None
    seeded: set[str] = field(default_factory=set)


def run_case(case: Case, modes: Sequence[str], cfg: RunConfig) -> list[dict[str, Any]]:
    """Every mode and variant of one case on one pair of models; any failure lands in the cells it concerns."""
    try:
        models = {v.attn: build(case, v.attn, cfg.tiny, cfg.device, cfg.dtype) for v in cfg.variants}
        dim = next(iter(models.values())).cfg.dim
        x = torch.randn(case.batch, case.seq, dim, device=cfg.device, dtype=cfg.dtype)
        if cfg.store is not None:
            # Once per case: a training record when any mode trains (it also serves inference sites; an inference
            # record never serves a training site, cache/serving.py lookup_record).
            for attn in sorted({v.attn for v in cfg.variants if v.backend == "avo"}):
                cfg.seeded |= seed_baseline(cfg.store, models[attn], x, "train" in modes)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory building the case: every cell says why
        free_memory()
        return [_failed_row(case, mode, cfg.variants, exc) for mode in modes]
    rows = [_run_mode(case, mode, models, x, cfg) for mode in modes]
    del models, x
    free_memory()
    return rows


def _row_key(case: Case, mode: str) -> dict[str, Any]:
    return {"model": case.kind, "B": case.batch, "N": case.seq, "mode": mode}


def _failed_row(case: Case, mode: str, variants: Sequence[Variant], exc: BaseException) -> dict[str, Any]:
    return {**_row_key(case, mode), **{f"{v.name} ms": failure_text(exc) for v in variants}}


def _run_mode(case: Case, mode: str, models: dict[str, torch.nn.Module], x: torch.Tensor,
              cfg: RunConfig) -> dict[str, Any]:
    """One row: eager first (its inference output is the reference the compiled variants are checked against)."""
    row = _row_key(case, mode)
    ref: torch.Tensor | None = None
    for v in sorted(cfg.variants, key=lambda v: v.backend != "eager"):
        ref = _run_variant(row, v, models[v.attn], x, mode == "train", cfg, ref)
    add_derived(row)
    return row


def _run_variant(row: dict[str, Any], v: Variant, model: torch.nn.Module, x: torch.Tensor, train: bool,
                 cfg: RunConfig, ref: torch.Tensor | None) -> torch.Tensor | None:
    """Measure one variant into ``row``; returns the eager output (the reference) when this was eager."""
    out: torch.Tensor | None = None
    log = PassLog() if v.backend == "avo" else None
    try:
        result, out = measure(model, v, x, train, cfg.timing, ref, log)
        row[f"{v.name} ms"], row[f"{v.name} first s"] = result.ms, result.first_s
        if result.err is not None:
            row[f"{v.name} err"] = result.err
    except Exception as exc:  # noqa: BLE001 - a failed variant is a cell, never a crashed run
        row[f"{v.name} ms"] = failure_text(exc)
    if v.backend == "avo":
        _record_path(row, v, log, cfg.seeded)
    free_memory(model)
    return out.detach() if (out is not None and v.backend == "eager") else ref


def _record_path(row: dict[str, Any], v: Variant, log: PassLog | None, seeded: set[str]) -> None:
    path, note = classify_path(log, seeded)
    row[f"{v.name} path"] = path
    row[f"{v.name} pass s"] = log.seconds if log else None
    row[f"{v.name} note"] = note[:ERR_CHARS]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def add_derived(row: dict[str, Any]) -> None:
    """Speedups (time ratios) and compile overheads, only where both sides have numbers."""
    for attn in ATTNS:
        ind, avo = _num(row.get(f"inductor[{attn}] ms")), _num(row.get(f"avo[{attn}] ms"))
        if ind and avo:
            row[f"speedup avo/inductor [{attn}]"] = ind / avo
        ind_s, avo_s = _num(row.get(f"inductor[{attn}] first s")), _num(row.get(f"avo[{attn}] first s"))
        if ind_s and avo_s:
            row[f"compile overhead % [{attn}]"] = 100.0 * (avo_s - ind_s) / ind_s
            pass_s = row.get(f"avo[{attn}] pass s")
            if isinstance(pass_s, float):
                row[f"avo pass % [{attn}]"] = 100.0 * pass_s / ind_s
    eager, avo_hw, sdpa = (_num(row.get(k)) for k in ("eager[handwritten] ms", "avo[handwritten] ms",
                                                       "inductor[sdpa] ms"))
    ind_hw = _num(row.get("inductor[handwritten] ms"))
    if eager and avo_hw:
        row["speedup avo/eager [handwritten]"] = eager / avo_hw
    if sdpa and ind_hw:
        row["speedup inductor[sdpa]/inductor [handwritten]"] = ind_hw / sdpa


# ---- outputs --------------------------------------------------------------------------------------------------------
def compile_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """compile.csv: one row per case, mode and attention model that ran under avo."""
    out = []
    for r in rows:
        for attn in ATTNS:
            if f"avo[{attn}] path" not in r:
                continue
            out.append({"model": r["model"], "B": r["B"], "N": r["N"], "mode": r["mode"], "attn": attn,
                        "avo path": r.get(f"avo[{attn}] path"),
                        "inductor first s": r.get(f"inductor[{attn}] first s"),
                        "avo first s": r.get(f"avo[{attn}] first s"), "avo pass s": r.get(f"avo[{attn}] pass s"),
                        "compile overhead %": r.get(f"compile overhead % [{attn}]"),
                        "avo pass %": r.get(f"avo pass % [{attn}]"), "inductor caches": INDUCTOR_CACHES})
    return out


def write_outputs(rows: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    write_csv(out / "models.csv", rows)
    comp = compile_rows(rows)
    write_csv(out / "compile.csv", comp)
    groups = [f"{r['model']} B{r['B']} N{r['N']} {r['mode']} ({r.get('avo[handwritten] path', '-')})" for r in rows]
    speedups = {"avo[handwritten]": "speedup avo/inductor [handwritten]",
                "inductor[sdpa] (reference)": "speedup inductor[sdpa]/inductor [handwritten]"}
    speed = Panel("step time: speedup over backend=inductor on the hand-written model", groups,
                  {label: [r.get(col) for r in rows] for label, col in speedups.items()}, "x faster", hline=1.0)
    compile_panel = Panel("first call (compile) vs backend=inductor, %", groups,
                          {"avo overhead %": [r.get("compile overhead % [handwritten]") for r in rows],
                           "avo pass %": [r.get("avo pass % [handwritten]") for r in rows]}, "%", hline=10.0)
    bar_panels(out / "models.png", [speed, compile_panel], f"avo end to end ({gpu_slug()})")
    return comp


TABLE = ["model", "B", "N", "mode", "eager[handwritten] ms", "inductor[handwritten] ms", "avo[handwritten] ms",
         "inductor[sdpa] ms", "avo[sdpa] ms", "speedup avo/inductor [handwritten]", "speedup avo/inductor [sdpa]",
         "avo[handwritten] err", "avo[handwritten] path", "inductor[handwritten] first s",
         "avo[handwritten] first s", "compile overhead % [handwritten]", "avo pass % [handwritten]"]


def clipped(rows: Sequence[dict[str, Any]], width: int = 40) -> list[dict[str, Any]]:
    """Long text cells (failure reasons, notes) cut for the printed table; the CSV keeps them whole."""
    return [{k: (v[: width - 1] + "~" if isinstance(v, str) and len(v) > width else v) for k, v in r.items()}
            for r in rows]


def print_tables(rows: list[dict[str, Any]], comp: list[dict[str, Any]]) -> None:
    """The compile table, then the main table last (what a log tail shows)."""
    print()
    print(f"compile time (first call, s; Inductor {INDUCTOR_CACHES}):")
    comp_cols = ["model", "B", "N", "mode", "attn", "avo path", "inductor first s", "avo first s", "avo pass s",
                 "compile overhead %", "avo pass %"]
    print_table(clipped(comp), comp_cols)
    print()
    print_table(clipped(rows), [c for c in TABLE if any(c in r for r in rows)])


# ---- main ----------------------------------------------------------------------------------------------------------
def warm_process(device: str, dtype: torch.dtype) -> None:
    """Compile a tiny attention-free module (forward and backward) under both backends, cold, before measuring:
    one-time costs (imports, Inductor's compile worker pool, cuBLAS) then count against no case."""
    lin = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32)).to(device, dtype)
    x = torch.randn(8, 32, device=device, dtype=dtype)
    for backend in ("inductor", "avo"):
        torch._dynamo.reset()
        with cold_inductor():
            torch.compile(lin, backend=_backend(backend))(x).float().sum().backward()
    importlib.import_module("avo_inductor.kernels.op")  # the op a hit inlines: registering it is per process
    free_memory(lin)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=None, help=f"comma list of kind:batch:seq (default {DEFAULT_CASES})")
    parser.add_argument("--modes", default="infer,train", help="comma list of infer,train")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list of backend:attn")
    parser.add_argument("--seed-baseline", action="store_true",
                        help="make every avo site a hit: baseline records for missing specs in a temporary store copy")
    parser.add_argument("--quick", action="store_true", help=f"1 warmup + 3 timed steps; cases {QUICK_CASES}")
    parser.add_argument("--tiny", action="store_true",
                        help=f"1-layer d32 models for the CPU interpreter; cases {TINY_CASES}")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before timing (default 3)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps, median reported (default 10)")
    parser.add_argument("--no-warm-process", action="store_true", help="skip the warm-up compile (tests only)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    bad_modes = set(args.modes.split(",")) - set(MODES)
    if bad_modes:
        parser.error(f"unknown mode(s) {sorted(bad_modes)}; use {','.join(MODES)}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cases = parse_cases(args.cases or (TINY_CASES if args.tiny else QUICK_CASES if args.quick else DEFAULT_CASES))
    timing = Timing(args.warmup if args.warmup is not None else (1 if args.quick else 3),
                    args.iters if args.iters is not None else (3 if args.quick else 10))
    if not args.no_warm_process:
        warm_process(device, dtype)
    out = args.out or RESULTS / gpu_slug()
    rows: list[dict[str, Any]] = []
    with seeded_store(args.seed_baseline) as store:
        cfg = RunConfig(parse_variants(args.variants), timing, args.tiny, device, dtype, store)
        for case in cases:
            for row in run_case(case, args.modes.split(","), cfg):
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                rows.append(row)
            write_csv(out / "models.csv", rows)  # a run cut short by a time limit still leaves its rows
    comp = write_outputs(rows, out)
    print_tables(rows, comp)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("AVO_ON_MISS", "fallback")
    main()
