"""Bundles: export/import round trips, signing, and one planted attack per check (each refused with a clear
message and the store left unchanged), unverified admission for other hardware, concurrent import + lookup."""
from __future__ import annotations

import io
import json
import sys
import tarfile
import types
from pathlib import Path
from typing import Callable

import pytest

from avo_inductor.cache.bundle import (BundleError, BundleRefused, export_bundle, import_bundle, sign_bundle,
                                       verify_bundle)
from avo_inductor.cache.manifest import (MANIFEST_NAME, MAX_FILE_BYTES, SIGNATURE_NAME, FileEntry, Manifest,
                                         record_filename, sha256_bytes)
from avo_inductor.cache.signing import keygen
from avo_inductor.cache.store import KernelStore
from avo_inductor.kernels.tiers import as_source_record
from avo_inductor.settings import Settings
from cache_helpers import (CPU_HW, H100, SW, import_or_lookup_worker, key_of, make_record, ok_verifier, spawn_pool,
                           wrong_results_verifier)


def _store(path: Path) -> KernelStore:
    return KernelStore(path, shipped=False, software=SW)


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(cache_dir=tmp_path / "dst", use_shipped=False, **kw)


def _export(tmp_path: Path, out: str, records=None, sign_key: Path | None = None) -> Path:
    src = _store(tmp_path / "src")
    for r in records or [make_record(64, tag=1), make_record(512, tag=2)]:
        src.put(r)
    export_bundle(src, tmp_path / out, sign_key=sign_key)
    return tmp_path / out


def _rehash(root: Path) -> None:
    """What a careful attacker does after editing files: recompute the manifest's hashes and sizes."""
    data = json.loads((root / MANIFEST_NAME).read_text())
    for f in data["files"]:
        p = root / f["path"]
        if p.exists():
            raw = p.read_bytes()
            f["sha256"], f["size"] = sha256_bytes(raw), len(raw)
    (root / MANIFEST_NAME).write_text(json.dumps(data))


def _edit_record(root: Path, edit: Callable[[dict], None]) -> None:
    path = next((root / "records").iterdir())
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")  # same layout as export writes


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _tar_of(root: Path, path: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    members = [(tarfile.TarInfo(f"b/{p.relative_to(root).as_posix()}"), p.read_bytes())
               for p in sorted(root.rglob("*")) if p.is_file()]
    return _tar(path, members + list(extra))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    out = {}
    for name in ("alice", "mallory"):
        priv, _, pub = keygen(tmp_path / "keys" / name)
        out[name] = (priv, pub)
    return out


@pytest.mark.parametrize("out", ["bundle", "bundle.tar.gz"])
def test_round_trip(tmp_path: Path, out: str) -> None:
    records = [make_record(64, tag=1), make_record(512, tag=2)]
    path = _export(tmp_path, out, records)
    report = verify_bundle(path, trusted_keys=())
    assert report.ok, report.problems
    m = report.manifest
    assert m.hardware == (CPU_HW,) and m.software == (SW,) and m.creator
    assert sorted(r.key for r in m.records) == sorted(key_of(r) for r in records)
    assert {f.path for f in m.files} == {record_filename(key_of(r)) for r in records}
    dst = _store(tmp_path / "dst")
    seen = []
    report = import_bundle(dst, path, verifier=lambda r: seen.append(r) or ok_verifier(r), settings=_settings(tmp_path))
    assert sorted(r.kernel_id for r in seen) == sorted(r.kernel_id for r in records)  # CPU records really checked
    assert report.unverified == []
    for r in records:
        hit = dst.get(key_of(r))
        assert hit.record.source == r.source and not hit.needs_reverify


def test_a_signed_export_carries_only_records_verified_on_this_host(tmp_path: Path, keys) -> None:
    """A signature says "checked here": a record this host never verified (e.g. a read-through copy from a remote
    store) is left out of a signed export, with a warning naming it; an unsigned export carries it (its importer
    verifies every record anyway)."""
    from avo_inductor.cache.layers import CacheWarning

    checked, unchecked = make_record(64, tag=1), make_record(512, tag=2)
    src = _store(tmp_path / "src")
    src.put(checked)
    src.put(unchecked, unverified=True)
    with pytest.warns(CacheWarning, match=f"leaves out 1 record.*{key_of(unchecked)}"):
        manifest = export_bundle(src, tmp_path / "signed", sign_key=keys["alice"][0])
    assert [r.key for r in manifest.records] == [key_of(checked)]
    manifest = export_bundle(src, tmp_path / "unsigned")
    assert sorted(r.key for r in manifest.records) == sorted(key_of(r) for r in (checked, unchecked))
    only = _store(tmp_path / "only-unchecked")
    only.put(unchecked, unverified=True)
    with pytest.warns(CacheWarning), pytest.raises(BundleError, match="verified on this host"):
        export_bundle(only, tmp_path / "nothing", sign_key=keys["alice"][0])


def test_signed_round_trip_and_sign_in_place(tmp_path: Path, keys) -> None:
    alice_priv, alice_pub = keys["alice"]
    signed = _export(tmp_path, "signed", sign_key=alice_priv)
    report = verify_bundle(signed, trusted_keys=[alice_pub], require_signed=True)
    assert report.ok and report.signer == alice_pub
    packed = _export(tmp_path, "later.tar.gz")
    assert not verify_bundle(packed, trusted_keys=[alice_pub], require_signed=True).ok
    assert sign_bundle(packed, alice_priv) == alice_pub
    assert verify_bundle(packed, trusted_keys=[alice_pub], require_signed=True).ok
    dst = _store(tmp_path / "dst")
    import_bundle(dst, packed, verifier=ok_verifier, settings=_settings(tmp_path, trusted_keys=(alice_pub,),
                                                                        require_signed=True))
    assert len(dst.local_keys()) == 2


def test_other_hardware_admitted_unverified(tmp_path: Path) -> None:
    path = _export(tmp_path, "h100", [make_record(64, hardware=H100), make_record(128)])
    calls = []
    dst = _store(tmp_path / "dst")
    report = import_bundle(dst, path, verifier=lambda r: calls.append(r.hardware) or ok_verifier(r),
                           settings=_settings(tmp_path))
    assert calls == [CPU_HW] and report.unverified == [key_of(make_record(64, hardware=H100))]
    assert dst.get(report.unverified[0]).needs_reverify  # verified on first use on an H100
    assert not dst.get(key_of(make_record(128))).needs_reverify


def test_default_verifier_is_kernels_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default verifier is the sandboxed one; a failing verdict from it refuses the import."""
    import avo_inductor.cache.bundle as bundle_mod

    monkeypatch.setattr(bundle_mod, "isolated_verifier", wrong_results_verifier)
    with pytest.raises(BundleRefused, match="failed verification"):
        import_bundle(_store(tmp_path / "dst"), _export(tmp_path, "b"), settings=_settings(tmp_path))




def _tripwire_verify(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace the in-process verify_record and the worker-side case runner, so any verification run (kernel
    launched) in the importing process is recorded."""
    import avo_inductor.check.run as check_run

    calls: list = []
    fake = types.ModuleType("avo_inductor.check.verify")
    fake.verify_record = lambda record, device=None: calls.append(record) or ok_verifier(record)
    monkeypatch.setitem(sys.modules, "avo_inductor.check.verify", fake)
    monkeypatch.setattr(check_run, "run_case", lambda *a, **k: calls.append(a) or {})
    return calls


def test_import_verifies_in_a_scrubbed_child_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `import` compiled and ran bundle kernels in the importing process. The default verifier must
    run them in a child (other pid, scrubbed environment, private scratch folder) and refuse on its verdict."""
    import os

    from avo_inductor.check import isolated

    seen: list = []

    class SpyWorker(isolated.Worker):
        """The sandbox's diagnostic handler instead of the case runner: answers with its pid and environment."""

        def __init__(self, device: str, **kw) -> None:
            super().__init__(device, "avo_inductor.check.sandbox:diagnostic_handler", **kw)

        def request(self, message, timeout_s):  # type: ignore[no-untyped-def]
            reply = super().request(message, timeout_s)
            seen.append(reply.payload)
            return reply

    calls = _tripwire_verify(monkeypatch)
    monkeypatch.setattr(isolated, "Worker", SpyWorker)
    monkeypatch.setenv("AVO_TEST_API_KEY", "sk-secret")
    path = _export(tmp_path, "b")
    # the diagnostic handler writes no outputs: the parent's judge refuses, whatever the worker said
    _assert_refused_and_unchanged(tmp_path, path, _settings(tmp_path), "wrote no outputs", verifier=None)
    assert seen and all(p["pid"] != os.getpid() and "AVO_TEST_API_KEY" not in p["env_keys"] for p in seen)
    assert calls == []  # nothing was verified (compiled, run) in this process


def test_crashing_verification_refuses_without_harming_the_importer(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that segfaults the verifier kills only the child: the import is refused, the store unchanged."""
    baseline = pytest.importorskip("avo_inductor.kernels.baseline")
    from avo_inductor.kernels.tiers import as_source_record

    good = as_source_record(baseline.baseline_record(make_record(16).spec))  # an agent edit starts from its source
    anchor = "    if PERSISTENT:\n"
    assert anchor in good.source
    bad = good.with_changes(source=good.source.replace(anchor, "    junk = tl.load(Q + 1099511627776)\n" + anchor, 1),
                            sha256="")
    calls = _tripwire_verify(monkeypatch)
    _assert_refused_and_unchanged(tmp_path, _export(tmp_path, "b", [bad]), _settings(tmp_path),
                                  "verification worker died", verifier=None, reverify=False)
    assert calls == []


# ---- hostile bundles: (mutation of an exported folder, settings overrides, expected message) ----------------
def _tampered_source(root: Path, keys) -> None:
    _edit_record(root, lambda d: d.__setitem__("source", d["source"].replace("other=0.0", "other=1.0")))


def _tampered_source_rehashed(root: Path, keys) -> None:
    _tampered_source(root, keys)
    _rehash(root)


def _not_allowlisted(root: Path, keys) -> None:
    def edit(d: dict) -> None:
        d["source"] = "import os\n" + d["source"]
        d["sha256"] = sha256_bytes(d["source"].encode())
    _edit_record(root, edit)
    _rehash(root)


def _tampered_manifest(root: Path, keys) -> None:
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["creator"] = "someone else"
    (root / MANIFEST_NAME).write_text(json.dumps(data))


def _bad_signature(root: Path, keys) -> None:
    sig = json.loads((root / SIGNATURE_NAME).read_text())
    sig["signature"] = ("00" if not sig["signature"].startswith("00") else "11") + sig["signature"][2:]
    (root / SIGNATURE_NAME).write_text(json.dumps(sig))


def _resigned_by_mallory(root: Path, keys) -> None:
    sign_bundle(root, keys["mallory"][0])


def _unsigned(root: Path, keys) -> None:
    (root / SIGNATURE_NAME).unlink()


def _symlink_escape(root: Path, keys) -> None:
    victim = next((root / "records").iterdir())
    victim.unlink()
    victim.symlink_to("/etc/hostname")
    _rehash(root)


def _huge_file(root: Path, keys) -> None:
    _edit_record(root, lambda d: d.__setitem__("lineage_id", "x" * (MAX_FILE_BYTES + 10)))
    _rehash(root)


def _truncated_file(root: Path, keys) -> None:
    victim = next((root / "records").iterdir())
    victim.write_bytes(victim.read_bytes()[:200])


def _future_format(root: Path, keys) -> None:
    data = json.loads((root / MANIFEST_NAME).read_text())
    data["format"] = 99
    (root / MANIFEST_NAME).write_text(json.dumps(data))


def _unlisted_file(root: Path, keys) -> None:
    (root / "records" / "extra.py").write_text("import os\n")


SIGNED = {"trusted": "alice", "require_signed": True}
HOSTILE = {
    "tampered_source": (_tampered_source, {}, "does not match the manifest"),
    "tampered_source_rehashed": (_tampered_source_rehashed, {}, "sha256 mismatch"),
    "not_allowlisted": (_not_allowlisted, {}, "import of 'os' not allowed"),
    "tampered_manifest": (_tampered_manifest, SIGNED, "bad signature"),
    "bad_signature": (_bad_signature, SIGNED, "bad signature"),
    "unknown_signer": (_resigned_by_mallory, SIGNED, "unknown key"),
    "unsigned_when_required": (_unsigned, SIGNED, "unsigned but signatures are required"),
    # deleting manifest.sig must not get a bundle past the trusted-key check when signatures are not required
    "signature_stripped_with_trusted_keys": (_unsigned, {"trusted": "alice"}, "unsigned but trusted keys are configured"),
    "symlink_escape": (_symlink_escape, {}, "symlink escaping the bundle"),
    "huge_file": (_huge_file, {}, "limit"),
    "truncated_file": (_truncated_file, {}, "truncated"),
    "future_format": (_future_format, {}, "newer than this avo_inductor"),
    "unlisted_file": (_unlisted_file, {}, "not listed in the manifest"),
}


def _assert_refused_and_unchanged(tmp_path: Path, path: Path, settings: Settings, needle: str,
                                  verifier=ok_verifier, reverify: bool = True) -> None:
    dst = _store(tmp_path / "dst")
    existing = make_record(4096, tag=9)
    dst.put(existing)
    before = (dst.local_keys(), dst.generation(), dst.db.get("rec:" + key_of(existing)))
    with pytest.raises(BundleRefused) as info:
        import_bundle(dst, path, verifier=verifier, settings=settings)
    assert needle in str(info.value), str(info.value)
    assert (dst.local_keys(), dst.generation(), dst.db.get("rec:" + key_of(existing))) == before
    if reverify:  # `verify` refuses what `import` refuses
        assert not verify_bundle(path, settings=settings, correctness=True, verifier=verifier).ok


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_folder_bundle_refused(tmp_path: Path, keys, name: str) -> None:
    mutate, policy, needle = HOSTILE[name]
    signed = policy.get("trusted")
    root = _export(tmp_path, "b", sign_key=keys["alice"][0] if signed else None)
    mutate(root, keys)
    settings = _settings(tmp_path, trusted_keys=(keys[signed][1],) if signed else (),
                         require_signed=bool(policy.get("require_signed")))
    _assert_refused_and_unchanged(tmp_path, root, settings, needle)


def test_wrong_results_refused(tmp_path: Path) -> None:
    _assert_refused_and_unchanged(tmp_path, _export(tmp_path, "b"), _settings(tmp_path), "max rel err 0.73",
                                  verifier=wrong_results_verifier)


def test_real_wrong_kernel_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    verify = pytest.importorskip("avo_inductor.check.verify")
    baseline = pytest.importorskip("avo_inductor.kernels.baseline")
    good = as_source_record(baseline.baseline_record(make_record(16).spec))
    # Scale the normalised output: compiles, passes the allowlist, but every result is wrong by 1.5x.
    target = "acc = acc / tl.where(empty, 1.0, l_i)"
    if target not in good.source:
        pytest.skip(f"baseline source has no {target!r} normalisation to corrupt")
    bad_source = good.source.replace(target, "acc = 1.5 * acc / tl.where(empty, 1.0, l_i)", 1)
    bad = good.with_changes(source=bad_source, sha256="")
    assert verify.verify_record is not None
    calls = _tripwire_verify(monkeypatch)  # the verdict must come from the sandboxed child's real verifier
    _assert_refused_and_unchanged(tmp_path, _export(tmp_path, "b", [bad]), _settings(tmp_path),
                                  "max abs err", verifier=None, reverify=False)  # the real verifier, ~5 s on CPU
    assert calls == []


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("extra,needle", [
    ((_member("b/../../evil.json"), b"{}"), "unsafe path"),
    ((_member("/tmp/avo-evil.json"), b"{}"), "unsafe path"),
    ((_member("b/records/link.json", tarfile.SYMTYPE, "/etc/passwd"), None), "is a link"),
    ((_member("b/records/hard.json", tarfile.LNKTYPE, "b/manifest.json"), None), "is a link"),
    ((_member("b/records/dev", tarfile.CHRTYPE), None), "not a regular file"),
    ((_member("b/records/huge.json"), b"0" * (MAX_FILE_BYTES + 1)), "limit"),
])
def test_hostile_tar_member_refused(tmp_path: Path, extra, needle: str) -> None:
    root = _export(tmp_path, "b")
    path = _tar_of(root, tmp_path / "evil.tar.gz", [extra])
    _assert_refused_and_unchanged(tmp_path, path, _settings(tmp_path), needle)
    assert not (tmp_path / "evil.json").exists() and not Path("/tmp/avo-evil.json").exists()


def test_truncated_archive_refused(tmp_path: Path) -> None:
    packed = _export(tmp_path, "b.tar.gz")
    raw = packed.read_bytes()
    packed.write_bytes(raw[: len(raw) // 2])
    _assert_refused_and_unchanged(tmp_path, packed, _settings(tmp_path), "truncated")


def test_manifest_rejects_unsafe_paths() -> None:
    bad = Manifest(files=(FileEntry("../x.json", "0" * 64, 1),), records=())
    with pytest.raises(ValueError, match="unsafe path"):
        Manifest.from_dict(bad.to_dict())


def test_concurrent_import_and_lookup(tmp_path: Path) -> None:
    a = [make_record(n, tag=1) for n in (32, 64, 128, 256)]
    b = [make_record(n, tag=2, hardware=H100) for n in (32, 64, 128, 256)]
    path_a, path_b = _export(tmp_path / "a", "a.tar.gz", a), _export(tmp_path / "b", "b", b)
    directory = str(tmp_path / "dst")
    assert _store(Path(directory)).writable  # create the cache before the race
    keys = [key_of(r) for r in a + b]
    imports = spawn_pool().map_async(import_or_lookup_worker, [("import", directory, [str(path_a)], 0.0),
                                                               ("import", directory, [str(path_b)], 0.0)])
    lookup = import_or_lookup_worker(("lookup", directory, keys, 60.0))  # polls while the imports land
    results = imports.get(timeout=60)
    assert lookup["errors"] == [] and sorted(lookup["found"]) == sorted(keys)
    assert sorted(results[0]["found"] + results[1]["found"]) == sorted(keys)
    assert sorted(_store(Path(directory)).local_keys()) == sorted(keys)


SHIPPED = sorted(p for p in (Path(__file__).resolve().parents[1] / "cache").iterdir()
                 if (p / MANIFEST_NAME).is_file())


@pytest.mark.parametrize("root", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_bundles_verify_and_are_loaded_by_default(root: Path, tmp_path: Path) -> None:
    """Each bundle under cache/ passes hashes and the static allowlist, is keyed by the GPU its folder names, and
    the store reads it when shipped bundles are on (the default outside tests)."""
    report = verify_bundle(root, settings=_settings(tmp_path))
    assert report.ok, report.problems
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["records"] and all(r["key"].startswith(root.name + "/") for r in manifest["records"])
    with KernelStore(tmp_path / "store", shipped=True, software=SW) as store:
        listed = {hit.record.kernel_id for hit in store.iter_records() if hit.layer == f"shipped:{root.name}"}
    assert {r["kernel_id"] for r in manifest["records"]} <= listed
