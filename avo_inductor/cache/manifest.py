"""Bundle format: ``manifest.json`` (+ optional ``manifest.sig``) and ``records/<key-hash>.json``.

Shared by the read-only store layers and by bundle import/verify so both apply the same checks: path safety,
size caps, per-file sha256, signature policy and per-record validation (parse, sha, trust tier and grammar, key).
"""
from __future__ import annotations

import getpass
import hashlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from collections.abc import Iterable
from typing import Any

from ..version import __version__
from ..parsing import MAX_INT, bounded_int, finite_float, load_json
from ..spec import HardwareKey, SoftwareKey, store_key
from ..artifact import KernelRecord
from .signing import Signature, fingerprint, verify_signature

BUNDLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
RECORDS_DIR = "records"
# Caps: a record is <= 256 KiB of source plus JSON escaping, so 2 MiB per file is generous; the totals stop
# a hostile bundle from filling the disk or the CPU before any check has a chance to refuse it.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_FILES = 20_000
MAX_TOTAL_BYTES = 512 * 1024 * 1024
_SIG_DOMAIN = b"avo-inductor bundle manifest v1\n"
# What parsing untrusted JSON (or a record built from it) may raise besides ValueError: a wrong type where an
# object was expected, an integer too large for a float, nesting past the recursion limit, a missing field.
PARSE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, MemoryError, KeyError, AttributeError)


class BundleError(ValueError):
    """A bundle or one of its entries failed a check; the message names the file and the offending value."""


def record_filename(key: str) -> str:
    """Bundle-relative path of the record stored under ``key`` (hashed: keys contain '/')."""
    return f"{RECORDS_DIR}/{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_relpath(name: str) -> PurePosixPath:
    """Validate a bundle-relative path (manifest entry or tar member): no absolute, '..', backslash or NUL."""
    if not name or "\x00" in name or "\\" in name:
        raise BundleError(f"unsafe path {name!r} in bundle")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part == ".." for part in path.parts) or (path.parts and ":" in path.parts[0]):
        raise BundleError(f"unsafe path {name!r} in bundle (absolute or escaping the bundle folder)")
    parts = [p for p in path.parts if p != "."]
    if not parts:
        raise BundleError(f"unsafe path {name!r} in bundle")
    return PurePosixPath(*parts)


def read_capped(path: Path, root: Path, cap: int = MAX_FILE_BYTES) -> bytes:
    """Read a file inside ``root``; refuses links resolving outside it and files over ``cap`` bytes."""
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise BundleError(f"{path.relative_to(root) if path.is_relative_to(root) else path} resolves to {real}, "
                          f"outside the bundle {root}")
    size = real.stat().st_size
    if size > cap:
        raise BundleError(f"{path.name} is {size} bytes, over the {cap}-byte limit")
    with open(real, "rb") as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise BundleError(f"{path.name} grew past the {cap}-byte limit while being read")
    return data


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class RecordEntry:
    key: str
    file: str
    kernel_id: str


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and who made it; ``canonical_bytes`` is what the signature covers."""

    files: tuple[FileEntry, ...]
    records: tuple[RecordEntry, ...]
    hardware: tuple[HardwareKey, ...] = ()
    software: tuple[SoftwareKey, ...] = ()
    creator: str = ""
    created_at: float = field(default_factory=time.time)
    format: int = BUNDLE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "created_at": self.created_at,
            "creator": self.creator,
            "hardware": [h.to_dict() for h in self.hardware],
            "software": [s.to_dict() for s in self.software],
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "records": [{"key": r.key, "file": r.file, "kernel_id": r.kernel_id} for r in self.records],
        }

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def signing_payload(self) -> bytes:
        """Domain-separated bytes the Ed25519 signature covers (so a signature can't be replayed elsewhere)."""
        return _SIG_DOMAIN + self.canonical_bytes()

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and validate; BundleError (never KeyError/TypeError) on anything malformed or too new."""
        if not isinstance(data, dict):
            raise BundleError(f"manifest must be a JSON object; got {type(data).__name__}")
        try:
            fmt = _json_int("manifest format", data["format"], minimum=None)
            if fmt > BUNDLE_FORMAT:
                raise BundleError(f"bundle format {fmt} is newer than this avo_inductor understands ({BUNDLE_FORMAT}); "
                                  "upgrade avo_inductor to import it")
            if fmt < 1:
                raise BundleError(f"bundle format {fmt} is invalid")
            files = tuple(FileEntry(_text("file path", f["path"]), _text("file sha256", f["sha256"]),
                                    _json_int(f"size of {str(f['path'])[:80]!r}", f["size"]))
                          for f in _items("files", data["files"]))
            records = tuple(RecordEntry(_text("record key", r["key"]), _text("record file", r["file"]),
                                        _text("record kernel_id", r.get("kernel_id", "")))
                            for r in _items("records", data["records"]))
            manifest = cls(files=files, records=records,
                           hardware=tuple(HardwareKey.from_dict(h)
                                          for h in _items("hardware", data.get("hardware", []))),
                           software=tuple(SoftwareKey.from_dict(s)
                                          for s in _items("software", data.get("software", []))),
                           creator=_text("creator", data.get("creator", "")),
                           created_at=finite_float("created_at", data.get("created_at", 0.0)),
                           format=fmt)
        except PARSE_ERRORS as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"manifest is malformed: {type(exc).__name__}: {_short(exc)}") from None
        manifest.check_consistent()
        return manifest

    def check_consistent(self) -> None:
        """Every path safe and listed once; every record's file listed; caps on counts and sizes."""
        if len(self.files) > MAX_FILES:
            raise BundleError(f"manifest lists {len(self.files)} files, over the limit of {MAX_FILES}")
        seen: set[str] = set()
        for f in self.files:
            rel = str(safe_relpath(f.path))
            if rel in (MANIFEST_NAME, SIGNATURE_NAME) or rel in seen:
                raise BundleError(f"manifest lists {f.path!r} twice or lists a reserved name")
            if f.size < 0 or f.size > MAX_FILE_BYTES:
                raise BundleError(f"manifest entry {f.path!r} has size {f.size}, over the {MAX_FILE_BYTES}-byte limit")
            if len(f.sha256) != 64:
                raise BundleError(f"manifest entry {f.path!r} has a malformed sha256 {f.sha256!r}")
            seen.add(rel)
        if sum(f.size for f in self.files) > MAX_TOTAL_BYTES:
            raise BundleError(f"bundle holds more than {MAX_TOTAL_BYTES} bytes")
        keys: set[str] = set()
        for r in self.records:
            if str(safe_relpath(r.file)) not in seen:
                raise BundleError(f"record {r.key!r} points at {r.file!r}, which the manifest's file list lacks")
            if r.key in keys:
                raise BundleError(f"record key {r.key!r} listed twice")
            keys.add(r.key)

    def file(self, path: str) -> FileEntry:
        rel = str(safe_relpath(path))
        for f in self.files:
            if str(safe_relpath(f.path)) == rel:
                return f
        raise BundleError(f"{path!r} is not listed in the manifest")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "…"


def _json_int(name: str, value: Any, *, minimum: int | None = 0) -> int:
    """A JSON integer (not a float, bool or numeric string) within [minimum, MAX_INT]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"manifest {name} must be an integer; got {type(value).__name__} {str(value)[:24]}")
    return bounded_int(name, value, minimum=minimum)


def _out_of_range_int(data: Any) -> int | None:
    """The first integer in parsed JSON beyond +-MAX_INT (walked iteratively; depth is capped by load_json)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
            return item
    return None


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BundleError(f"manifest {name} must be a string; got {type(value).__name__}")
    return value


def _items(name: str, value: Any) -> list[dict[str, Any]]:
    """A manifest list of JSON objects (a dict or string here would iterate keys or characters)."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BundleError(f"manifest {name} must be a list of objects; got {type(value).__name__}")
    return value


def default_creator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} avo_inductor {__version__}"


def read_manifest(root: Path) -> tuple[Manifest, Signature | None]:
    """Parse ``root/manifest.json`` and ``root/manifest.sig`` (if any); BundleError on any problem."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: no {MANIFEST_NAME}")
    raw = read_capped(path, root, MAX_MANIFEST_BYTES)
    try:
        data = load_json(raw, str(path))  # NaN/Infinity, 1e999 and deep nesting refused, not parsed
    except ValueError as exc:  # UnicodeDecodeError included
        raise BundleError(f"{_short(exc)} (truncated or tampered?)") from None
    manifest = Manifest.from_dict(data)
    sig_path = root / SIGNATURE_NAME
    sig = None
    if sig_path.exists() or sig_path.is_symlink():
        try:
            sig = Signature.from_bytes(read_capped(sig_path, root, 64 * 1024))
        except ValueError as exc:
            raise BundleError(str(exc)) from None
    return manifest, sig


def check_signature(manifest: Manifest, sig: Signature | None, trusted: Iterable[str],
                    require_signed: bool) -> str | None:
    """Apply the signature policy; returns the signer's key (hex) or None when unsigned and allowed.

    A present signature must always be valid; when trusted keys are configured the signer must be one of them;
    when signatures are required an unsigned bundle, or a required one with no trusted keys, is refused.
    """
    trusted = frozenset(trusted)
    if sig is None:
        if require_signed:
            raise BundleError("bundle is unsigned but signatures are required (AVO_REQUIRE_SIGNED=1)")
        if trusted:
            # Otherwise deleting manifest.sig would get a bundle from an unknown signer past the trusted-key check.
            raise BundleError("bundle is unsigned but trusted keys are configured: only bundles signed by one of "
                              f"{sorted(fingerprint(k) for k in trusted)} are accepted")
        return None
    if not verify_signature(manifest.signing_payload(), sig):
        raise BundleError(f"bad signature: manifest.sig by key {fingerprint(sig.public_key)} does not match the "
                          "manifest (tampered manifest or signature)")
    if trusted and sig.public_key not in trusted:
        raise BundleError(f"bundle signed by unknown key {fingerprint(sig.public_key)}; trusted keys: "
                          f"{sorted(fingerprint(k) for k in trusted)}")
    if require_signed and not trusted:
        raise BundleError("signatures are required but no trusted keys are configured (AVO_TRUSTED_KEYS or "
                          "`python -m avo_inductor.cache trust`)")
    return sig.public_key


def validate_record(raw: bytes | dict[str, Any], expected_key: str | None = None, *,
                    source_needs_signature: bool = False) -> KernelRecord:
    """Parse a stored record and apply the static gates; BundleError naming the first failed check.

    Checks: JSON, fields and format (KernelRecord.from_dict), content sha256, the trust tier's static gate
    (``kernels.loader.check_record``: a template record renders from the installed template; a source record
    passes the kernel-source grammar with every function the launcher will call, and is refused when
    ``source_needs_signature``), and that the record really belongs under ``expected_key``.
    """
    if isinstance(raw, bytes):
        try:
            raw = load_json(raw, "record")  # NaN/Infinity, 1e999 and deep nesting refused, not parsed
        except ValueError as exc:  # UnicodeDecodeError included
            raise BundleError(f"{_short(exc)} (truncated or corrupt?)") from None
    if not isinstance(raw, dict):
        raise BundleError(f"record must be a JSON object; got {type(raw).__name__}")
    huge = _out_of_range_int(raw)  # no size, count or length in a record comes near 2^53
    if huge is not None:
        raise BundleError(f"record holds the integer {str(huge)[:24]}…, beyond {MAX_INT}")
    try:
        record = KernelRecord.from_dict(raw)
    except PARSE_ERRORS as exc:  # from_dict of hostile data must be a refusal of this record, never a crash
        raise BundleError(f"record rejected: {type(exc).__name__}: {_short(exc)}") from None
    # The loader's static gate by trust tier (template: renders from the installed template; source: the grammar).
    from ..kernels.loader import check_record

    try:
        record = check_record(record, source_needs_signature=source_needs_signature)
    except (*PARSE_ERRORS, SyntaxError) as exc:  # deeply nested source: RecursionError/MemoryError in the parser
        raise BundleError(f"kernel {record.kernel_id} rejected: {_short(exc)}") from None
    try:
        actual_key = store_key(record.spec, record.hardware)
    except PARSE_ERRORS as exc:
        raise BundleError(f"kernel {record.kernel_id} has no valid store key: {_short(exc)}") from None
    if expected_key is not None and actual_key != expected_key:
        raise BundleError(f"record listed under key {expected_key!r} is for {actual_key!r}")
    return record


def record_bytes(record: KernelRecord) -> bytes:
    """Deterministic JSON of a record as written into bundles."""
    return (json.dumps(record.to_dict(), indent=1, sort_keys=True) + "\n").encode()

