"""KernelStore: the writable diskcache store and the read-only bundle layers behind it (the pending queue of
missed specs lives in the same diskcache, cache/pending.py).

Lookup order: the writable store (AVO_CACHE_DIR), then the fleet's remote cache (AVO_REMOTE_CACHE, read through
into the writable store flagged unverified), then each AVO_CACHE_PATH bundle, then shipped bundles; the first
valid record wins. With no record under a site's key, ``lookup_class`` offers a record of the same class
tuned at a neighbouring shape (cache/classes.py), found through an index by class key built from the store keys
once per store generation; whether it passed verification at a site's shape is remembered per (record, site
key). Records are stored as JSON text (never pickles) and pass the same static gates in every layer, so a corrupt,
tampered or half-written entry is a miss plus one warning, never a crash. When the writable directory cannot be
opened (read-only deployment) the store keeps working from its layers alone.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any

from ..parsing import finite_float, load_json
from ..settings import Settings, get_settings
from ..spec import AttentionSpec, HardwareKey, SoftwareKey, stable_hash, store_key
from ..artifact import KernelRecord
from ..kernels import render
from ..kernels.tiers import stale_note
from . import classes
from .layers import BundleLayer, CacheWarning, open_layers, warn_once  # noqa: F401 - CacheWarning re-exported
from .manifest import PARSE_ERRORS, BundleError, validate_record
from .pending import PendingEntry, PendingQueue
from .remote import RemoteStore
from .signing import load_trusted_keys

LOCAL_LAYER = "local"
_REC, _MARK, _USED, _GEN = "rec:", "mark:", "used:", "meta:generation"
_CLASS = "classv:"  # a class record's verdict at a site's shape: classv:<sha>|<site key>|<triton>|<torch>|<template>
_TOUCH_INTERVAL_S = 3600.0  # last-use stamps feed `prune --unused-days`; hourly resolution keeps lookups read-only
# What reading a damaged diskcache folder can raise: sqlite's "malformed"/"not a database", a value file gone or
# unreadable, text that is not UTF-8, and our refusal of pickled entries (ValueError).
DB_ERRORS = (OSError, sqlite3.Error, UnicodeDecodeError, ValueError)


def _json_only_disk() -> type:
    """A diskcache Disk that never unpickles: the store writes only str/int/float, so a pickled key or value in
    the folder is damage or tampering, and unpickling it would run its code. Value files must stay inside it."""
    import diskcache
    from diskcache.core import MODE_PICKLE

    class JsonOnlyDisk(diskcache.Disk):
        def get(self, key: Any, raw: bool) -> Any:
            if not raw:
                raise ValueError("pickled key refused (the avo store writes only text keys)")
            return super().get(key, raw)

        def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
            if mode == MODE_PICKLE:
                raise ValueError("pickled value refused (the avo store writes only JSON text)")
            if filename is not None and (not isinstance(filename, str) or Path(filename).is_absolute()
                                         or ".." in Path(filename).parts):
                raise ValueError(f"value file {filename!r} points outside the store")
            return super().fetch(mode, filename, value, read)

        def store(self, value: Any, read: bool, key: Any = None) -> Any:
            if not isinstance(value, (str, bytes, int, float)):
                raise TypeError(f"the avo store writes only text and numbers; got {type(value).__name__}")
            return super().store(value, read) if key is None else super().store(value, read, key=key)

    return JsonOnlyDisk


@dataclass(frozen=True)
class StoreHit:
    """A found record. ``needs_reverify``: tuned on other software (or imported unverified); the backend
    re-verifies it once with ``check.verify.verify_record`` and then calls ``store.mark_verified(key)``.

    ``serves``: set on a class hit (``lookup_class``), the site's spec, which the record (filed under ``key``,
    tuned at ``record.spec``) was chosen for; ``needs_reverify`` then means "not yet verified at that shape on
    this software", and the verdict goes to ``store.mark_class_verdict``, never to ``mark_verified``."""

    record: KernelRecord
    layer: str
    key: str = ""
    needs_reverify: bool = False
    serves: AttentionSpec | None = None

    @property
    def is_class(self) -> bool:
        return self.serves is not None


class KernelStore:
    """Kernel records by ``store_key(spec, hardware)`` across a writable store and read-only layers.

    directory: the writable diskcache folder (None = read-only store). layers: AVO_CACHE_PATH entries, each a
    bundle folder or a folder of bundle folders. shipped: also search bundles shipped with the package.
    trusted_keys / require_signed: signature policy applied to every layer's manifest.
    remote: the fleet's shared store (AVO_REMOTE_CACHE), asked on a local miss; promoted records are published to it.
    """

    db_errors = DB_ERRORS  # what reading or writing the diskcache can raise (also for cache/pending.py)

    def __init__(self, directory: str | Path | None, layers: Iterable[str | Path] = (), shipped: bool = True, *,
                 trusted_keys: Iterable[str] = (), require_signed: bool = False,
                 software: SoftwareKey | None = None, remote: RemoteStore | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.trusted_keys = frozenset(trusted_keys)
        self.require_signed = require_signed
        self.layers: list[BundleLayer] = open_layers([Path(p) for p in layers], shipped=shipped,
                                                     trusted_keys=self.trusted_keys, require_signed=require_signed)
        self._software = software
        self.remote = remote
        self._db_obj: Any = None
        self._db_failed = False
        self._db_error = ""
        self._touched: dict[str, float] = {}
        self._memory_marks: set[tuple[str, str, SoftwareKey]] = set()
        self._class_index: tuple[Any, dict[str, list[str]]] | None = None
        self._class_verdicts: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> KernelStore:
        s = settings or get_settings()
        keys = load_trusted_keys(s.trusted_keys, s.cache_dir)
        remote = RemoteStore(s.remote_cache, trusted_keys=keys, require_signed=s.require_signed,
                             signing_key=s.signing_key) if s.remote_cache else None
        return cls(s.cache_dir, s.cache_path, s.use_shipped, trusted_keys=keys, require_signed=s.require_signed,
                   remote=remote)

    # ---- plumbing --------------------------------------------------------------------------------
    @property
    def software(self) -> SoftwareKey:
        if self._software is None:
            self._software = SoftwareKey.current()
        return self._software

    @property
    def db(self) -> Any:
        """The diskcache.Cache, or None when the directory can't be opened for writing (warned once)."""
        if self._db_obj is None and not self._db_failed and self.directory is not None:
            import diskcache

            try:
                self._db_obj = diskcache.Cache(str(self.directory), timeout=60, disk=_json_only_disk())
            except DB_ERRORS as exc:
                self._db_failed = True
                self._db_error = (f"avo kernel store {self.directory} is not writable or is damaged ({exc}); "
                                  "using read-only layers only")
                warn_once("open", str(self.directory), self._db_error)
        return self._db_obj

    @property
    def writable(self) -> bool:
        return self.db is not None

    def _require_db(self) -> Any:
        if self.db is None:
            raise RuntimeError(f"the avo kernel store {self.directory} is read-only or unavailable; "
                               "set AVO_CACHE_DIR to a writable folder")
        return self.db

    def _db_get(self, key: str) -> Any:
        db = self.db
        if db is None:
            return None
        try:
            return db.get(key)
        except DB_ERRORS as exc:
            warn_once(str(self.directory), key, f"avo kernel store entry {key!r} unreadable ({exc}); treated as a miss")
            return None

    def _db_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` with it stripped; a damaged database gives those read before the damage, warned."""
        db = self.db
        if db is None:
            return []
        keys: list[str] = []
        try:
            for k in db.iterkeys():
                if isinstance(k, str) and k.startswith(prefix):
                    keys.append(k[len(prefix):])
        except DB_ERRORS as exc:
            warn_once(str(self.directory), "iterkeys", f"avo kernel store {self.directory} is damaged ({exc}); "
                       f"listing the {len(keys)} entr{'y' if len(keys) == 1 else 'ies'} read before the damage")
        return sorted(keys)

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()
        if self._db_obj is not None:
            self._db_obj.close()
            self._db_obj = None

    def __enter__(self) -> KernelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- lookup ----------------------------------------------------------------------------------
    def lookup(self, spec: AttentionSpec, hardware: HardwareKey | None = None) -> StoreHit | None:
        """The best record for ``spec`` on ``hardware`` (default: this device), or None on a miss."""
        return self.get(store_key(spec, hardware or HardwareKey.current()))

    def get(self, key: str, *, touch: bool = True) -> StoreHit | None:
        """The first valid record under ``key`` in layer order; corrupt entries are skipped with a warning."""
        for layer, record in self._candidates(key, remote=True):
            if touch and layer == LOCAL_LAYER:
                self._touch(key)
            return StoreHit(record, layer, key, self._needs_reverify(key, record, layer))
        return None

    def _candidates(self, key: str, remote: bool = False) -> Iterator[tuple[str, KernelRecord]]:
        raw = self._db_get(_REC + key)
        if raw is not None:
            try:
                yield LOCAL_LAYER, validate_record(raw.encode() if isinstance(raw, str) else raw, key)
            except (BundleError, *PARSE_ERRORS) as exc:
                warn_once(str(self.directory), key, f"avo kernel store: corrupt entry {key!r} in {self.directory} "
                           f"treated as a miss: {exc}")
        if remote and self.remote is not None:
            record = self.remote.fetch(key)  # None on a miss, a refusal or a dead server (each warned by fetch)
            if record is not None:
                self._keep_remote(key, record)
                yield self.remote.label, record
        for layer in self.layers:
            try:
                record = layer.get(key)
            except BundleError as exc:
                warn_once(layer.label, key, f"avo kernel store: bad entry {key!r} in {layer.label} skipped: {exc}")
                continue
            if layer.error:
                warn_once(layer.label, "", layer.error)
            if record is not None:
                yield layer.label, record

    def _keep_remote(self, key: str, record: KernelRecord) -> None:
        """Read-through: a record admitted from the remote cache is kept in the writable store flagged unverified
        (like a bundle record for other hardware), so it is verified once here and survives the server going away.
        A local record written meanwhile (a promotion in another process) is never replaced by the server's, and a
        kept copy that then fails verification is dropped again (``discard_read_through``)."""
        db = self.db
        if db is None:
            return
        try:
            with db.transact(retry=True):
                if db.get(_REC + key) is not None:
                    return
                self.put_many([record], unverified_keys=[key])
                db.set(f"{_MARK}{key}:{record.sha256}", json.dumps({"unverified": True, "read_through": True}))
        except DB_ERRORS as exc:
            warn_once(str(self.directory), "remote-keep", f"avo kernel store {self.directory}: a record from the "
                       f"remote cache could not be kept locally ({exc})")

    def discard_read_through(self, key: str, sha: str) -> bool:
        """Drop the local copy of a remote record (``_keep_remote``) with content hash ``sha`` that failed
        verification here, so it does not outlive the server's entry and shadow the layers after it in every later
        process. A record verified or promoted here is never dropped. Returns whether one was."""
        db = self.db
        if db is None:
            return False
        mark_key = f"{_MARK}{key}:{sha}"
        try:
            with db.transact(retry=True):
                mark, raw = self._mark(key, sha), db.get(_REC + key)
                if not (mark.get("unverified") and mark.get("read_through")) or raw is None:
                    return False
                try:
                    local = validate_record(raw.encode() if isinstance(raw, str) else raw, key)
                except (BundleError, *PARSE_ERRORS):
                    local = None
                if local is None or local.sha256 != sha:
                    return False
                db.delete(_REC + key)
                db.delete(mark_key)
                _bump_generation(db)
        except DB_ERRORS:
            return False
        return True

    # ---- class records ---------------------------------------------------------------------------
    def lookup_class(self, spec: AttentionSpec, hardware: HardwareKey | None = None, *,
                     serves: AttentionSpec | None = None,
                     min_margin: float = classes.MIN_MARGIN) -> StoreHit | None:
        """A record of ``spec``'s class tuned at a neighbouring shape (cache/classes.py), or None.

        serves: the site's spec (default ``spec``; an inference site asks the training class with its own spec).
        Candidates within reach are tried nearest first; one is skipped when its recorded speedup over the
        fallback (``KernelMetrics.fallback_margin``) is unknown or below ``min_margin``, or when it failed
        verification at the site's key on this software. The hit's ``needs_reverify`` is False only once it passed
        verification there.
        """
        hardware = hardware or HardwareKey.current()
        site = classes.class_of(spec, hardware)
        serves = serves or spec
        site_key = store_key(serves, hardware)
        own = store_key(spec, hardware)
        ranked = []
        for key in self._class_members(site.klass):
            tuned = classes.parse_key(key)
            if key != own and tuned is not None and classes.within_reach(site, tuned):
                ranked.append((classes.neighbour_rank(site, tuned), key))
        for _, key in sorted(ranked):
            hit = self.get(key, touch=False)
            margin = hit.record.metrics.fallback_margin if hit is not None else None
            if hit is None or margin is None or margin < min_margin:
                continue
            verdict = self.class_verdict(hit.record, site_key)
            if verdict is False:
                continue
            if hit.layer == LOCAL_LAYER:
                self._touch(key)
            return StoreHit(hit.record, hit.layer, key, needs_reverify=verdict is None, serves=serves)
        return None

    def _class_members(self, klass: str) -> list[str]:
        """Store keys of one class: local and layer keys indexed by class once per store generation (a lookup
        reads one counter, not every key)."""
        counter = self._db_get(_GEN)
        if self._class_index is None or self._class_index[0] != counter:
            index: dict[str, list[str]] = {}
            keys = self.local_keys() + [k for layer in self.layers for k in layer.keys()]
            for key in dict.fromkeys(keys):
                shape = classes.parse_key(key)
                if shape is not None:
                    index.setdefault(shape.klass, []).append(key)
            self._class_index = (counter, index)
        return self._class_index[1].get(klass, [])

    def _verdict_key(self, record: KernelRecord, site_key: str) -> str:
        """What a verdict holds for: the record, the site key and the software that ran it. A template record's
        sha256 names the template it was measured with, but the kernel that runs is rendered from the installed
        one, so that template's digest is part of the key too (an upgraded template is verified again)."""
        sw = self.software
        installed = ""
        if record.tier == "template" and record.genome is not None:
            installed = render.template_digest(str(record.genome.get("template", "flash_v1")))
        return f"{_CLASS}{record.sha256}|{site_key}|{sw.triton}|{sw.torch}|{installed}"

    def class_verdict(self, record: KernelRecord, site_key: str) -> bool | None:
        """Whether ``record`` passed (True) or failed (False) verification at the site key ``site_key`` on this
        software and, for a template record, with the installed template; None when it was never verified there."""
        vkey = self._verdict_key(record, site_key)
        if vkey in self._class_verdicts:
            return self._class_verdicts[vkey]
        raw = self._db_get(vkey)
        try:
            data = load_json(raw, f"class verdict {vkey!r}") if isinstance(raw, (str, bytes)) and raw else None
        except ValueError:
            return None  # a damaged verdict is no verdict: the record is verified again, never trusted
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            return None
        self._class_verdicts[vkey] = data["ok"]
        return bool(data["ok"])

    def class_verdict_key(self, hit: StoreHit) -> str:
        """The key the verdict of class hit ``hit`` at its site's shape is kept under (one check per key)."""
        if hit.serves is None:
            raise ValueError(f"a class verdict is kept for a class hit (lookup_class); {hit.key!r} is an exact hit")
        return self._verdict_key(hit.record, store_key(hit.serves, hit.record.hardware))

    def mark_class_verdict(self, hit: StoreHit, ok: bool, why: str = "", *, persist: bool = True) -> None:
        """Remember how the class hit ``hit`` fared at its site's shape on this software (in the writable store,
        so other processes skip the check too; in memory only when there is none, or with ``persist`` False: a
        check that could not run here, e.g. out of GPU memory, is tried again by the next process). A failure is
        remembered like a pass: that record is not verified again for that site key. Records and the generation
        are unchanged."""
        vkey = self.class_verdict_key(hit)
        self._class_verdicts[vkey] = ok
        if self.db is None or not persist:
            return
        try:
            self.db.set(vkey, json.dumps({"ok": ok, "record": hit.key, "why": why[:500], "at": time.time()}))
        except DB_ERRORS as exc:
            warn_once(str(self.directory), vkey, f"avo kernel store {self.directory}: a class verdict could not be "
                       f"saved ({exc}); kept for this process")

    def _mark(self, key: str, sha: str) -> dict[str, Any]:
        raw = self._db_get(f"{_MARK}{key}:{sha}")
        try:
            data = load_json(raw, f"mark of {key!r}") if isinstance(raw, (str, bytes)) and raw else {}
        except ValueError:
            return {}  # a damaged mark means "not verified here": the record is verified again, never trusted
        return data if isinstance(data, dict) else {}

    def _needs_reverify(self, key: str, record: KernelRecord, layer: str = LOCAL_LAYER) -> bool:
        """Records in the writable store were verified on import or by the search; so were the bundles shipped
        inside the package (promoted by the search on the GPU and software they name, installed with the code
        that would check them): either is trusted as is on the software it was verified on. Any other read-only
        layer's records (AVO_CACHE_PATH, the remote cache) only passed hash / signature / grammar checks, so they
        are compiled and checked once on this host; so is any record on software other than its own."""
        mark = self._mark(key, record.sha256)
        sw = self.software
        if (key, record.sha256, sw) in self._memory_marks:
            return False
        if mark.get("unverified"):
            return True
        if self.verified_as_is(record, layer):
            return False
        try:
            marked = {SoftwareKey.from_dict(s) for s in mark.get("software", ())}
        except PARSE_ERRORS:
            marked = set()
        return sw not in marked

    def verified_as_is(self, record: KernelRecord, layer: str) -> bool:
        """Whether ``record``, found in ``layer``, was verified (ragged cases, held-out shapes, its target) on this
        software by whoever made it: a record of a verified layer on its own software, whose template is unchanged."""
        sw = self.software
        return self._verified_layer(layer) and (sw == record.software or sw in record.verified_software) \
            and stale_note(record) is None  # a template record whose template changed is re-verified

    def _verified_layer(self, label: str) -> bool:
        """The writable store and the package's shipped bundles: layers whose records were verified where they were
        made. By the layer objects, not the label's text: an AVO_CACHE_PATH folder named like a shipped label
        stays an untrusted layer."""
        if label == LOCAL_LAYER:
            return True
        named = [layer for layer in self.layers if layer.label == label]
        return bool(named) and all(layer.shipped for layer in named)

    def _touch(self, key: str) -> None:
        now = time.time()
        if now - self._touched.get(key, 0.0) < _TOUCH_INTERVAL_S or self.db is None:
            return
        self._touched[key] = now
        try:
            self.db.set(_USED + key, now)
        except DB_ERRORS:
            pass  # a usage stamp is a hint for prune; losing one is harmless

    # ---- writes (writable layer only) ---------------------------------------------------------------
    def put(self, record: KernelRecord, *, unverified: bool = False, publish: bool = False) -> str:
        """Store ``record`` under its key; ``unverified`` records are re-verified on first use. ``publish`` (the
        search's promotion): also write it to the remote cache, if one is configured."""
        unverified_keys = {store_key(record.spec, record.hardware)} if unverified else ()
        key = self.put_many([record], unverified_keys=unverified_keys)[0]
        if publish and self.remote is not None:
            self.remote.publish([record])
        return key

    def put_many(self, records: Iterable[KernelRecord], unverified_keys: Iterable[str] = ()) -> list[str]:
        """Store several records in one transaction (all or nothing), bumping the generation once."""
        db = self._require_db()
        unverified = set(unverified_keys)
        items = [(store_key(r.spec, r.hardware), r) for r in records]
        payloads = [(k, r, json.dumps(r.to_dict(), sort_keys=True)) for k, r in items]
        with db.transact(retry=True):
            for key, record, payload in payloads:
                db.set(_REC + key, payload)
                mark_key = f"{_MARK}{key}:{record.sha256}"
                if key in unverified:
                    db.set(mark_key, json.dumps({"unverified": True}))
                else:
                    db.delete(mark_key)
            _bump_generation(db)
        return [k for k, _ in items]

    def remove(self, key: str) -> bool:
        """Delete ``key`` from the writable store; ValueError if it lives only in a read-only layer."""
        db = self._require_db()
        with db.transact(retry=True):
            found = db.delete(_REC + key)
            db.delete(_USED + key)
            if found:
                _bump_generation(db)
        if not found:
            for layer in self.layers:
                if key in layer:
                    raise ValueError(f"{key!r} is in the read-only layer {layer.label}; it cannot be removed "
                                     "(drop the bundle from AVO_CACHE_PATH or set AVO_USE_SHIPPED=0)")
        return bool(found)

    def mark_verified(self, key: str, software: SoftwareKey | None = None, *, sha: str | None = None) -> bool:
        """Record that the record now served under ``key`` passed verification on ``software`` (default: now).

        Local records get ``software`` added to ``verified_software``; read-only ones get a side mark in the
        writable store (in memory only if there is none). ``sha``: the content hash of the record that was
        verified; when the record served now is another one (a remote entry replaced between the check and this
        call, a concurrent write), nothing is marked. Returns False if nothing was marked.
        """
        hit = self.get(key, touch=False)
        if hit is None or (sha is not None and hit.record.sha256 != sha):
            return False
        sw = software or self.software
        record = hit.record
        self._memory_marks.add((key, record.sha256, sw))
        db = self.db
        if db is None:
            return True
        mark_key = f"{_MARK}{key}:{record.sha256}"
        with db.transact(retry=True):
            if hit.layer == LOCAL_LAYER:
                verified = record.verified_software + (() if sw in record.verified_software else (sw,))
                db.set(_REC + key,
                       json.dumps(record.with_changes(verified_software=verified).to_dict(), sort_keys=True))
                db.delete(mark_key)
            else:
                marked = [s for s in self._mark(key, record.sha256).get("software", []) if s != sw.to_dict()]
                db.set(mark_key, json.dumps({"unverified": False, "software": [*marked, sw.to_dict()]}))
            _bump_generation(db)
        return True

    def generation(self) -> str:
        """Changes whenever a record is written, removed or marked verified (in any process), or layers change.

        Pending-queue and last-use updates do not change it: they never change what a lookup returns. Nor do class
        verdicts (``mark_class_verdict``): they change no record, and a compiled graph carries the kernel id it
        chose, so no cache keyed on the generation can serve a stale choice.
        """
        counter = 0
        db = self.db
        if db is not None:
            try:
                counter = int(db.get(_GEN, 0))
            except (*DB_ERRORS, TypeError, OverflowError):
                counter = -1
        layers = [(layer.label, stable_hash(layer.manifest.to_dict()) if layer.manifest else layer.error)
                  for layer in self.layers]
        return f"{counter}-{stable_hash([str(self.directory), layers])[:12]}"

    # ---- listing -----------------------------------------------------------------------------------
    def local_keys(self) -> list[str]:
        return self._db_keys(_REC)

    def iter_records(self, include_shadowed: bool = False) -> Iterator[StoreHit]:
        """Every valid record, local first then layers; a key shadowed by an earlier layer only if asked."""
        seen: set[str] = set()
        sources: list[tuple[str, list[str]]] = [(LOCAL_LAYER, self.local_keys())]
        sources += [(layer.label, layer.keys()) for layer in self.layers]
        for label, keys in sources:
            for key in keys:
                if key in seen and not include_shadowed:
                    continue
                record = self._record_in(label, key)
                if record is None:
                    continue
                seen.add(key)
                yield StoreHit(record, label, key, self._needs_reverify(key, record))

    def _record_in(self, label: str, key: str) -> KernelRecord | None:
        for layer_label, record in self._candidates(key):
            if layer_label == label:
                return record
        return None

    def local_problems(self) -> list[str]:
        """Every local entry that fails the static gates, as ``key: reason`` (for `verify --all`); a store folder
        that cannot be opened at all is one problem."""
        if self.directory is not None and self.directory.exists() and self.db is None:
            return [self._db_error or f"avo kernel store {self.directory} cannot be opened"]
        problems = []
        for key in self.local_keys():
            raw = self._db_get(_REC + key)
            if raw is None:
                problems.append(f"{key}: unreadable")
                continue
            try:
                validate_record(raw.encode() if isinstance(raw, str) else raw, key)
            except (BundleError, *PARSE_ERRORS) as exc:
                problems.append(f"{key}: {exc}")
        return problems

    def last_used(self, key: str) -> float | None:
        value = self._db_get(_USED + key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        try:
            return finite_float("last use", value)
        except ValueError:
            return None  # a damaged stamp: prune falls back to the record's creation time

    # ---- pending queue (cache/pending.py) ----------------------------------------------------------
    def enqueue_pending(self, spec: AttentionSpec, hardware: HardwareKey | None = None,
                        origin: str | None = None) -> PendingEntry | None:
        """Count a miss for ``spec`` (atomic across processes); None when the store is read-only."""
        return PendingQueue(self).enqueue(spec, hardware, origin)

    def pending(self) -> list[PendingEntry]:
        """Missed specs, most frequent first."""
        return PendingQueue(self).entries()

    def clear_pending(self, keys: Iterable[str] | None = None) -> int:
        """Drop the given pending keys (all when None); returns how many were removed."""
        return PendingQueue(self).clear(keys)


def _bump_generation(db: Any) -> None:
    """Advance the change counter; a damaged one (not an integer) restarts from the clock, which still differs
    from any value a reader cached (small counters), instead of failing every write."""
    try:
        db.incr(_GEN, 1, default=0, retry=True)
    except (TypeError, ValueError, OverflowError):
        db.set(_GEN, int(time.time() * 1000))
