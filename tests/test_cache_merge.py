"""``cache merge``: several bundles into one folder or archive, the faster record per key, every source checked
like an import before anything is written (a tampered or untrusted source refuses the whole merge)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from avo_inductor.cache.__main__ import main
from avo_inductor.cache.bundle import BundleRefused, export_bundle, verify_bundle
from avo_inductor.cache.merge import merge_bundles
from avo_inductor.cache.signing import keygen
from avo_inductor.cache.store import KernelStore
from avo_inductor.settings import Settings
from cache_helpers import SW, key_of, make_record


def _bundle(tmp_path: Path, name: str, *records, sign_key: Path | None = None) -> Path:
    store = KernelStore(tmp_path / f"store-{name}", shipped=False, software=SW)
    for record in records:
        store.put(record)
    out = tmp_path / name
    export_bundle(store, out, sign_key=sign_key)
    return out


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(cache_dir=tmp_path / "merge-store", use_shipped=False, **kw)


@pytest.mark.parametrize("out_name", ["merged", "merged.tar.gz"])
def test_merge_keeps_the_faster_record_per_key_and_every_other_key(tmp_path: Path, out_name: str) -> None:
    slow, fast = make_record(64, tag=1, speedup=1.2), make_record(64, tag=2, speedup=1.6)
    only_a, only_b = make_record(128, tag=3), make_record(512, tag=4)
    a = _bundle(tmp_path, "a", slow, only_a)
    b = _bundle(tmp_path, "b", fast, only_b, only_a)  # only_a in both: one record, nothing "replaced"
    report = merge_bundles([a, b], tmp_path / out_name, settings=_settings(tmp_path))
    merged = verify_bundle(tmp_path / out_name, settings=_settings(tmp_path))
    assert merged.ok, merged.problems
    assert {k: r.kernel_id for k, r in merged.records.items()} == {
        key_of(fast): fast.kernel_id, key_of(only_a): only_a.kernel_id, key_of(only_b): only_b.kernel_id}
    replaced = {c.key: c.replaced for c in report.choices}
    assert len(replaced[key_of(fast)]) == 1 and slow.kernel_id in replaced[key_of(fast)][0]
    assert replaced[key_of(only_a)] == () and replaced[key_of(only_b)] == ()


def test_a_tampered_source_refuses_the_merge_and_writes_nothing(tmp_path: Path) -> None:
    a = _bundle(tmp_path, "a", make_record(64, tag=1))
    b = _bundle(tmp_path, "b", make_record(128, tag=2))
    rec_file = next((b / "records").iterdir())
    rec_file.write_text(rec_file.read_text().replace('"operator"', '"operator" ', 1))  # one byte more
    with pytest.raises(BundleRefused, match="tampered"):
        merge_bundles([a, b], tmp_path / "merged", settings=_settings(tmp_path))
    assert not (tmp_path / "merged").exists()
    with pytest.raises(ValueError, match="at least one"):
        merge_bundles([], tmp_path / "merged", settings=_settings(tmp_path))


def test_an_unsigned_source_is_refused_when_signatures_are_required(tmp_path: Path) -> None:
    priv, pub, _ = keygen(tmp_path / "keys")
    signed = _bundle(tmp_path, "signed", make_record(64, tag=1), sign_key=priv)
    unsigned = _bundle(tmp_path, "unsigned", make_record(128, tag=2))
    settings = _settings(tmp_path, trusted_keys=(str(pub),), require_signed=True)
    with pytest.raises(BundleRefused, match="unsigned"):
        merge_bundles([signed, unsigned], tmp_path / "merged", settings=settings)
    merge_bundles([signed], tmp_path / "merged", settings=settings, sign_key=priv)
    assert verify_bundle(tmp_path / "merged", settings=settings).ok


def test_cli_merge_prints_what_it_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("AVO_CACHE_DIR", str(tmp_path / "cli-store"))
    slow, fast = make_record(64, tag=1, speedup=1.1), make_record(64, tag=2, speedup=1.9)
    a, b = _bundle(tmp_path, "a", slow), _bundle(tmp_path, "b", fast)
    capsys.readouterr()
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "m"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["records"]
    assert [(r["key"], r["kernel_id"]) for r in rows] == [(key_of(fast), fast.kernel_id)]
    assert main(["merge", str(a), "-o", str(tmp_path / "m")]) == 1  # the target exists and is not empty
    assert "not an empty folder" in capsys.readouterr().err
