"""A record's first-use check, run in the background while Inductor compiles the graph that calls it.

A class hit (a record tuned at a neighbouring shape, cache/classes.py) must pass verification at the site's shape
before it serves. Done in the pass, that check (one Triton compile and a few launches, 1.5-2.5 s on an H100) came
on top of Inductor's own first compile of the model (38-56 % of it in session 14's real-model benchmark). Here it
runs on a worker thread instead: the pass rewrites the site to the record's kernel at once, Inductor compiles the
graph meanwhile (Triton's compiler releases the GIL for most of its work), and the backend waits for every verdict
before it hands the compiled graph to the user (register.avo_backend). A record that fails is never run on the
user's data: the backend compiles the graph again from Dynamo's copy, and that pass, seeing the stored failure,
takes the next neighbour or the fallback. So nothing unverified ever runs, and the common case (a pass) costs
only what the check does not overlap. The same holds for an exact record that needs its one-time check on this
host (tuned on other software, or with a template that has changed since: kernels/tiers.py ``stale_note``).

Only CUDA sites defer: Triton's CPU interpreter patches module-level state while it runs a kernel, which a
concurrent compile on the main thread must not see.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..settings import triton_interpreting
from ..spec import AttentionSpec

if TYPE_CHECKING:
    from ..cache.store import KernelStore, StoreHit

_lock = threading.Lock()
_inflight: dict[str, Future[bool]] = {}  # verdict key -> its check (two sites of one shape share one)
# (kernel id, site) -> what its failed check reported (graph_pass.ensure_verified writes it before its verdict
# resolves), for the user's warning; one kernel id can serve several shapes, so the site is part of the key
_problems: dict[tuple[str, str], str] = {}


def remember_problems(kernel_id: str, site: AttentionSpec, problems: Sequence[str]) -> None:
    """Keep what a failed check of ``kernel_id`` at ``site`` reported, for :func:`problems_of`."""
    _problems[kernel_id, site.cache_key()] = "; ".join(problems)[:300]


def problems_of(kernel_id: str, site: AttentionSpec) -> str:
    """What the last failed check of ``kernel_id`` at ``site`` reported ("?" if none was kept)."""
    return _problems.get((kernel_id, site.cache_key()), "?")
_executor: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class DeferredCheck:
    """One hit's verification at ``site`` running in the background (``tuned_at`` is ``site`` for an exact hit);
    ``future`` gives the verdict."""

    kernel_id: str
    site: AttentionSpec
    tuned_at: AttentionSpec
    future: Future[bool]


def can_defer(device: torch.device | None) -> bool:
    """Whether a check for a site on ``device`` may run in the background (CUDA, not the interpreter)."""
    return device is not None and device.type == "cuda" and not triton_interpreting()


def _pool() -> ThreadPoolExecutor:
    """One worker: checks share the GPU with each other and must not crowd Inductor's compile workers."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avo-first-use-check")
        return _executor


def defer(store: KernelStore, hit: StoreHit, device: torch.device,
          check: Callable[[KernelStore, StoreHit, torch.device | None], bool]) -> DeferredCheck:
    """Start ``check(store, hit, device)`` (graph_pass.ensure_verified: it stores the verdict) on the worker, or join
    the one already running for the same record and site key."""
    key = store.class_verdict_key(hit) if hit.is_class else f"record|{hit.key}|{hit.record.sha256}"
    pool = _pool()
    with _lock:
        future = _inflight.get(key)
        if future is None:
            future = pool.submit(_run, check, store, hit, device)
            _inflight[key] = future
            future.add_done_callback(functools.partial(_forget, key))
    return DeferredCheck(hit.record.kernel_id, hit.serves or hit.record.spec, hit.record.spec, future)


def _forget(key: str, _done: Future[bool]) -> None:
    """A finished check's verdict is in the store (or its memory): later lookups read it there."""
    with _lock:
        _inflight.pop(key, None)


def _run(check: Callable[[KernelStore, StoreHit, torch.device | None], bool], store: KernelStore, hit: StoreHit,
         device: torch.device) -> bool:
    # torch's current device is per thread: the worker's must be the site's for the launches to go there.
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        return bool(check(store, hit, device))


def failed(checks: Sequence[DeferredCheck]) -> list[tuple[DeferredCheck, str]]:
    """Wait for every check; the ones that did not pass, each with why (a check that raised counts as failed: its
    kernel must not serve unverified)."""
    out: list[tuple[DeferredCheck, str]] = []
    for check in checks:
        try:
            ok = check.future.result()
            why = "" if ok else f"failed verification at this shape: {problems_of(check.kernel_id, check.site)}"
        except Exception as exc:  # an internal error in the check is no verdict, and no licence to run the kernel
            ok, why = False, f"the check raised {type(exc).__name__}: {exc}"
        if not ok:
            out.append((check, why))
    return out


def describe(check: DeferredCheck) -> str:
    if check.site == check.tuned_at:
        return f"kernel {check.kernel_id} (re-verified at {check.site.to_text()} on this software)"
    return (f"kernel {check.kernel_id} (class record tuned at {check.tuned_at.to_text()}) at "
            f"{check.site.to_text()}")

