"""The pending queue: specs that missed the store at compile time, counted per key, waiting for a search.

It lives in the writable store's diskcache (keys ``pending:<store key>``) so that compiles in any process count
into one queue atomically, and ``search run --pending`` / ``cache pending`` read it. A corrupt entry is reset with a
warning; a read-only store queues nothing (the compile still falls back).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..parsing import bounded_int, finite_float, load_json
from ..spec import AttentionSpec, HardwareKey, store_key
from .layers import warn_once
from .manifest import PARSE_ERRORS

if TYPE_CHECKING:
    from .store import KernelStore

PREFIX = "pending:"


@dataclass(frozen=True)
class PendingEntry:
    """A spec that missed: how often, from which models, when first and last."""

    key: str
    spec: AttentionSpec
    hardware: HardwareKey
    count: int
    origins: tuple[str, ...]
    first_seen: float
    last_seen: float

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "spec": self.spec.to_dict(), "hardware": self.hardware.to_dict(),
                "count": self.count, "origins": list(self.origins), "first_seen": self.first_seen,
                "last_seen": self.last_seen}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingEntry:
        origins = data.get("origins", [])
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise ValueError(f"pending origins must be a list of strings; got {origins!r:.80}")
        return cls(str(data["key"]), AttentionSpec.from_dict(data["spec"]), HardwareKey.from_dict(data["hardware"]),
                   bounded_int("pending count", data["count"]), tuple(origins),
                   finite_float("first_seen", data["first_seen"]), finite_float("last_seen", data["last_seen"]))


class PendingQueue:
    """The queue in ``store``'s writable diskcache (reads and writes go through the store's guarded accessors)."""

    def __init__(self, store: KernelStore) -> None:
        self.store = store

    def enqueue(self, spec: AttentionSpec, hardware: HardwareKey | None = None,
                origin: str | None = None) -> PendingEntry | None:
        """Count a miss for ``spec`` (atomic across processes); None when the store is read-only or the write
        failed (warned once)."""
        db = self.store.db
        if db is None:
            return None
        hardware = hardware or HardwareKey.current()
        key, now = store_key(spec, hardware), time.time()
        try:
            with db.transact(retry=True):
                entry = self._entry(key)
                if entry is None:
                    entry = PendingEntry(key, spec, hardware, 0, (), now, now)
                origins = entry.origins + ((origin,) if origin and origin not in entry.origins else ())
                entry = PendingEntry(key, entry.spec, entry.hardware, entry.count + 1, origins, entry.first_seen, now)
                db.set(PREFIX + key, json.dumps(entry.to_dict(), sort_keys=True))
        except self.store.db_errors as exc:
            warn_once(str(self.store.directory), "enqueue", f"avo kernel store {self.store.directory}: a miss could "
                      f"not be queued ({exc})")
            return None
        return entry

    def _entry(self, key: str) -> PendingEntry | None:
        raw = self.store._db_get(PREFIX + key)
        if raw is None:
            return None
        try:
            data = load_json(raw, f"pending entry {key!r}")
            if not isinstance(data, dict):
                raise ValueError(f"must be a JSON object; got {type(data).__name__}")
            return PendingEntry.from_dict(data)
        except PARSE_ERRORS as exc:
            warn_once(str(self.store.directory), PREFIX + key,
                      f"avo pending entry {key!r} is corrupt and was reset: {exc}")
            return None

    def entries(self) -> list[PendingEntry]:
        """Missed specs, most frequent first."""
        keys = self.store._db_keys(PREFIX)
        found = [e for e in (self._entry(k) for k in keys) if e is not None]
        return sorted(found, key=lambda e: (-e.count, e.key))

    def clear(self, keys: Iterable[str] | None = None) -> int:
        """Drop the given pending keys (all when None); returns how many were removed."""
        db = self.store.db
        if db is None:
            return 0
        keys = self.store._db_keys(PREFIX) if keys is None else list(keys)
        with db.transact(retry=True):
            return sum(1 for k in keys if db.delete(PREFIX + k))
