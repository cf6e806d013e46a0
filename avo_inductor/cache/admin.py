"""Store maintenance behind the CLI: find, prune, stats, verify-all, baseline records.

Kept apart from ``__main__`` so every command's logic is a plain function tests can call without argparse.
Specs given on the command line are read with the one spec text parser, ``spec.parse_spec_text``.
"""
from __future__ import annotations

import sqlite3
import time
import warnings
from typing import Any

from ..parsing import finite_float
from ..spec import AttentionSpec, HardwareKey, parse_spec_text
from .bundle import BundleReport, verify_bundle
from .store import LOCAL_LAYER, CacheWarning, KernelStore, StoreHit

__all__ = ["add_baseline", "find_record", "parse_spec_text", "prune", "stats", "verify_all"]


def find_record(store: KernelStore, ref: str) -> StoreHit:
    """A record by exact store key or by kernel id (prefix); KeyError if none, ValueError if ambiguous."""
    hit = store.get(ref, touch=False)
    if hit is not None:
        return hit
    matches = [h for h in store.iter_records(include_shadowed=True) if h.record.kernel_id.startswith(ref)]
    ids = {h.record.kernel_id for h in matches}
    if not matches:
        raise KeyError(f"no record with key or kernel id {ref!r}")
    if len(ids) > 1:
        raise ValueError(f"kernel id prefix {ref!r} is ambiguous: {sorted(ids)}")
    return matches[0]


def prune(store: KernelStore, *, stale_software: bool = False, unused_days: float | None = None,
          now: float | None = None, dry_run: bool = False) -> list[str]:
    """Remove local records tuned on other software (never verified on this one) and/or not used for
    ``unused_days`` days (last lookup, else creation time); returns their keys. ``dry_run``: only list them.
    Read-only layers are never touched. ``unused_days`` must be finite and >= 0 (a negative age matched every
    record); a record that cannot be removed (damaged store) is warned about and skipped."""
    if unused_days is not None:
        unused_days = finite_float("--unused-days", unused_days, minimum=0.0)
    now = time.time() if now is None else now
    removed = []
    for hit in list(store.iter_records(include_shadowed=True)):
        if hit.layer != LOCAL_LAYER:
            continue
        r = hit.record
        stale = stale_software and store.software != r.software and store.software not in r.verified_software
        last = store.last_used(hit.key) or r.created_at
        unused = unused_days is not None and now - last > unused_days * 86400
        if not (stale or unused):
            continue
        if dry_run:
            removed.append(hit.key)
            continue
        try:
            if store.remove(hit.key):
                removed.append(hit.key)
        except (OSError, sqlite3.Error) as exc:
            warnings.warn(f"avo kernel store: could not remove {hit.key!r} ({exc}); skipped", CacheWarning,
                          stacklevel=2)
    return removed


def stats(store: KernelStore) -> dict[str, Any]:
    """Counts per layer, pending queue size and the store's identity, for `stats` and bug reports."""
    layers = [{"layer": LOCAL_LAYER, "path": str(store.directory), "records": len(store.local_keys()),
               "status": "writable" if store.writable else "unavailable"}]
    for layer in store.layers:
        count = len(layer.keys())
        layers.append({"layer": layer.label, "path": str(layer.root), "records": count,
                       "status": layer.error or "read-only"})
    pending = store.pending()
    return {
        "generation": store.generation(),
        "hardware": HardwareKey.current().slug,
        "software": store.software.to_dict(),
        "layers": layers,
        "pending_specs": len(pending),
        "pending_misses": sum(e.count for e in pending),
    }


def verify_all(store: KernelStore, *, correctness: bool = False) -> list[BundleReport]:
    """Check every read-only bundle the store reads, plus every local entry (static gates)."""
    local = BundleReport(f"{LOCAL_LAYER}:{store.directory}", problems=store.local_problems())
    reports = [local]
    for layer in store.layers:
        reports.append(verify_bundle(layer.root, store.trusted_keys, store.require_signed, correctness=correctness))
    return reports


def add_baseline(store: KernelStore, spec: AttentionSpec) -> str:
    """Store a plain untuned record for ``spec`` (so deployments can run AVO_ON_MISS=error before tuning)."""
    try:
        from ..kernels.baseline import baseline_record
    except ImportError as exc:
        raise RuntimeError(f"avo_inductor.kernels.baseline is unavailable: {exc}") from None
    return store.put(baseline_record(spec))
