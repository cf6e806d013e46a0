"""The fleet's shared store (AVO_REMOTE_CACHE) against a real redis-server started by the tests: two processes
sharing records through it (one promotes and publishes, the other reads through with an empty local store),
an unreachable server (one warning, local store still used, no hang) and hostile entries on the server (refused
with a reason, never executed, local store untouched)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avo_inductor.artifact import KernelRecord
from avo_inductor.cache.layers import CacheWarning
from avo_inductor.cache.remote import KEY_PREFIX, RemoteStore, encode_entry
from avo_inductor.cache.signing import keygen, load_private_key
from avo_inductor.cache.store import KernelStore
from avo_inductor.settings import Settings, settings_from_env

from cache_helpers import SW, key_of, make_record

redis = pytest.importorskip("redis", reason="the redis client is not installed: pip install 'avo_inductor[remote]'")
TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port, data in a temp dir, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; `make test` installs it)")
    port, folder = _free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                             "--appendonly", "no", "--protected-mode", "yes"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server on port {port} did not start (exit code {proc.poll()})") from None
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def server(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def _store(folder: Path, url: str, **remote_kw: object) -> KernelStore:
    policy = {k: v for k, v in remote_kw.items() if k in ("trusted_keys", "require_signed")}
    return KernelStore(folder, shipped=False, software=SW, remote=RemoteStore(url, **remote_kw),  # type: ignore[arg-type]
                       **policy)  # type: ignore[arg-type]


def test_settings_read_the_remote_url(tmp_path: Path) -> None:
    s = settings_from_env({"AVO_CACHE_DIR": str(tmp_path), "AVO_REMOTE_CACHE": "redis://:hunter2@cache.lan:6379/2",
                           "AVO_SIGNING_KEY": "~/k.pem"})
    assert s.remote_cache == "redis://:hunter2@cache.lan:6379/2" and s.signing_key == Path("~/k.pem").expanduser()
    assert "hunter2" not in json.dumps(s.to_dict())
    store = KernelStore.from_settings(s)
    assert store.remote is not None and store.remote.label == "remote:redis://:***@cache.lan:6379/2"
    assert store.remote.signing_key == s.signing_key
    assert KernelStore.from_settings(settings_from_env({"AVO_CACHE_DIR": str(tmp_path),
                                                        "AVO_REMOTE_CACHE": ""})).remote is None
    with pytest.raises(ValueError, match="AVO_REMOTE_CACHE"):
        Settings(remote_cache="http://cache.lan")


def test_without_the_redis_package_the_local_store_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` raises ImportError
    store = _store(tmp_path / "local", "redis://127.0.0.1:1/0")
    local = make_record(64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.put(local, publish=True)
        assert store.get(key_of(make_record(128))) is None
        hit = store.get(key_of(local))
    assert hit is not None and hit.layer == "local"
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1 and "'redis' package is not installed" in messages[0]


PUBLISHER = """
import sys
from pathlib import Path
from avo_inductor.cache.remote import RemoteStore
from avo_inductor.cache.store import KernelStore
from avo_inductor.search import runner
from search_fakes import HW, SPEC, FakeEvaluator

url, folder = sys.argv[1], Path(sys.argv[2])
store = KernelStore(folder / "store", shipped=False, remote=RemoteStore(url))
opts = runner.RunOptions(pending=True, db=str(folder / "search.db"), quick=True)
store.enqueue_pending(SPEC, HW, origin="fleet test")
outcome = runner.execute(opts, store=store, evaluator=FakeEvaluator(), hardware=HW)
print(list(outcome.promoted.values())[0])
"""


def test_a_second_process_reads_what_the_first_promoted(server: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """Process A runs a search whose promotion publishes; this process, with an empty store, gets the hit."""
    from search_fakes import HW, SPEC

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    done = subprocess.run([sys.executable, "-c", PUBLISHER, redis_url, str(tmp_path / "a")], capture_output=True,
                          text=True, timeout=300, cwd=TESTS.parent, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    kernel_id = done.stdout.strip().splitlines()[-1]
    assert server.keys(KEY_PREFIX + "*")  # published by the promotion
    store = _store(tmp_path / "b", redis_url)
    assert store.local_keys() == []
    hit = store.lookup(SPEC, HW)
    assert hit is not None and hit.record.kernel_id == kernel_id and hit.layer == f"remote:{redis_url}"
    assert hit.needs_reverify  # tuned elsewhere: compiled and checked once here before first use
    # read through: kept locally, still unverified, so the next lookup needs no server
    assert store.local_keys() == [hit.key]
    server.flushdb()
    again = store.lookup(SPEC, HW)
    assert again is not None and again.layer == "local" and again.needs_reverify
    assert store.mark_verified(hit.key) and not store.lookup(SPEC, HW).needs_reverify  # type: ignore[union-attr]


def test_signed_publish_is_accepted_by_a_fleet_that_trusts_the_key(server: redis.Redis, redis_url: str,
                                                                   tmp_path: Path) -> None:
    priv, _, pub = keygen(tmp_path / "keys")
    record = make_record(96, tag=3)  # a source record (agent edit): needs a trusted signature to cross hosts
    writer = _store(tmp_path / "a", redis_url, signing_key=priv)
    writer.put(record, publish=True)
    reader = _store(tmp_path / "b", redis_url, trusted_keys=frozenset({pub}))
    hit = reader.get(key_of(record))
    assert hit is not None and hit.record.sha256 == record.sha256 and hit.needs_reverify
    # a slower record does not replace the server's faster one
    writer.put(make_record(96, tag=4, speedup=1.1), publish=True)
    assert RemoteStore(redis_url).fetch(key_of(record)).sha256 == record.sha256  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_server_warns_once_and_the_local_store_serves(kind: str, tmp_path: Path) -> None:
    """Nothing listening (refused at once), or a listener that never answers (the socket timeouts end it)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    if kind == "silent":
        listener.listen(8)
    port = listener.getsockname()[1]
    if kind == "refused":
        listener.close()
    store = _store(tmp_path / "local", f"redis://127.0.0.1:{port}/0")
    local = make_record(64)
    store.put(local)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.get(key_of(make_record(128))) is None  # a local miss asks the server: down
        assert store.get(key_of(make_record(256))) is None  # backed off: not asked again
        hit = store.get(key_of(local))
        store.put(make_record(512), publish=True)  # publishing to a dead server costs nothing either
    elapsed = time.monotonic() - start
    listener.close()
    assert hit is not None and hit.layer == "local" and hit.record.sha256 == local.sha256
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1 and "unreachable" in messages[0] and "using the local store only" in messages[0]
    assert elapsed < 5.0, f"lookups against a dead server took {elapsed:.1f}s"
    assert key_of(make_record(512)) in store.local_keys()


EVIL_SOURCE = '''import triton
import triton.language as tl
open({marker!r}, "w").write("ran")


@triton.jit
def _attn_fwd(Q, Out, N, TAG: tl.constexpr):
    pid = tl.program_id(0)
    tl.store(Out + pid, tl.load(Q + pid))
'''


HOSTILE = ["tampered_source", "host_code", "untrusted_signer", "forged_signature", "unsigned_source", "not_json",
           "wrong_type"]


def _hostile(kind: str, tmp_path: Path, keys: dict[str, tuple[Path, str]]) -> tuple[bytes, str, str]:
    """(server entry, store key, the reason a refusal must name) for one kind of hostile entry (each kind under
    its own key: a refusal is warned once per key and process)."""
    q_len = 2 ** (4 + HOSTILE.index(kind))  # lengths are bucketed by powers of two in the store key
    record = make_record(q_len)
    signer = load_private_key(keys["alice"][0]) if kind in ("forged_signature", "tampered_source") else None
    entry = json.loads(encode_entry(record, signer))
    inner = json.loads(entry["record"])
    if kind == "tampered_source":  # the source changed after the manifest was hashed (and signed)
        inner["source"] = inner["source"].replace("x * 1", "x * 7")
        entry["record"] = json.dumps(inner, sort_keys=True)
        return json.dumps(entry).encode(), key_of(record), "sha256/size do not match"
    if kind == "host_code":  # consistent entry whose source runs host Python at import
        evil = make_record(q_len, source=EVIL_SOURCE.format(marker=str(tmp_path / "ran")))
        return encode_entry(evil), key_of(evil), "static allowlist"
    if kind == "untrusted_signer":
        evil = make_record(q_len, tag=9)
        return encode_entry(evil, load_private_key(keys["mallory"][0])), key_of(evil), "unknown key"
    if kind == "forged_signature":  # alice's signature kept, the record and manifest rewritten under it
        inner["source"] = inner["source"].replace("x * 1", "x * 7")
        inner["sha256"] = ""
        forged = json.loads(encode_entry(make_record(q_len, tag=7)))
        entry["record"], entry["manifest"] = forged["record"], forged["manifest"]
        return json.dumps(entry).encode(), key_of(record), "bad signature"
    if kind == "not_json":
        return b"\x80\x04\x95 a pickle, say", key_of(record), "not valid JSON"
    if kind == "wrong_type":  # written as a Redis hash by someone else: the server refuses GETRANGE
        return b"", key_of(record), "WRONGTYPE"
    assert kind == "unsigned_source"
    return encode_entry(record), key_of(record), "unsigned but trusted keys are configured"


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_entry_is_refused_never_run_and_not_kept(kind: str, server: redis.Redis, redis_url: str,
                                                         tmp_path: Path) -> None:
    keys = {name: (priv, pub) for name in ("alice", "mallory")
            for priv, _, pub in [keygen(tmp_path / "keys" / name)]}
    trusted = frozenset({keys["alice"][1]}) if kind != "host_code" else frozenset()
    raw, key, reason = _hostile(kind, tmp_path, keys)
    if raw:
        server.set(KEY_PREFIX + key, raw)
    else:
        server.hset(KEY_PREFIX + key, "record", "{}")
    store = _store(tmp_path / "local", redis_url, trusted_keys=trusted)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.get(key) is None
    assert reason in store.remote.refused[key]  # type: ignore[union-attr]
    assert any(reason in str(w.message) and "refused" in str(w.message) for w in caught)
    assert store.local_keys() == [] and store.generation().startswith("0-")  # local store untouched
    assert not (tmp_path / "ran").exists()  # nothing from the entry ran


def test_a_refused_entry_is_not_read_again_until_the_back_off_ends(server: redis.Redis, redis_url: str,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad entry is fetched and checked once per RETRY_AFTER_S, not once per site; the fleet's replacement with a
    good entry is read after the back-off."""
    from avo_inductor.cache import remote as remote_mod

    record = make_record(1)
    key = key_of(record)
    server.set(KEY_PREFIX + key, b"not json")
    remote = RemoteStore(redis_url)
    reads: list[str] = []
    client = remote._redis()
    real_getrange = client.getrange
    monkeypatch.setattr(client, "getrange", lambda name, *a: reads.append(name) or real_getrange(name, *a))
    now = [1000.0]
    monkeypatch.setattr(remote_mod.time, "monotonic", lambda: now[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        assert remote.fetch(key) is None and remote.fetch(key) is None
    assert len(reads) == 1 and "not valid JSON" in remote.refused[key]
    server.set(KEY_PREFIX + key, encode_entry(record))
    now[0] += remote_mod.RETRY_AFTER_S + 1
    fetched = remote.fetch(key)
    assert fetched is not None and fetched.source == record.source and key not in remote.refused and len(reads) == 2


def _verify_then(action: Any, ok: bool) -> Any:
    """verify_record as the graph pass calls it: the verdict ``ok``, after ``action`` ran (what a hostile server or
    another process does while the check is running)."""
    from cache_helpers import StubReport

    def verify(record: KernelRecord, device: Any = None) -> StubReport:
        action()
        return StubReport(ok, [] if ok else ["output: max abs err 0.3"])
    return verify


@pytest.mark.parametrize("local", ["writable", "read-only"])
def test_an_entry_swapped_during_verification_is_not_marked_verified(local: str, server: redis.Redis,
                                                                      redis_url: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The server replaces its entry while the first one is checked: only the checked record is marked, so the
    replacement is verified before it serves (with no writable store the lookup reads the server again)."""
    from avo_inductor.backend import graph_pass
    from avo_inductor.check import verify

    checked, swapped = make_record(64, tag=2), make_record(64, tag=3)
    key = key_of(checked)
    server.set(KEY_PREFIX + key, encode_entry(checked))
    store = KernelStore(tmp_path / "local" if local == "writable" else None, shipped=False, software=SW,
                        remote=RemoteStore(redis_url))
    hit = store.get(key)
    assert hit is not None and hit.needs_reverify and hit.record.sha256 == checked.sha256

    def swap() -> None:
        server.set(KEY_PREFIX + key, encode_entry(swapped))
        if store.db is not None:  # another process replaced the local copy meanwhile
            store.put(swapped, unverified=True)

    monkeypatch.setattr(verify, "verify_record", _verify_then(swap, ok=True))
    assert graph_pass.ensure_verified(store, hit, None)
    now = store.get(key)
    assert now is not None and now.record.sha256 == swapped.sha256 and now.needs_reverify


def test_read_through_never_replaces_a_local_record_written_meanwhile(server: redis.Redis, redis_url: str,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A promotion lands in the local store while this process is reading the server's entry: it stays."""
    promoted, remote = make_record(64, tag=2, speedup=3.0), make_record(64, tag=3)
    key = key_of(promoted)
    server.set(KEY_PREFIX + key, encode_entry(remote))
    store = _store(tmp_path / "local", redis_url)
    fetch = store.remote.fetch  # type: ignore[union-attr]

    def fetch_while_promoting(k: str) -> KernelRecord | None:
        got = fetch(k)
        KernelStore(tmp_path / "local", shipped=False, software=SW).put(promoted)  # the search's promotion
        return got

    monkeypatch.setattr(store.remote, "fetch", fetch_while_promoting)
    store.get(key)
    again = store.get(key)
    assert again is not None and again.layer == "local" and again.record.sha256 == promoted.sha256
    assert not again.needs_reverify


def test_a_read_through_copy_that_fails_verification_is_dropped(server: redis.Redis, redis_url: str,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A server entry that passes the static gates but computes wrong results does not stay in the local store:
    once the server holds a good record, the next process gets that one."""
    from avo_inductor.backend import graph_pass
    from avo_inductor.check import verify

    bad, good = make_record(64, tag=5), make_record(64, tag=6)
    key = key_of(bad)
    server.set(KEY_PREFIX + key, encode_entry(bad))
    store = _store(tmp_path / "local", redis_url)
    hit = store.get(key)
    assert hit is not None and hit.record.sha256 == bad.sha256 and store.local_keys() == [key]
    monkeypatch.setattr(verify, "verify_record", _verify_then(lambda: None, ok=False))
    assert not graph_pass.ensure_verified(store, hit, None)
    assert store.local_keys() == []
    server.set(KEY_PREFIX + key, encode_entry(good))
    later = _store(tmp_path / "local", redis_url).get(key)
    assert later is not None and later.record.sha256 == good.sha256
    # a record verified here is never dropped
    store.put(good)
    assert not store.discard_read_through(key, good.sha256) and store.local_keys() == [key]


@pytest.mark.parametrize("signer", ["none", "untrusted"])
def test_a_publisher_never_replaces_a_trusted_entry_with_one_the_fleet_refuses(signer: str, server: redis.Redis,
                                                                                redis_url: str,
                                                                                tmp_path: Path) -> None:
    """A host that trusts alice's key but signs with no key (or with its own) promotes a faster kernel: the
    server keeps alice's signed entry, which the fleet accepts, and the host says why it did not publish."""
    alice, _, alice_pub = keygen(tmp_path / "alice")
    own, _, _ = keygen(tmp_path / "own")
    signed, faster = make_record(96, tag=3, speedup=1.2), make_record(96, tag=4, speedup=2.0)
    key = key_of(signed)
    server.set(KEY_PREFIX + key, encode_entry(signed, load_private_key(alice)))
    trusted = frozenset({alice_pub})
    writer = _store(tmp_path / "w", redis_url, trusted_keys=trusted,
                    **({"signing_key": own} if signer == "untrusted" else {}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer.put(faster, publish=True)
    assert any("not publishing" in str(w.message) for w in caught)
    kept = RemoteStore(redis_url, trusted_keys=trusted).fetch(key)
    assert kept is not None and kept.sha256 == signed.sha256


HELLO_REPLY = b"%2\r\n$5\r\nproto\r\n:3\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"  # RESP3 map for HELLO 3


def _fake_server(listener: socket.socket, getrange: bytes, interval_s: float = 0.0, trickle: int = 0,
                 hello: bool = True) -> None:
    """A Redis look-alike for one connection: HELLO answered as Redis 7 does (or with "+OK" when not ``hello``),
    "+OK" to other commands, and GETRANGE answered with ``getrange`` and then ``trickle`` more bytes, one per
    ``interval_s`` (each read returns before the client's socket timeout)."""
    conn, _ = listener.accept()
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            if b"GETRANGE" in data.upper():
                conn.sendall(getrange)
                for _ in range(trickle):
                    time.sleep(interval_s)
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        return
                return
            lines = data.split(b"\r\n")
            for i, line in enumerate(lines):
                if line.startswith(b"*"):
                    command = lines[i + 2].upper() if i + 2 < len(lines) else b""
                    conn.sendall(HELLO_REPLY if command == b"HELLO" and hello else b"+OK\r\n")


def _serve(target_kw: dict[str, Any]) -> tuple[socket.socket, str]:
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    threading.Thread(target=_fake_server, args=(listener,), kwargs=target_kw, daemon=True).start()
    return listener, f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


@pytest.mark.parametrize("reply", ["trickle", "unparsable"])
def test_a_misbehaving_server_costs_at_most_one_deadline(reply: str, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """A reply announced at 1000 bytes and sent a byte per 0.4 s (every read returns within the socket timeout,
    the reply would take minutes) and a handshake reply the client cannot parse: the lookup ends within the command
    deadline with a warning, and the local store serves."""
    from avo_inductor.cache import remote

    monkeypatch.setattr(remote, "COMMAND_DEADLINE_S", 1.0)
    kw: dict[str, Any] = {"trickle": {"getrange": b"$1000\r\n", "interval_s": 0.4, "trickle": 20},
                          "unparsable": {"getrange": b"$0\r\n\r\n", "hello": False}}[reply]
    listener, url = _serve(kw)
    store = _store(tmp_path / "local", url)
    local = make_record(64)
    store.put(local)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.get(key_of(make_record(128))) is None
        hit = store.get(key_of(local))
    elapsed = time.monotonic() - start
    listener.close()
    assert hit is not None and hit.layer == "local"
    assert elapsed < 4.0, f"the lookup took {elapsed:.1f}s"
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert any("unreachable" in m for m in messages), messages
