"""``cache restamp``: a template record measured with an older template is re-stamped to the installed one only when
code digests (benchmarks/probes/ptx_digest.py --records) show every one of its kernels unchanged; every other record
is copied as it was and keeps its first-use check."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from avo_inductor.artifact import KernelRecord
from avo_inductor.cache.__main__ import main
from avo_inductor.cache.bundle import export_bundle, verify_bundle
from avo_inductor.cache.manifest import BundleError, record_filename
from avo_inductor.cache.restamp import CodeDigests, restamp_bundle
from avo_inductor.cache.store import KernelStore
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.render import template_digest
from avo_inductor.kernels.tiers import stale_note
from avo_inductor.spec import AttentionSpec, MaskKind, store_key
from cache_helpers import CPU_HW, SW, make_record

OLD = "0123456789abcdef"  # the digest of a template the records were measured with
REPO = Path(__file__).resolve().parents[1]


def _measured_with_old_template(spec: AttentionSpec) -> KernelRecord:
    return dataclasses.replace(baseline_record(spec, CPU_HW, SW), template_digest=OLD, sha256="")


SPECS = {"same": AttentionSpec(2, 4, 2, 17, 33, 16, dtype="float16", causal=True),
         "changed": AttentionSpec(3, 4, 4, 47, 47, 24, dtype="float32", mask=MaskKind.BIAS),
         "failed": AttentionSpec(2, 8, 2, 1, 47, 16, dtype="bfloat16"),
         "missing": AttentionSpec(1, 2, 2, 64, 64, 32, dtype="bfloat16", window=16, causal=True)}


def _stem(record: KernelRecord) -> str:
    return Path(record_filename(store_key(record.spec, record.hardware))).stem


def _digests(records: dict[str, KernelRecord], template: str, *, after: bool) -> CodeDigests:
    """Evidence as ptx_digest writes it: the "changed" record's code differs after the edit, the "failed" one did not
    compile after it, the "missing" one was not compiled at all."""
    kernels: dict[str, str] = {}
    for name, record in records.items():
        if name == "missing":
            continue
        for lengths in ("own", "ragged"):
            digest = f"{name}-{lengths}".ljust(64, "0")
            if after and name == "changed" and lengths == "ragged":
                digest = "f" * 64
            if after and name == "failed":
                digest = "error: OutOfResources: shared memory"
            kernels[f"record/{_stem(record)}/{lengths}/attn_fwd"] = digest
    return CodeDigests("3.9.0", {"flash_v1": template}, kernels)


def _bundle(tmp_path: Path, records: list[KernelRecord]) -> Path:
    store = KernelStore(tmp_path / "src-store", shipped=False, software=SW)
    for record in records:
        store.put(record)
    export_bundle(store, tmp_path / "bundle")
    return tmp_path / "bundle"


@pytest.fixture
def old_bundle(tmp_path: Path) -> tuple[Path, dict[str, KernelRecord]]:
    records = {name: _measured_with_old_template(spec) for name, spec in SPECS.items()}
    records["current"] = baseline_record(AttentionSpec(1, 2, 1, 113, 113, 16, dtype="float32"), CPU_HW, SW)
    records["source"] = make_record(64, tag=3)
    return _bundle(tmp_path, list(records.values())), records


def test_only_records_whose_code_is_unchanged_are_restamped(tmp_path: Path,
                                                            old_bundle: tuple[Path, dict[str, KernelRecord]]) -> None:
    bundle, records = old_bundle
    installed = template_digest("flash_v1")
    report = restamp_bundle(bundle, tmp_path / "out", _digests(records, OLD, after=False),
                            _digests(records, installed, after=True))
    by_key = {o.key: o for o in report.outcomes}
    outcome = {name: by_key[store_key(r.spec, r.hardware)] for name, r in records.items()}
    assert [n for n, o in outcome.items() if o.restamped] == ["same"]
    assert "code changed" in outcome["changed"].why and "did not compile" in outcome["failed"].why
    assert "no compiled kernels" in outcome["missing"].why and "already" in outcome["current"].why
    assert "source record" in outcome["source"].why

    out = verify_bundle(tmp_path / "out")
    assert out.ok and len(out.records) == len(records)
    fresh = out.records[store_key(records["same"].spec, CPU_HW)]
    old = records["same"]
    assert fresh.template_digest == installed and stale_note(fresh) is None and stale_note(old) is not None
    assert fresh.kernel_id != old.kernel_id and old.kernel_id in fresh.parent_ids
    assert (fresh.genome, fresh.metrics, fresh.spec, fresh.software) == (old.genome, old.metrics, old.spec,
                                                                        old.software)
    for name in ("changed", "failed", "missing", "current", "source"):  # copied byte for byte in meaning
        assert out.records[store_key(records[name].spec, records[name].hardware)] == records[name]


def test_evidence_from_other_compilers_or_templates_is_refused_and_nothing_written(
        tmp_path: Path, old_bundle: tuple[Path, dict[str, KernelRecord]]) -> None:
    bundle, records = old_bundle
    before, after = _digests(records, OLD, after=False), _digests(records, template_digest("flash_v1"), after=True)
    with pytest.raises(BundleError, match="different Triton"):
        restamp_bundle(bundle, tmp_path / "a", before, dataclasses.replace(after, triton="3.6.0"))
    with pytest.raises(BundleError, match="installed templates"):  # 'after' must describe what this package renders
        restamp_bundle(bundle, tmp_path / "b", before, dataclasses.replace(after, template_digests={"flash_v1": OLD}))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"record/x/own/attn_fwd": "0" * 64}))  # a matrix file, not --records evidence
    with pytest.raises(BundleError, match="--records"):
        CodeDigests.load(bad)


def test_cli_restamp_with_digests_compiled_by_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: the probe compiles the records' kernels for sm_90 on this CPU (twice, as a before/after pair
    from one checkout would), and the CLI re-stamps the stale record from that evidence."""
    monkeypatch.setenv("AVO_CACHE_DIR", str(tmp_path / "cli-store"))
    record = _measured_with_old_template(AttentionSpec(1, 2, 2, 17, 17, 16, dtype="bfloat16"))
    bundle = _bundle(tmp_path, [record])
    evidence = tmp_path / "after.json"
    subprocess.run([sys.executable, "-m", "benchmarks.probes.ptx_digest", "--records", str(bundle / "records"),
                    "--out", str(evidence)], cwd=REPO, check=True, capture_output=True, timeout=600)
    after = CodeDigests.load(evidence)
    assert after.template_digests == {"flash_v1": template_digest("flash_v1")}
    assert len(after.kernels) == 2 and not any(v.startswith("error") for v in after.kernels.values())
    before = tmp_path / "before.json"  # the same code under the record's template digest
    before.write_text(json.dumps({**after.to_dict(), "template_digests": {"flash_v1": OLD}}))
    capsys.readouterr()
    assert main(["restamp", str(bundle), "--before", str(before), "--after", str(evidence),
                 "-o", str(tmp_path / "out"), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["records"]
    assert row["restamped"] and "identical code (2 kernels" in row["why"]
    assert main(["restamp", str(bundle), "--before", str(evidence), "--after", str(evidence),
                 "-o", str(tmp_path / "out2")]) == 0  # 'before' of another template: kept, and said so
    assert "kept" in capsys.readouterr().out
