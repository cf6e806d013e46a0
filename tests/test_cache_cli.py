"""``python -m avo_inductor.cache``: every subcommand's exit code (0 ok, 1 refused/failed/not found, 2 usage)
and its --json output; human-readable tables are not asserted on."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from avo_inductor.cache.__main__ import main
from avo_inductor.cache.admin import parse_spec_text
from avo_inductor.cache.store import KernelStore
from avo_inductor.settings import reset_settings
from avo_inductor.spec import MaskKind
from cache_helpers import CPU_HW, OLD_SW, key_of, make_record, ok_verifier


@pytest.fixture(autouse=True)
def stub_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake test kernels don't follow the launcher ABI, so the (sandboxed) default verifier is an OK stub."""
    from avo_inductor.cache import bundle

    monkeypatch.setattr(bundle, "isolated_verifier", ok_verifier)


def _json(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, object]:
    capsys.readouterr()  # drop earlier commands' output
    code = main(["--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def _use_cache(monkeypatch: pytest.MonkeyPatch, path: Path, **env: str) -> KernelStore:
    monkeypatch.setenv("AVO_CACHE_DIR", str(path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    return KernelStore.from_settings()


def test_parse_spec_text() -> None:
    s = parse_spec_text("2,32,8,1000,1000,128 bf16 causal+win256+padding+train")
    assert (s.batch, s.q_heads, s.kv_heads, s.q_len, s.head_dim, s.v_head_dim) == (2, 32, 8, 1000, 128, 128)
    assert s.dtype == "bfloat16" and s.causal and s.window == 256 and s.mask is MaskKind.PADDING and s.needs_grad
    s = parse_spec_text("1,8,8,1,4096,64,32 float16 full")
    assert s.v_head_dim == 32 and not s.causal and s.dtype == "float16"
    for bad, needle in (("1,2,3", "6 or 7"), ("1,2,x,4,5,6", "integers"), ("1,2,2,4,4,8 bf16 sideways", "sideways")):
        with pytest.raises(ValueError, match=needle):
            parse_spec_text(bad)


def test_ls_show_export_verify_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    store = _use_cache(monkeypatch, tmp_path / "gpu-box")
    records = [make_record(64, tag=1), make_record(512, tag=2, speedup=2.0)]
    for r in records:
        store.put(r)
    code, rows = _json(capsys, "ls")
    assert code == 0 and sorted(row["key"] for row in rows) == sorted(key_of(r) for r in records)
    assert main(["ls"]) == 0 and main(["show", records[0].kernel_id[:8]]) == 0
    code, shown = _json(capsys, "show", key_of(records[1]))
    assert code == 0 and shown["record"]["source"] == records[1].source
    out = tmp_path / "bundle.tar.gz"
    assert main(["export", "-o", str(out), "--hardware", CPU_HW.slug, "--spec-filter", "q512"]) == 0
    code, reports = _json(capsys, "verify", str(out))
    assert code == 0 and reports[0]["records"] == [key_of(records[1])]

    prod = _use_cache(monkeypatch, tmp_path / "prod")
    code, reports = _json(capsys, "import", str(out))
    assert code == 0 and prod.local_keys() == [key_of(records[1])]

    folder = tmp_path / "folder"
    assert main(["export", "-o", str(folder)]) == 0  # exports what prod now holds
    rec_file = next((folder / "records").iterdir())
    rec_file.write_text(rec_file.read_text().replace("other=0.0", "other=9.9"))
    code, reports = _json(capsys, "verify", str(folder))
    assert code == 1 and rec_file.name in reports[0]["problems"][0] and "tampered" in reports[0]["problems"][0]
    fresh = _use_cache(monkeypatch, tmp_path / "fresh")
    code, reports = _json(capsys, "import", str(folder))
    assert code == 1 and fresh.local_keys() == []


def test_signing_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    store = _use_cache(monkeypatch, tmp_path / "gpu-box")
    store.put(make_record())
    assert main(["keygen", str(tmp_path / "keys")]) == 0
    assert main(["keygen", str(tmp_path / "keys")]) == 1  # never overwrites a key
    priv, pub = tmp_path / "keys" / "avo_ed25519.key", tmp_path / "keys" / "avo_ed25519.pub"
    assert main(["export", "-o", str(tmp_path / "signed"), "--key", str(priv)]) == 0
    assert main(["export", "-o", str(tmp_path / "plain")]) == 0
    prod = _use_cache(monkeypatch, tmp_path / "prod", AVO_REQUIRE_SIGNED="1")
    assert main(["verify", str(tmp_path / "signed")]) == 1  # no trusted key yet
    capsys.readouterr()
    assert main(["trust", str(pub)]) == 0
    assert main(["verify", str(tmp_path / "signed")]) == 0
    code, reports = _json(capsys, "import", str(tmp_path / "plain"))
    assert code == 1 and "unsigned" in reports[0]["problems"][0] and prod.local_keys() == []
    assert main(["sign", str(tmp_path / "plain"), "--key", str(priv)]) == 0
    assert main(["import", str(tmp_path / "plain")]) == 0 and prod.local_keys() == [key_of(make_record())]


def test_usage_errors_and_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _use_cache(monkeypatch, tmp_path / "c")
    assert main(["baseline", "--spec", "1,2,3"]) == 2
    assert "6 or 7 dimensions" in capsys.readouterr().err
    assert main(["prune"]) == 2 and main(["verify"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert main(["rm", "no/such-key"]) == 1 and main(["show", "deadbeef"]) == 1
    assert main(["import", str(tmp_path / "missing")]) == 1
    assert "neither a bundle folder" in capsys.readouterr().err


def test_pending_stats_rm_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    store = _use_cache(monkeypatch, tmp_path / "c")
    stale = store.put(make_record(64, software=OLD_SW))
    keep = store.put(make_record(128))
    store.enqueue_pending(make_record(2048).spec, CPU_HW, "llama")
    code, entries = _json(capsys, "pending")
    assert code == 0 and entries[0]["count"] == 1 and entries[0]["origins"] == ["llama"]
    code, info = _json(capsys, "stats")
    assert code == 0 and info["layers"][0]["records"] == 2 and info["pending_misses"] == 1
    assert main(["pending", "--clear"]) == 0 and store.pending() == []
    assert main(["prune", "--stale-software"]) == 0 and store.local_keys() == [keep]
    assert main(["rm", keep]) == 0 and store.local_keys() == []
    assert stale not in store.local_keys()


def test_baseline_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _use_cache(monkeypatch, tmp_path / "c")
    fake = types.ModuleType("avo_inductor.kernels.baseline")
    fake.baseline_record = lambda spec, hardware=None, software=None: make_record(spec.q_len, causal=spec.causal)
    monkeypatch.setitem(sys.modules, "avo_inductor.kernels.baseline", fake)
    assert main(["baseline", "--spec", "1,2,1,100,100,16 float32 causal"]) == 0
    assert store.local_keys() == [key_of(make_record(100, causal=True))]


def test_verify_all_as_a_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real entry point, as CI calls it: a corrupt local entry makes `verify --all` exit 1 and name it."""
    store = _use_cache(monkeypatch, tmp_path / "c")
    key = store.put(make_record())
    store.db.set("rec:" + key, "{truncated")
    store.close()
    env = {**os.environ, "AVO_CACHE_DIR": str(tmp_path / "c"), "AVO_USE_SHIPPED": "0"}
    proc = subprocess.run([sys.executable, "-m", "avo_inductor.cache", "--json", "verify", "--all"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 1, proc.stderr
    assert key in json.loads(proc.stdout)[0]["problems"][0]


@pytest.mark.parametrize("bad", ["-3", "-0.5", "nan", "NaN", "inf", "-inf", "1e999", "three", ""])
def test_prune_refuses_bad_ages_and_deletes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
                                                     bad: str) -> None:
    """`prune --unused-days -3` used to match (and delete) every record: bad ages are a usage error (rc 2)."""
    store = _use_cache(monkeypatch, tmp_path / "c")
    keys = sorted([store.put(make_record(64)), store.put(make_record(128, tag=2))])
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--unused-days", bad])
    assert exc.value.code == 2
    assert "--unused-days" in capsys.readouterr().err
    assert store.local_keys() == keys
    from avo_inductor.cache.admin import prune

    for age in (-3.0, float("nan"), float("inf")):  # the library refuses them too
        with pytest.raises(ValueError, match="unused-days"):
            prune(store, unused_days=age)
    assert store.local_keys() == keys


def test_prune_dry_run_lists_without_deleting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    store = _use_cache(monkeypatch, tmp_path / "c")
    stale = store.put(make_record(64, software=OLD_SW))
    old = store.put(make_record(128, tag=2))  # created_at 2023: unused for far more than a day
    fresh = store.put(dataclasses.replace(make_record(256, tag=3), created_at=time.time()))
    code, out = _json(capsys, "prune", "--stale-software", "--dry-run")
    assert code == 0 and out == {"dry_run": True, "removed": [], "would_remove": [stale]}
    code, out = _json(capsys, "prune", "--unused-days", "1", "--dry-run")
    assert code == 0 and sorted(out["would_remove"]) == sorted([stale, old])
    assert sorted(store.local_keys()) == sorted([stale, old, fresh])  # nothing deleted
    code, out = _json(capsys, "prune", "--unused-days", "1", "--stale-software")
    assert code == 0 and sorted(out["removed"]) == sorted([stale, old]) and store.local_keys() == [fresh]
