"""KernelStore: round trip, layer order and shadowing, corrupt entries, re-verification marks, read-only layers,
the pending queue (also under concurrent writers from several processes) and pruning."""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import pytest

from avo_inductor.cache import admin, layers as layers_mod
from avo_inductor.cache.bundle import export_bundle, verify_bundle
from avo_inductor.cache.store import CacheWarning, KernelStore
from avo_inductor.spec import SoftwareKey
from cache_helpers import CPU_HW, H100, OLD_SW, SW, key_of, make_record, pending_worker, spawn_pool, tree_digest


def _store(path: Path, *layer_paths: Path, shipped: bool = False) -> KernelStore:
    return KernelStore(path, layer_paths, shipped=shipped, software=SW)


def _bundle_of(tmp_path: Path, name: str, *records) -> Path:
    src = _store(tmp_path / f"src-{name}")
    for r in records:
        src.put(r)
    export_bundle(src, tmp_path / name)
    return tmp_path / name


def test_software_key_helper_matches_current() -> None:
    assert SW == SoftwareKey.current()


def test_round_trip_bucketed_and_stored_as_json(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    record = make_record(100)
    key = store.put(record)
    assert key == key_of(record)
    for q_len in (100, 120, 128):  # same power-of-two bucket -> same kernel
        hit = store.lookup(make_record(q_len).spec, CPU_HW)
        assert hit is not None and hit.record == record and hit.layer == "local" and not hit.needs_reverify
    assert store.lookup(make_record(200).spec, CPU_HW) is None
    assert store.lookup(record.spec, H100) is None
    raw = store.db.get("rec:" + key)
    assert isinstance(raw, str) and json.loads(raw) == record.to_dict()  # JSON text, never a pickle
    assert store.remove(key) and store.lookup(record.spec, CPU_HW) is None and not store.remove(key)


def test_layer_order_shadowing_and_folder_of_bundles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local_r, path_r, shipped_r = make_record(tag=1), make_record(tag=2), make_record(tag=3)
    only_shipped = make_record(512, tag=4)
    _bundle_of(tmp_path / "path", "b1", path_r)  # AVO_CACHE_PATH entry = a folder of bundle folders
    shipped = tmp_path / "shipped"
    _bundle_of(shipped, "cpu-target", shipped_r, only_shipped)
    monkeypatch.setattr(layers_mod, "shipped_roots", lambda: [shipped])

    store = _store(tmp_path / "s", tmp_path / "path", shipped=True)
    assert [layer.label for layer in store.layers] == [str(tmp_path / "path" / "b1"), "shipped:cpu-target"]
    assert store.get(key_of(path_r)).record == path_r  # AVO_CACHE_PATH before shipped
    store.put(local_r)
    assert store.get(key_of(local_r)).record == local_r  # writable store before everything
    assert store.get(key_of(only_shipped)).layer == "shipped:cpu-target"
    visible = {(h.key, h.layer) for h in store.iter_records()}
    assert len(visible) == 2
    assert len(list(store.iter_records(include_shadowed=True))) == 4
    store.remove(key_of(local_r))
    assert store.get(key_of(local_r)).record == path_r  # un-shadowed
    with pytest.raises(ValueError, match="read-only layer"):
        store.remove(key_of(only_shipped))
    assert _store(tmp_path / "s", tmp_path / "path", shipped=False).get(key_of(only_shipped)) is None


def test_generation_changes_on_every_record_write_in_any_process_view(tmp_path: Path) -> None:
    a, b = _store(tmp_path / "s"), _store(tmp_path / "s")  # two handles = two processes' views
    g0 = a.generation()
    assert a.generation() == g0
    key = a.put(make_record(tag=1))
    g1 = b.generation()
    assert g1 != g0
    a.put(make_record(tag=2))
    g2 = b.generation()
    assert g2 != g1
    b.mark_verified(key, OLD_SW)
    g3 = a.generation()
    assert g3 != g2
    a.enqueue_pending(make_record(999).spec, CPU_HW, "m")  # pending never changes what lookups return
    assert a.generation() == g3
    a.remove(key)
    assert b.generation() != g3


def _corrupt(data: dict, how: str) -> str:
    if how == "bad_json":
        return json.dumps(data)[:57]
    if how == "sha_mismatch":
        data["source"] = data["source"].replace("x * 1", "x * 2")
    elif how == "allowlist":
        data["source"] = "import os\n" + data["source"]
        data["sha256"] = ""
    elif how == "missing_fields":
        del data["entry_point"]
    elif how == "future_format":
        data["format"] = 99
    elif how == "wrong_key":
        data["spec"]["head_dim"] = 32
    elif how == "bad_launch":
        data["launch"]["kv_splits"] = "many"
    return json.dumps(data)


@pytest.mark.parametrize("how", ["bad_json", "sha_mismatch", "allowlist", "missing_fields", "future_format", "wrong_key",
                                 "bad_launch"])
def test_corrupt_local_entry_is_a_miss_with_one_warning(tmp_path: Path, how: str) -> None:
    record = make_record(tag=1)
    fallback = make_record(tag=2)
    bundle = _bundle_of(tmp_path, "b", fallback)
    store = _store(tmp_path / "s", bundle)
    key = store.put(record)
    store.db.set("rec:" + key, _corrupt(record.to_dict(), how))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hits = [store.get(key) for _ in range(3)]
        bare = _store(tmp_path / "s").get(key)
    assert all(h is not None and h.record == fallback for h in hits)  # next layer serves it
    assert bare is None
    mine = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(mine) == 1 and key in str(mine[0].message)
    assert store.local_problems() and key in store.local_problems()[0]


def test_tampered_layer_file_is_a_miss_with_warning(tmp_path: Path) -> None:
    record = make_record()
    bundle = _bundle_of(tmp_path, "b", record)
    rec_file = next((bundle / "records").iterdir())
    rec_file.write_text(rec_file.read_text().replace("x * 1", "x * 7"))
    store = _store(tmp_path / "s", bundle)
    with pytest.warns(CacheWarning, match="tampered"):
        assert store.get(key_of(record)) is None


def test_reverify_flag_and_marks(tmp_path: Path) -> None:
    old = make_record(tag=1, software=OLD_SW)
    in_layer = make_record(512, tag=2, software=OLD_SW)
    bundle = _bundle_of(tmp_path, "b", in_layer)
    store = _store(tmp_path / "s", bundle)
    key = store.put(old)
    assert store.get(key).needs_reverify and store.get(key_of(in_layer)).needs_reverify
    assert store.mark_verified(key) and store.mark_verified(key_of(in_layer))
    fresh = _store(tmp_path / "s", bundle)  # marks persist across processes
    assert not fresh.get(key).needs_reverify and not fresh.get(key_of(in_layer)).needs_reverify
    assert fresh.get(key).record.verified_software == (SW,)  # local: written into the record
    other = KernelStore(tmp_path / "s", [bundle], shipped=False, software=SoftwareKey("9.9", "9.9"))
    assert other.get(key).needs_reverify  # a mark is per software
    assert not store.mark_verified(key_of(make_record(2048)))
    unverified = make_record(64, tag=3)  # same software, but admitted without a correctness check
    k2 = store.put(unverified, unverified=True)
    assert store.get(k2).needs_reverify
    store.mark_verified(k2)
    assert not _store(tmp_path / "s").get(k2).needs_reverify


class _WriteSpy:
    """Records every open-for-writing of a path under ``root`` (tests run as root, so chmod alone proves nothing)."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.writes = str(root.resolve()), []
        real_io_open, real_os_open = io.open, os.open

        def spy_io_open(file, mode="r", *a, **k):
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
                self._note(file, mode)
            return real_io_open(file, mode, *a, **k)

        def spy_os_open(path, flags, *a, **k):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
                self._note(path, flags)
            return real_os_open(path, flags, *a, **k)

        monkeypatch.setattr(io, "open", spy_io_open)
        monkeypatch.setattr("builtins.open", spy_io_open)
        monkeypatch.setattr(os, "open", spy_os_open)

    def _note(self, path, mode) -> None:
        if os.path.abspath(os.fspath(path)).startswith(self.root):
            self.writes.append((os.fspath(path), mode))


def test_read_only_layer_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [make_record(tag=1, software=OLD_SW), make_record(512, tag=2, hardware=H100)]
    bundle = _bundle_of(tmp_path, "ro", *records)
    for p in [bundle, *bundle.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = tree_digest(bundle)
    spy = _WriteSpy(bundle, monkeypatch)
    store = _store(tmp_path / "s", bundle)
    for r in records:
        assert store.get(key_of(r)).layer == str(bundle)
    assert store.mark_verified(key_of(records[0]))
    store.put(make_record(64))
    store.generation()
    list(store.iter_records(include_shadowed=True))
    admin.stats(store)
    admin.prune(store, stale_software=True, unused_days=0)
    assert verify_bundle(bundle, trusted_keys=()).ok
    monkeypatch.undo()
    assert spy.writes == [] and tree_digest(bundle) == before


def test_store_without_writable_dir_serves_layers(tmp_path: Path) -> None:
    record = make_record()
    bundle = _bundle_of(tmp_path, "b", record)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")  # unwritable even for root
    with pytest.warns(CacheWarning, match="not writable"):
        store = KernelStore(blocker / "cache", [bundle], shipped=False, software=SW)
        assert store.get(key_of(record)) is not None
    assert not store.writable and store.enqueue_pending(record.spec, CPU_HW, "m") is None and store.pending() == []
    assert store.mark_verified(key_of(record))  # remembered in memory
    with pytest.raises(RuntimeError, match="read-only"):
        store.put(record)
    assert KernelStore(None, [bundle], shipped=False, software=SW).get(key_of(record)) is not None


def test_pending_queue_counts_origins_and_clear(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    a, b = make_record(64).spec, make_record(1024).spec
    for origin in ("llama", "llama", "gpt2", None):
        store.enqueue_pending(a, CPU_HW, origin)
    store.enqueue_pending(b, H100, "bert")
    entries = store.pending()
    assert [e.count for e in entries] == [4, 1]
    top = entries[0]
    assert top.origins == ("llama", "gpt2") and top.spec == a and top.first_seen <= top.last_seen
    assert store.clear_pending([top.key]) == 1 and [e.count for e in store.pending()] == [1]
    assert store.clear_pending() == 1 and store.pending() == []


def test_pending_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    directory = str(tmp_path / "s")
    assert _store(Path(directory)).writable  # create the cache before the race
    result = spawn_pool().map_async(pending_worker, [(directory, 40, f"model{i}") for i in range(2)])
    mine = 0
    while not result.ready() or mine < 2:  # this process writes too, for as long as the workers run
        mine += pending_worker((directory, 2, "model2"))
    total = sum(result.get()) + mine
    entries = _store(Path(directory)).pending()
    assert sum(e.count for e in entries) == total == 80 + mine
    assert sorted(e.count for e in entries) == [total // 2, total // 2]
    assert all(sorted(e.origins) == ["model0", "model1", "model2"] for e in entries)


def test_prune_stale_software_and_unused(tmp_path: Path) -> None:
    store = _store(tmp_path / "s")
    stale = store.put(make_record(64, software=OLD_SW))
    verified = store.put(make_record(128, software=OLD_SW))
    store.mark_verified(verified)
    fresh = store.put(make_record(256))
    assert admin.prune(store, stale_software=True) == [stale]
    store.get(fresh)  # a lookup stamps last use
    now = 1_700_000_000.0 + 40 * 86400
    assert admin.prune(store, unused_days=30, now=now) == [verified]  # never looked up, created long ago
    assert store.local_keys() == [fresh]


def test_from_settings_layers_and_signature_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avo_inductor.cache.signing import keygen, trust
    from avo_inductor.settings import reset_settings

    record = make_record()
    unsigned = _bundle_of(tmp_path, "unsigned", record)
    monkeypatch.setenv("AVO_CACHE_PATH", str(unsigned))
    reset_settings()
    assert KernelStore.from_settings().get(key_of(record)).layer == str(unsigned)

    priv, pub_path, _ = keygen(tmp_path / "keys")
    trust(pub_path, os.environ["AVO_CACHE_DIR"])  # the persistent trusted set lives beside the store
    monkeypatch.setenv("AVO_REQUIRE_SIGNED", "1")
    reset_settings()
    with pytest.warns(CacheWarning, match="unsigned"):
        assert KernelStore.from_settings().get(key_of(record)) is None  # the whole layer is skipped
    signed = tmp_path / "signed"
    src = _store(tmp_path / "src-signed")
    src.put(record)
    export_bundle(src, signed, sign_key=priv)
    monkeypatch.setenv("AVO_CACHE_PATH", str(signed))
    reset_settings()
    assert KernelStore.from_settings().get(key_of(record)).layer == str(signed)


def test_misconfigured_cache_path_warns(tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(b"not unpacked")
    for path, needle in ((tmp_path / "typo", "missing"), (archive, "archive"), (tmp_path, "no manifest.json")):
        with pytest.warns(CacheWarning, match=needle):
            assert _store(tmp_path / "s", path).get(key_of(make_record())) is None


def test_layer_records_are_verified_once_before_use(tmp_path: Path) -> None:
    """A read-only layer's record passed only hash / signature / allowlist checks: first use verifies it."""
    record = make_record(tag=3)
    store = _store(tmp_path / "s", _bundle_of(tmp_path, "b", record))
    hit = store.lookup(record.spec, record.hardware)
    assert hit is not None and hit.layer != "local" and hit.needs_reverify
    store.mark_verified(hit.key)
    assert not store.lookup(record.spec, record.hardware).needs_reverify
    local = _store(tmp_path / "t")
    local.put(record)
    assert not local.lookup(record.spec, record.hardware).needs_reverify


def test_shipped_records_on_their_own_software_are_trusted_as_is(tmp_path: Path, monkeypatch) -> None:
    """The package's shipped bundles were verified where they were made: on the same software a hit needs no
    first-use check (it cost 3.5-5.5 s of compile on an H100); on other software, or with its template changed, it
    does. An AVO_CACHE_PATH folder that borrows a shipped layer's label stays untrusted."""
    mine, theirs = make_record(tag=5), make_record(512, tag=6, software=OLD_SW)
    shipped_root = tmp_path / "pkg"
    _bundle_of(shipped_root, "gpu", mine, theirs)
    monkeypatch.setattr(layers_mod, "shipped_roots", lambda: [shipped_root])
    store = _store(tmp_path / "s", shipped=True)
    hit = store.lookup(mine.spec, mine.hardware)
    assert hit is not None and hit.layer == "shipped:gpu" and not hit.needs_reverify
    assert store.verified_as_is(hit.record, hit.layer)
    old = store.lookup(theirs.spec, theirs.hardware)
    assert old is not None and old.layer == "shipped:gpu" and old.needs_reverify
    assert not store.verified_as_is(old.record, old.layer)

    impostor = tmp_path / "work"
    borrowed = make_record(64, tag=7)
    _bundle_of(impostor, "shipped:gpu", borrowed)
    monkeypatch.chdir(impostor)
    hit = _store(tmp_path / "t", Path("shipped:gpu")).lookup(borrowed.spec, borrowed.hardware)
    assert hit is not None and hit.layer == "shipped:gpu" and hit.needs_reverify
