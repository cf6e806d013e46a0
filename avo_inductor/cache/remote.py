"""A shared store for a fleet: kernel records read through from, and published to, a Redis server.

``AVO_REMOTE_CACHE=redis://host:port/db`` (like Inductor's remote cache). Each server entry is a one-record bundle
(manifest, optional Ed25519 signature, record bytes), so what comes back from the server passes the bundle gates:
the signature policy, the manifest's sha256/size of the record, the trust tier's static gate (kernel-source grammar
or template re-render) and the store key. The KernelStore then keeps an admitted record locally flagged unverified,
so it is compiled and checked once on this host before its first use. Nothing from the server is ever executed
before that. An unreachable or misbehaving server costs one warning and at most one command deadline; the local
store keeps working.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..artifact import KernelRecord
from ..parsing import load_json
from ..settings import redacted_url
from ..spec import store_key
from .layers import admit_record_bytes, warn_once
from .manifest import (PARSE_ERRORS, BundleError, FileEntry, Manifest, RecordEntry, check_signature,
                       default_creator, record_bytes, record_filename, sha256_bytes)
from .signing import Signature, load_private_key, sign_bytes

ENTRY_FORMAT = 1
KEY_PREFIX = "avo:v1:rec:"
# One record is <= 2 MiB (manifest.MAX_FILE_BYTES); the envelope adds a small manifest. Reads are capped with
# GETRANGE so a hostile server cannot make a lookup allocate more than this.
MAX_ENTRY_BYTES = 3 * 1024 * 1024
# A lookup sits on the compile path: a server that does not answer must cost well under a second, once.
CONNECT_TIMEOUT_S = 0.5
SOCKET_TIMEOUT_S = 1.0
# The socket timeout bounds each read, not a reply: a server that trickles an entry a byte per second would hold a
# compile for days. Every command runs in a daemon thread and is abandoned (server marked down) past this.
COMMAND_DEADLINE_S = 3.0
RETRY_AFTER_S = 60.0  # after a failure the server is not asked again for this long (one warning, no stall per site)
SCHEMES = ("redis", "rediss", "unix")


def check_url(url: str) -> str:
    """``url`` if it is a Redis URL this layer can open; ValueError naming it otherwise."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in SCHEMES or not (parsed.netloc or parsed.path):
        raise ValueError(f"AVO_REMOTE_CACHE must be a redis://host:port/db URL (or rediss://, unix://); got {url!r}")
    return url.strip()


def encode_entry(record: KernelRecord, signing_key: Any = None, creator: str | None = None) -> bytes:
    """The server entry for ``record``: a one-record bundle as JSON, signed with ``signing_key`` (an Ed25519
    private key) when given, exactly as ``cache sign`` signs a bundle manifest."""
    key = store_key(record.spec, record.hardware)
    rel, data = record_filename(key), record_bytes(record)
    manifest = Manifest(files=(FileEntry(rel, sha256_bytes(data), len(data)),),
                        records=(RecordEntry(key, rel, record.kernel_id),), hardware=(record.hardware,),
                        software=(record.software,), creator=creator or default_creator())
    sig = sign_bytes(manifest.signing_payload(), signing_key) if signing_key is not None else None
    envelope = {"avo_remote": ENTRY_FORMAT, "manifest": manifest.to_dict(),
                "signature": json.loads(sig.to_bytes()) if sig is not None else None, "record": data.decode()}
    return json.dumps(envelope, sort_keys=True).encode()


def decode_entry(raw: bytes, key: str, trusted_keys: frozenset[str], require_signed: bool) -> KernelRecord:
    """The record in a server entry after the bundle gates; BundleError with the reason for any refusal.

    Same order and functions as a bundle layer: manifest parse, signature policy, the record's sha256/size
    against the manifest, then ``validate_record`` (tier gate, grammar, key) via ``admit_record_bytes``."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise BundleError(f"entry is over the {MAX_ENTRY_BYTES}-byte limit")
    try:
        data = load_json(raw, "remote entry")
    except ValueError as exc:  # UnicodeDecodeError included
        raise BundleError(f"entry is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict) or data.get("avo_remote") != ENTRY_FORMAT:
        raise BundleError(f"entry is not an avo remote entry of format {ENTRY_FORMAT}")
    manifest = Manifest.from_dict(data.get("manifest"))
    sig: Signature | None = None
    if data.get("signature") is not None:
        try:
            sig = Signature.from_bytes(json.dumps(data["signature"]).encode())
        except (ValueError, TypeError) as exc:
            raise BundleError(str(exc)) from None
    signer = check_signature(manifest, sig, trusted_keys, require_signed)
    if [r.key for r in manifest.records] != [key]:
        raise BundleError(f"entry under {key!r} lists {[r.key for r in manifest.records]!r:.200}")
    entry = manifest.file(manifest.records[0].file)
    text = data.get("record")
    if not isinstance(text, str):
        raise BundleError(f"entry's record must be JSON text; got {type(text).__name__}")
    record = admit_record_bytes(text.encode(), entry.path, entry.sha256, entry.size, key,
                                trusted_keys=trusted_keys, signer=signer)
    if manifest.hardware and record.hardware not in manifest.hardware:
        raise BundleError(f"record hardware {record.hardware.slug} is not in the entry manifest's list")
    return record


class RemoteStore:
    """The Redis side of a KernelStore: ``fetch`` admits a record through the bundle gates, ``publish`` writes.

    trusted_keys / require_signed: the store's signature policy, applied to every entry as to every bundle.
    signing_key: path of the Ed25519 private key published entries are signed with (None: unsigned).
    client: an existing redis client (tests, or a caller that manages connections); default one from ``url``.
    """

    def __init__(self, url: str, *, trusted_keys: Iterable[str] = (), require_signed: bool = False,
                 signing_key: str | Path | None = None, client: Any = None) -> None:
        self.url = check_url(url)
        self.label = f"remote:{redacted_url(self.url)}"
        self.trusted_keys = frozenset(trusted_keys)
        self.require_signed = require_signed
        self.signing_key = Path(signing_key) if signing_key is not None else None
        self.refused: dict[str, str] = {}  # key -> why the server's entry was refused (for reports and tests)
        # key -> when a refused entry is read again: a compile looks a key up once per site and per class
        # neighbour, and re-reading (up to MAX_ENTRY_BYTES) and re-checking the same bad entry each time is waste
        self._refused_until: dict[str, float] = {}
        self._client = client
        self._unavailable = False  # the redis package is missing: the layer is off for this process
        self._down_until = 0.0

    # ---- connection --------------------------------------------------------------------------------
    def _redis(self) -> Any:
        """The client, or None while the server is known down or the package is missing (warned once)."""
        if self._unavailable or time.monotonic() < self._down_until:
            return None
        if self._client is None:
            try:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry
            except ImportError:
                self._unavailable = True
                warn_once(self.label, "import", f"AVO_REMOTE_CACHE is set but the 'redis' package is not installed "
                          f"(pip install 'avo_inductor[remote]'); {redacted_url(self.url)} is not used")
                return None
            # One attempt per command: the client's retries with backoff would stall a compile for seconds.
            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                                socket_timeout=SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        return self._client

    def _failed(self, what: str, exc: BaseException) -> None:
        """Back off for RETRY_AFTER_S and warn once: a lookup per attention site must not each pay a timeout."""
        self._down_until = time.monotonic() + RETRY_AFTER_S
        warn_once(self.label, "unreachable", f"avo remote cache {redacted_url(self.url)} unreachable during {what} "
                  f"({type(exc).__name__}: {str(exc)[:200]}); using the local store only")

    def _call(self, command: Any, *args: Any) -> Any:
        """``command(*args)`` (one client command) within COMMAND_DEADLINE_S; past it the client is abandoned to the
        thread still reading (a new one is made after the back-off) and TimeoutError (an OSError) is raised."""
        result: list[Any] = []

        def run() -> None:
            try:
                result.append((True, command(*args)))
            except BaseException as exc:  # handed to the caller's except clauses
                result.append((False, exc))

        worker = threading.Thread(target=run, name="avo-remote-cache", daemon=True)
        worker.start()
        worker.join(COMMAND_DEADLINE_S)
        if not result:
            self._client = None
            raise TimeoutError(f"no complete reply within {COMMAND_DEADLINE_S:g}s")
        ok, value = result[0]
        if not ok:
            raise value
        return value

    @property
    def _errors(self) -> tuple[type[BaseException], ...]:
        """What a dead or unreachable server raises (a server's refusal of one command is ResponseError)."""
        import redis

        return (redis.ConnectionError, redis.TimeoutError, OSError)

    def _refuse(self, key: str, reason: str) -> None:
        self.refused[key] = reason
        self._refused_until[key] = time.monotonic() + RETRY_AFTER_S
        warn_once(self.label, key, f"avo remote cache: entry {key!r} on {redacted_url(self.url)} refused: {reason}")

    # ---- reads ------------------------------------------------------------------------------------
    def fetch(self, key: str) -> KernelRecord | None:
        """The server's record under ``key`` after the bundle gates; None on a miss, a refusal (warned, reason in
        ``refused``) or an unreachable server (warned once). A refused key is not read again for RETRY_AFTER_S
        (a fleet may replace the entry with a good one; it is picked up after that)."""
        if time.monotonic() < self._refused_until.get(key, 0.0):
            return None
        client = self._redis()
        if client is None:
            return None
        import redis

        try:
            raw = self._call(client.getrange, KEY_PREFIX + key, 0, MAX_ENTRY_BYTES)
        except self._errors as exc:
            self._failed("a lookup", exc)
            return None
        except redis.RedisError as exc:  # e.g. WRONGTYPE: something else stored under the key
            self._refuse(key, f"the server answered {type(exc).__name__}: {str(exc)[:200]}")
            return None
        except Exception as exc:  # a reply the client cannot parse: not a Redis server we can use
            self._failed("a lookup", exc)
            return None
        if not raw:
            return None
        try:
            record = decode_entry(bytes(raw), key, self.trusted_keys, self.require_signed)
        except (BundleError, *PARSE_ERRORS) as exc:
            self._refuse(key, str(exc) if isinstance(exc, BundleError) else f"{type(exc).__name__}: {exc}")
            return None
        self.refused.pop(key, None)
        self._refused_until.pop(key, None)
        return record

    # ---- writes -----------------------------------------------------------------------------------
    def publish(self, records: Iterable[KernelRecord]) -> list[str]:
        """Write ``records`` to the server (signed when a signing key is configured); returns the keys written.

        A server entry that already holds a valid record at least as fast is kept (last writer does not win
        blindly), and an entry this store's own signature policy would refuse (unsigned, or signed by a key not
        among the trusted ones) is not written: it would replace an entry the fleet accepts with one it refuses.
        Failures warn once and publish nothing: the local store already holds the records."""
        records = list(records)
        if not records or self._redis() is None:
            return []
        if self.signing_key is not None:
            try:
                private = load_private_key(self.signing_key)
            except (ValueError, RuntimeError) as exc:
                warn_once(self.label, "signing-key", f"avo remote cache: not publishing: {exc}")
                return []
        else:
            private = None
        import redis

        written: list[str] = []
        for record in records:
            key = store_key(record.spec, record.hardware)
            current = self.fetch(key)
            if current is not None and (current.sha256 == record.sha256 or _speedup(current) >= _speedup(record)):
                continue
            entry = encode_entry(record, private)
            try:
                decode_entry(entry, key, self.trusted_keys, self.require_signed)
            except BundleError as exc:
                warn_once(self.label, f"publish-policy:{str(exc)[:80]}", f"avo remote cache: not publishing to "
                          f"{redacted_url(self.url)}: this host's own signature policy refuses the entry ({exc}); "
                          "set AVO_SIGNING_KEY to a trusted key")
                continue
            client = self._redis()
            if client is None:
                break
            try:
                self._call(client.set, KEY_PREFIX + key, entry)
            except self._errors as exc:
                self._failed("publishing", exc)
                break
            except redis.RedisError as exc:  # e.g. a read-only replica: this record stays local
                warn_once(self.label, "publish", f"avo remote cache {redacted_url(self.url)} refused a write "
                          f"({type(exc).__name__}: {str(exc)[:200]}); promoted records stay local")
                break
            except Exception as exc:  # a reply the client cannot parse: not a Redis server we can use
                self._failed("publishing", exc)
                break
            written.append(key)
        return written

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a connection to a dead server has nothing left to release
                pass
            self._client = None


def _speedup(record: KernelRecord) -> float:
    return record.metrics.speedup if record.metrics.speedup is not None else float("-inf")
