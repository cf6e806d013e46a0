"""The avo pass on the graph Dynamo hands the backend: detect attention → look up a kernel → rewrite.

It runs before AOTAutograd, so the avo op's own autograd formula gives the backward. Cache safety: the
decision is encoded in the graph itself (the avo op carries the kernel id, a hash of the kernel source and
launch config; a fallback is an SDPA call), so Inductor's FX graph cache can never serve a stale decision.
Any failure on one site leaves that site as it was, warns once and bumps a counter (AVO_STRICT re-raises).
"""
from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from ..cache.serving import lookup_record
from ..settings import Settings, triton_interpreting
from ..spec import AttentionSpec, HardwareKey, SoftwareKey
from . import deferred
from . import report as rep
from .deferred import DeferredCheck
from .report import SiteReport

if TYPE_CHECKING:
    from ..cache.store import KernelStore, StoreHit


class AvoMissError(RuntimeError):
    """AVO_ON_MISS=error and some attention sites have no tuned kernel for this GPU."""


@dataclass
class PassResult:
    """The pass's SiteReports, whether it rewrote the graph, and the first-use checks it left running in the
    background (``run_avo_pass(defer_checks=True)``): the graph calls their kernels, so it may run only once every
    one passed (``deferred.failed``)."""

    sites: list[SiteReport]
    changed: bool
    deferred: list[DeferredCheck] = field(default_factory=list)
    graph_before: fx.Graph | None = None  # with defer_checks: the graph as given, for a compile without a failed kernel


_warned: set[str] = set()
_search_started = False
_search_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _count(name: str) -> None:
    from torch._dynamo.utils import counters

    counters["avo"][name] += 1


def _site_device(match: Any) -> torch.device | None:
    value = match.q.meta.get("example_value") if hasattr(match.q, "meta") else None
    return value.device if isinstance(value, torch.Tensor) else None


def avo_unavailable_reason(match: Any) -> str | None:
    """Why the avo op cannot run this site at all (None = it can)."""
    device = _site_device(match)
    if device is None:
        return "device of the inputs unknown"
    if device.type == "cpu" and not triton_interpreting():
        return "CPU tensors need TRITON_INTERPRET=1 for Triton kernels"
    if device.type not in ("cpu", "cuda"):
        return f"device {device.type} not supported by avo kernels"
    if match.spec.dropout_p > 0:
        return f"dropout p={match.spec.dropout_p} is not fused by avo kernels"
    return None


_failed_verification: set[str] = set()


def _tuned_at(hit: StoreHit) -> AttentionSpec | None:
    """The shape a class hit's record was tuned at (SiteReport.tuned_at); None for an exact hit."""
    return hit.record.spec if hit.is_class else None


def ensure_verified(store: KernelStore, hit: StoreHit, device: torch.device | None) -> bool:
    """A record tuned on other software, or read from a bundle layer, is verified (compile + correctness) once
    before use; a pass is marked in the store, a failure is remembered for this process (not retried per compile).

    A class hit is verified at the site's shape (``hit.serves``) once per (record, site key, software), pass or
    fail, and the verdict is kept in the store (``mark_class_verdict``): a record that passes at shape A and fails
    at B serves A only, and B is not checked again on the next compile. A class record the store holds as verified
    on this software (``verified_as_is``: it passed the ragged set here) is checked at the site's lengths alone."""
    if not getattr(hit, "needs_reverify", False):
        return True
    from ..check.verify import verify_record

    if (serves := getattr(hit, "serves", None)) is not None:
        as_is = store.verified_as_is(hit.record, hit.layer)
        report = verify_record(hit.record, device=device, at=serves, own_lengths_only=as_is)
        store.mark_class_verdict(hit, report.ok, "; ".join(report.problems)[:500],
                                 persist=not getattr(report, "environmental", False))
        if not report.ok:
            deferred.remember_problems(hit.record.kernel_id, serves, report.problems)
        _count("class_verified" if report.ok else "class_rejected")
        return bool(report.ok)
    if hit.record.sha256 in _failed_verification:
        return False
    report = verify_record(hit.record, device=device)
    if report.ok:
        store.mark_verified(hit.key, SoftwareKey.current(), sha=hit.record.sha256)
    else:
        _failed_verification.add(hit.record.sha256)
        store.discard_read_through(hit.key, hit.record.sha256)
        deferred.remember_problems(hit.record.kernel_id, hit.record.spec, report.problems)
    return bool(report.ok)


def start_background_search(settings: Settings) -> None:
    """AVO_ON_MISS=search: start one background `python -m avo_inductor.search run --pending` per process."""
    global _search_started
    with _search_lock:
        if _search_started:
            return
        _search_started = True
    log_path = settings.cache_dir / "background-search.log"
    try:
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        _spawn_detached([sys.executable, "-m", "avo_inductor.search", "run", "--pending"], log_path)
    except OSError as exc:
        _warn_once("search-spawn", f"avo: AVO_ON_MISS=search could not start the background search: {exc}")
        return
    rep.logger.warning("avo: started a background search for the pending shapes (log: %s)", log_path)


def _spawn_detached(cmd: list[str], log_path: Any) -> None:
    """Start ``cmd`` in its own session: a Ctrl-C in the user's program does not kill the search, and it keeps
    running after the compile (its progress is in ``log_path``; the search is resumable if killed)."""
    with open(log_path, "ab") as log:
        subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _handle_site(gm: fx.GraphModule, match: Any, store: Any, settings: Settings, origin: str,
                 dry_run: bool, misses: list[SiteReport], checks: list[DeferredCheck] | None = None) -> SiteReport:
    """One site's decision and rewrite. ``checks``: where a hit's first-use check may be left running in the
    background (backend/deferred.py), the site rewritten to its kernel meanwhile; None: checked here."""
    from ..detect import rewrite

    spec: AttentionSpec = match.spec
    is_sdpa = match.pattern.startswith("sdpa")
    base = SiteReport(module_path=match.module_path, pattern=match.pattern, action=rep.KEPT, spec=spec)
    unavailable = avo_unavailable_reason(match)
    if unavailable is not None:
        if not is_sdpa and not dry_run:
            rewrite.rewrite_to_sdpa(gm, match)
        return dataclasses.replace(base, action=rep.KEPT if is_sdpa else rep.SDPA, reason=unavailable)

    device = _site_device(match)
    hardware = HardwareKey.current(device)
    hit = lookup_record(store, spec, hardware)
    if hit is not None and dry_run and getattr(hit, "needs_reverify", False):
        return dataclasses.replace(base, action=rep.AVO, status="hit", kernel_id=hit.record.kernel_id,
                                   speedup=hit.record.metrics.speedup, layer=hit.layer, tuned_at=_tuned_at(hit),
                                   reason="verified at this shape at first compile" if hit.is_class else
                                   "verified on this GPU at first compile")
    background = None
    if hit is not None and checks is not None and getattr(hit, "needs_reverify", False) \
            and hit.record.sha256 not in _failed_verification and deferred.can_defer(device):
        assert device is not None  # can_defer: a CUDA site
        background = deferred.defer(store, hit, device, ensure_verified)
        checks.append(background)
    while background is None and hit is not None and not ensure_verified(store, hit, device):
        what = f"verification at {spec.to_text()} (class record tuned at {hit.record.spec.to_text()})" \
            if hit.is_class else f"re-verification on {SoftwareKey.current()}"
        why = deferred.problems_of(hit.record.kernel_id, hit.serves or hit.record.spec)
        _warn_once(f"reverify:{hit.record.kernel_id}:{spec.cache_key() if hit.is_class else ''}",
                   f"avo: kernel {hit.record.kernel_id} failed {what} ({why}); using the fallback")
        hit = lookup_record(store, spec, hardware) if hit.is_class else None  # a class hit: the next neighbour
    if hit is not None:
        record = hit.record
        if not dry_run:
            from ..kernels.op import register_kernel

            kernel_id = register_kernel(record)
            rewrite.rewrite_to_avo(gm, match, kernel_id)
        _count("hit")
        from ..kernels.tiers import stale_note  # a template record measured on another template version

        notes = [stale_note(record) or ""]
        if background is not None and not hit.is_class:
            notes.append("verified on this host while Inductor compiled")
        if hit.is_class:  # served by a neighbour's kernel; the exact shape is still worth tuning
            _count("class_hit")
            if not dry_run:
                store.enqueue_pending(spec, hardware, origin)
            notes.insert(0, rep.class_hit_note(record.metrics, in_background=background is not None))
        return dataclasses.replace(base, action=rep.AVO, status="hit", kernel_id=record.kernel_id,
                                   speedup=record.metrics.speedup, layer=hit.layer, tuned_at=_tuned_at(hit),
                                   reason="; ".join(n for n in notes if n))

    _count("miss")
    if not dry_run:
        store.enqueue_pending(spec, hardware, origin)
    # explain() (dry_run) writes no queue: its row says what a compile would do instead of claiming it happened.
    queued = "would be queued on compile" if dry_run else "queued"
    miss = dataclasses.replace(base, status="miss", reason=f"no kernel for {hardware.name}; {queued}")
    misses.append(miss)
    if not is_sdpa and not dry_run:
        rewrite.rewrite_to_sdpa(gm, match)
    return dataclasses.replace(miss, action=rep.KEPT if is_sdpa else rep.SDPA)


_stores: dict[Settings, Any] = {}


def shared_store(settings: Settings) -> KernelStore:
    """One KernelStore per settings for the whole process, not one per compiled graph."""
    with _search_lock:
        if settings not in _stores:
            from ..cache.store import KernelStore

            _stores[settings] = KernelStore.from_settings(settings)
        return _stores[settings]


def _origin(gm: fx.GraphModule) -> str:
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            _, module_type = next(iter(stack.values()))
            return getattr(module_type, "__qualname__", str(module_type))
    return type(gm).__name__


def run_avo_pass(gm: fx.GraphModule, settings: Settings, store: Any | None = None, *,
                 dry_run: bool = False, store_factory: Callable[[Settings], Any] | None = None,
                 defer_checks: bool = False) -> PassResult:
    """Detect, look up and rewrite every attention site of ``gm`` in place (``dry_run``: report only).

    ``defer_checks``: a CUDA hit's first-use check (a class hit, or a record tuned on other software) runs in the
    background (PassResult.deferred) while the caller compiles ``gm``; the caller must wait for the verdicts before
    running it (register.avo_backend does).
    Raises AvoMissError for AVO_ON_MISS=error; any other failure on a site leaves it untouched.
    """
    from ..detect.match import AttentionMatch, find_attention_sites

    sites: list[SiteReport] = []
    misses: list[SiteReport] = []
    checks: list[DeferredCheck] | None = [] if defer_checks and settings.background_checks and not dry_run else None
    found = find_attention_sites(gm)
    if not found:
        return PassResult(sites, changed=False)
    if store is None:
        store = (store_factory or shared_store)(settings)
    # Nodes copied, their meta shared: ~0.1 s for 2,700 nodes on a slow CPU, taken only for graphs with attention.
    graph_before = copy.deepcopy(gm.graph) if checks is not None else None
    origin = _origin(gm)
    changed = False
    for match in found:
        if not isinstance(match, AttentionMatch):
            _count("skipped")
            sites.append(SiteReport(module_path=match.module_path, pattern=match.pattern, action=rep.SKIPPED,
                                    reason=match.reason))
            continue
        try:
            site = _handle_site(gm, match, store, settings, origin, dry_run, misses, checks)
        except Exception as exc:  # the backend never breaks a user's compile
            if settings.strict:
                raise
            _count("error")
            _warn_once(f"site:{type(exc).__name__}:{exc}", f"avo: left an attention site at "
                       f"{match.module_path or '<root>'} untouched after an internal error: "
                       f"{type(exc).__name__}: {exc}")
            site = SiteReport(module_path=match.module_path, pattern=match.pattern, action=rep.ERROR,
                              spec=match.spec, reason=f"{type(exc).__name__}: {exc}")
        notes = [match.note]  # why a bias with per-head slopes was not read as ALiBi (detect/alibi.py)
        if match.empty_rows_mean and site.action in (rep.AVO, rep.SDPA):
            notes.append("rows without keys get eager's mean of v (finite mask fill)")
        if any(notes):
            site = dataclasses.replace(site, reason="; ".join(r for r in (site.reason, *notes) if r))
        changed |= site.action in (rep.AVO, rep.SDPA)
        sites.append(site)
    if changed:
        # No gm.graph.eliminate_dead_code(): FX treats call_method nodes as pure, so it would drop a user's
        # in-place ops (buf.add_(1), cache.index_copy_(...)); each rewrite erased its own dead nodes already.
        gm.graph.lint()
        gm.recompile()
    if misses and not dry_run:
        if settings.on_miss == "error":
            listed = "; ".join(f"{m.module_path or '<root>'}: {m.spec.short() if m.spec else '?'}" for m in misses)
            raise AvoMissError(f"AVO_ON_MISS=error and {len(misses)} attention site(s) have no tuned kernel: {listed}. "
                               f"Tune them with `python -m avo_inductor.search run --pending` or import a bundle.")
        if settings.on_miss == "search":
            start_background_search(settings)
    return PassResult(sites, changed, checks or [], graph_before if checks else None)
