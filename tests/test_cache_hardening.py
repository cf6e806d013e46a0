"""Hostile or damaged input at the cache's trust boundaries: bundle manifests and records with out-of-range numbers,
wrong types and deep nesting, and a real store on disk damaged in several ways. Each is a clean refusal with a
warning (a BundleError / a REFUSED report / an empty or partial listing), never a traceback, never unpickling."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
from cache_helpers import SW, key_of, make_record, ok_verifier

from avo_inductor.cache import bundle
from avo_inductor.cache.__main__ import main
from avo_inductor.cache.bundle import (
    BundleRefused,
    export_bundle,
    import_bundle,
    verify_bundle,
)
from avo_inductor.cache.manifest import (
    MANIFEST_NAME,
    BundleError,
    read_manifest,
    validate_record,
)
from avo_inductor.cache.signing import Signature
from avo_inductor.cache.store import CacheWarning, KernelStore
from avo_inductor.settings import reset_settings

DEEP = 5000  # past the JSON depth limit and, for the recursive parser, far past nothing: must still be clean


@pytest.fixture(autouse=True)
def stub_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake test kernels don't follow the launcher ABI: the sandboxed correctness verifier is an OK stub."""
    monkeypatch.setattr(bundle, "isolated_verifier", ok_verifier)


def _bundle(tmp_path: Path, *records: Any) -> Path:
    src = KernelStore(tmp_path / "src", shipped=False, software=SW)
    for r in records:
        src.put(r)
    export_bundle(src, tmp_path / "bundle")
    src.close()
    return tmp_path / "bundle"


def _edit_manifest(root: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``edit`` to the parsed manifest; an edit returning text replaces the file verbatim."""
    data = json.loads((root / MANIFEST_NAME).read_text())
    out = edit(data)
    (root / MANIFEST_NAME).write_text(out if isinstance(out, str) else json.dumps(data))


def _raw_number(field: str, text: str) -> Callable[[dict[str, Any]], str]:
    """Write a JSON number json.dumps cannot produce (1e999, a 400-digit integer, NaN) into files[0][field]."""
    def edit(data: dict[str, Any]) -> str:
        data["files"][0][field] = "@@"
        return json.dumps(data).replace('"@@"', text)
    return edit


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return edit


def _deep_text(depth: int) -> str:
    """JSON text nested ``depth`` lists deep (json.dumps itself would hit the recursion limit building it)."""
    return "[" * depth + "1" + "]" * depth


MANIFEST_EDITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "size_1e999": _raw_number("size", "1e999"),
    "size_huge_int": _raw_number("size", str(10**400)),
    "size_negative": _set(("files", 0, "size"), -5),
    "size_nan": _raw_number("size", "NaN"),
    "size_infinity": _raw_number("size", "-Infinity"),
    "size_float": _set(("files", 0, "size"), 123.0),
    "size_string": _set(("files", 0, "size"), "123"),
    "size_bool": _set(("files", 0, "size"), True),
    "path_not_string": _set(("files", 0, "path"), ["records", "x.json"]),
    "files_dict": _set(("files",), {"path": "records/x.json"}),
    "files_string": _set(("files",), "records/x.json"),
    "records_ints": _set(("records",), [1, 2]),
    "format_1e999": lambda d: json.dumps(d).replace('"format": 1', '"format": 1e999'),
    "format_string": _set(("format",), "1"),
    "created_at_nan": lambda d: json.dumps(d).replace('"created_at": ', '"created_at": NaN, "x_": '),
    "creator_deep": lambda d: json.dumps(d).replace('"creator": ', '"creator": ' + _deep_text(DEEP) + ', "x_": '),
    "whole_file_deep": lambda d: "[" * 100_000 + "]" * 100_000,
    "hardware_string": _set(("hardware",), "nvidia"),
    "not_utf8": lambda d: "",  # the test writes the bytes itself
    "truncated": lambda d: json.dumps(d)[: len(json.dumps(d)) // 2],
}


@pytest.mark.parametrize("how", sorted(MANIFEST_EDITS))
def test_hostile_manifest_is_a_clean_refusal_everywhere(tmp_path: Path, how: str) -> None:
    record = make_record()
    root = _bundle(tmp_path, record)
    if how == "not_utf8":
        (root / MANIFEST_NAME).write_bytes(b"\xff\xfe{}")
    else:
        _edit_manifest(root, MANIFEST_EDITS[how])
    with pytest.raises(BundleError):
        read_manifest(root)
    report = verify_bundle(root)  # a report with the problem, not a traceback
    assert not report.ok and report.problems and not report.records
    dst = KernelStore(tmp_path / "dst", shipped=False, software=SW)
    with pytest.raises(BundleRefused):
        import_bundle(dst, root)
    assert dst.local_keys() == []
    # As a read-only layer: an empty layer, but never silently: one warning naming the bundle and why.
    layered = KernelStore(tmp_path / "dst", [root], shipped=False, software=SW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(layered.iter_records()) == [] and layered.get(key_of(record)) is None
    mine = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(mine) == 1 and str(root) in mine[0] and "skipped" in mine[0], mine


def _record_text(record: Any, how: str) -> str:
    data = record.to_dict()
    if how == "spec_batch_1e999":
        return json.dumps(data).replace('"batch": 1', '"batch": 1e999', 1)
    if how == "spec_batch_huge_int":
        return json.dumps(data).replace('"batch": 1', f'"batch": {10**400}', 1)
    if how == "metric_nan":
        return json.dumps(data).replace('"speedup": 1.5', '"speedup": NaN', 1)
    if how == "spec_string":
        data["spec"] = "b1-h2"
    elif how == "launch_list":
        data["launch"] = [16, 16]
    elif how == "source_int":
        data["source"] = 12345
    elif how == "deep":
        return json.dumps(data).replace('"spec": ', '"spec": ' + _deep_text(DEEP) + ', "x_": ', 1)
    elif how == "top_level_list":
        return json.dumps([data])
    elif how == "deep_source":
        data["source"] = data["source"] + "\nX = " + "(" * 3000 + "1" + ")" * 3000 + "\n"
    return json.dumps(data)


RECORD_EDITS = ["spec_batch_1e999", "spec_batch_huge_int", "metric_nan", "spec_string", "launch_list", "source_int",
                "deep", "top_level_list", "deep_source"]


@pytest.mark.parametrize("how", RECORD_EDITS)
def test_validate_record_refuses_hostile_records_with_bundle_error(how: str) -> None:
    with pytest.raises(BundleError):
        validate_record(_record_text(make_record(), how).encode())


@pytest.mark.parametrize("how", RECORD_EDITS)
def test_hostile_record_in_a_bundle_is_refused_alone(tmp_path: Path, how: str) -> None:
    """A bad record (its file re-hashed into the manifest, so only its content is wrong) costs that record: the
    bundle's other record still verifies and is served by a layer, with one warning for the bad one."""
    bad, good = make_record(64, tag=1), make_record(128, tag=2)
    root = _bundle(tmp_path, bad, good)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    (entry,) = [r for r in manifest["records"] if r["key"] == key_of(bad)]
    payload = _record_text(bad, how).encode()
    (root / entry["file"]).write_bytes(payload)
    for f in manifest["files"]:
        if f["path"] == entry["file"]:
            f["sha256"], f["size"] = hashlib.sha256(payload).hexdigest(), len(payload)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = verify_bundle(root)
    assert not report.ok and list(report.records) == [key_of(good)]
    assert any(entry["file"] in p for p in report.problems), report.problems
    layered = KernelStore(tmp_path / "dst", [root], shipped=False, software=SW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [h.key for h in layered.iter_records()] == [key_of(good)]
        assert layered.get(key_of(bad)) is None
    mine = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert mine and all(key_of(bad) in m for m in mine)


@pytest.mark.parametrize("text", [b'{"public_key": 1e999, "signature": "00"}', b'{"public_key": NaN}',
                                  b"[" * 50_000, b'{"public_key": ["a"], "signature": "b"}', b"\xff\xfe"])
def test_malformed_signature_file_is_a_value_error(text: bytes) -> None:
    with pytest.raises(ValueError, match="manifest.sig is malformed"):
        Signature.from_bytes(text)


# ---- a real store on disk, damaged -------------------------------------------------------------------------

class _Planted:
    """Unpickling this creates ``marker``: proof that the store ran code from its folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _corrupt_store(d: Path, how: str, good: str, bad: str, marker: Path) -> None:
    import diskcache

    db = d / "cache.db"
    if how == "garbage_sqlite":
        db.write_bytes(bytes(range(256)) * 64)
    elif how == "truncated_sqlite":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    elif how == "garbage_files":
        (d / "junk.bin").write_bytes(b"\x00\xff" * 500)
        (d / "ab").mkdir(exist_ok=True)
        (d / "ab" / "cd.val").write_bytes(b"\xde\xad")
    elif how == "value_file_escape":
        with sqlite3.connect(db) as con:  # a text value stored "in a file" that lies outside the store
            con.execute("UPDATE Cache SET mode = 3, filename = ?, value = NULL WHERE key = ?",
                        (str(marker.parent / "outside.json"), "rec:" + bad))
        (marker.parent / "outside.json").write_text("{}")
    else:
        plain = diskcache.Cache(str(d))  # the default Disk pickles objects: how a hostile writer plants them
        if how == "pickled_value":
            plain.set("rec:" + bad, _Planted(marker))
        elif how == "pickled_key":
            plain.set(("rec:", _Planted(marker)), "x")
        elif how == "pending_garbage":
            for k in list(plain.iterkeys()):
                if isinstance(k, str) and k.startswith("pending:"):
                    plain.set(k, '{"key": "x", "count": 1e999}')
        elif how == "generation_garbage":
            plain.set("meta:generation", "lots")
            plain.set("used:" + bad, "yesterday")
        else:
            plain.set("rec:" + bad, {"bad_json": "{not json", "deep_json": "[" * 100_000,
                                     "int_value": 7, "bytes_value": b"\xff\xfe", "nan_json": '{"a": NaN}'}[how])
        plain.close()


STORE_DAMAGE = ["garbage_sqlite", "truncated_sqlite", "garbage_files", "value_file_escape", "pickled_value",
                "pickled_key", "pending_garbage", "generation_garbage", "bad_json", "deep_json", "int_value",
                "bytes_value", "nan_json"]
WHOLE_DB = {"garbage_sqlite", "truncated_sqlite"}
COMMANDS = [["ls"], ["ls", "--all"], ["show", "KEY"], ["stats"], ["pending"], ["verify", "--all"],
            ["export", "-o", "OUT"], ["prune", "--unused-days", "100000", "--dry-run"], ["prune", "--stale-software"],
            ["pending", "--clear"], ["rm", "no/such-key"]]


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.mark.parametrize("how", STORE_DAMAGE)
def test_damaged_store_every_command_warns_and_lists_what_is_intact(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    d, marker = tmp_path / "store", tmp_path / "pwned"
    store = KernelStore(d, shipped=False)
    good, bad = store.put(make_record(64, tag=1)), store.put(make_record(128, tag=2))
    store.enqueue_pending(make_record(256).spec, make_record().hardware, "model")
    store.close()
    _corrupt_store(d, how, good, bad, marker)
    monkeypatch.setenv("AVO_CACHE_DIR", str(d))
    reset_settings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, text = _cli("--json", "ls")
        assert code == 0, text
        listed = [row["key"] for row in json.loads(text)]
        expected = [] if how in WHOLE_DB else [good] if how not in ("garbage_files", "pending_garbage",
                                                                     "generation_garbage", "pickled_key") \
            else sorted([good, bad])
        assert sorted(listed) == sorted(expected)
        code, text = _cli("--json", "verify", "--all")
        broken = how not in ("garbage_files", "pending_garbage", "generation_garbage", "pickled_key")
        assert code == (1 if broken else 0), text
        for argv in COMMANDS:  # every command: an exit code and a message, never an exception
            argv = [good if a == "KEY" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
            code, text = _cli(*argv)
            assert code in (0, 1), (argv, code, text)
        code, text = _cli("--json", "pending")
        assert code == 0 and isinstance(json.loads(text), list)
    assert not marker.exists(), "the store unpickled a planted object"
    if how not in ("garbage_files", "generation_garbage"):  # damage that changes what is listed is warned about
        assert any(issubclass(w.category, CacheWarning) for w in caught), how
