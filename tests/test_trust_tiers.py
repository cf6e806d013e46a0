"""Trust tiers (kernels/tiers.py, docs/CACHE.md): template records run only what the installed template renders;
source records pass the source gate and, with trusted keys configured, need a trusted bundle signature."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from avo_inductor.artifact import KernelRecord
from avo_inductor.cache.bundle import export_bundle, verify_bundle
from avo_inductor.cache.layers import shipped_roots
from avo_inductor.cache.manifest import BundleError, validate_record
from avo_inductor.cache.signing import keygen
from avo_inductor.cache.store import KernelStore
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.genome import KernelGenome
from avo_inductor.kernels.loader import check_record, load_record
from avo_inductor.kernels.render import TEMPLATES, default_genome, render, template_digest
from avo_inductor.kernels.tiers import as_source_record, kernel_for_record, stale_note, tiered
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind, SoftwareKey, store_key

CPU = HardwareKey("cpu", "triton-interpreter", (0, 0), 0)
SW = SoftwareKey.current()
SPECS = [AttentionSpec(2, 4, 2, 17, 33, 16, dtype="float16", causal=True, needs_grad=True),
         AttentionSpec(3, 4, 4, 47, 47, 24, dtype="float32", mask=MaskKind.BIAS),
         AttentionSpec(2, 8, 2, 1, 47, 16, dtype="bfloat16")]
IDS = ["causal-gqa-grad", "bias-f32", "decode-gqa"]


def _baseline(spec: AttentionSpec) -> KernelRecord:
    return baseline_record(spec, CPU, SW)


def _agent_edit(spec: AttentionSpec) -> KernelRecord:
    """A source-tier record: the baseline's text with an edit (a bare copy of the rendering reads as template)."""
    record = as_source_record(_baseline(spec))
    assert record.source is not None
    return dataclasses.replace(record, source=record.source + "\n# edited by the agent\n", sha256="")


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_baseline_is_a_template_record_rendered_on_load(spec: AttentionSpec) -> None:
    record = _baseline(spec)
    assert record.tier == "template" and record.source is None and "source" not in record.to_dict()
    assert record.template_digest == template_digest("flash_v1") and stale_note(record) is None
    expected = render(default_genome(spec, CPU), spec)
    assert kernel_for_record(record) == expected
    assert load_record(record).sha256 == expected.sha256  # what runs is the installed template's rendering


def test_format1_record_is_template_only_when_its_genome_renders_to_its_source() -> None:
    source_rec = as_source_record(_baseline(SPECS[0]))
    legacy = {k: v for k, v in source_rec.to_dict().items() if k != "tier"} | {"format": 1}
    parsed = KernelRecord.from_dict(legacy)
    assert parsed.tier == "source" and tiered(parsed).tier == "template"
    assert tiered(parsed).kernel_id == _baseline(SPECS[0]).kernel_id
    # the same record with one edited line (an agent edit, or a source from an older template) stays source
    edited = KernelRecord.from_dict({**legacy, "source": source_rec.source + "\n# edited\n", "sha256": ""})
    assert tiered(edited).tier == "source" and tiered(edited).source == edited.source
    # a genome that does not match its launch config stays source too
    other = {**legacy, "genome": {**legacy["genome"], "block_m": 32}}
    assert tiered(KernelRecord.from_dict(other)).tier == "source"


def test_template_digest_change_renders_installed_template_and_marks_speedup_stale(tmp_path: Path) -> None:
    record = dataclasses.replace(_baseline(SPECS[1]), template_digest="0" * 16, sha256="")
    note = stale_note(record)
    assert note is not None and "stale" in note and "0" * 16 in note
    assert kernel_for_record(record).source == render(default_genome(SPECS[1], CPU), SPECS[1]).source
    # in the writable store a stale template record is re-verified even on its own software
    store = KernelStore(tmp_path / "store", shipped=False, software=SW)
    store.put(record)
    hit = store.lookup(record.spec, record.hardware)
    assert hit is not None and hit.needs_reverify
    store.put(dataclasses.replace(record, template_digest=template_digest("flash_v1"), sha256=""))
    hit = store.lookup(record.spec, record.hardware)
    assert hit is not None and not hit.needs_reverify


@pytest.mark.parametrize("edit", [{"launch": "BLOCK_M"}, {"entry_point": "attn_fwd_ws90"}, {"genome": "template"}],
                         ids=["launch", "entry", "template"])
def test_template_record_must_be_what_its_genome_renders(edit: dict[str, str]) -> None:
    record = _baseline(SPECS[0])
    data = record.to_dict()
    if "launch" in edit:
        data["launch"] = {**data["launch"], "BLOCK_M": 32}
    elif "entry_point" in edit:
        data["entry_point"] = "attn_fwd_ws90"
    else:
        data["genome"] = {**data["genome"], "template": "flash_v2"}
    data["sha256"] = ""
    with pytest.raises(ValueError):
        check_record(KernelRecord.from_dict(data))


def test_source_record_passes_the_source_gate() -> None:
    good = _agent_edit(SPECS[2])
    assert check_record(good) == good
    assert check_record(as_source_record(_baseline(SPECS[2]))).tier == "template"  # the rendering itself
    for evil in ("\nimport os\n", "\nx = triton.runtime.driver\n", "\n@triton.jit\ndef f(X):\n    open('x')\n"):
        with pytest.raises(ValueError, match="allowlist"):
            check_record(dataclasses.replace(good, source=good.source + evil, sha256=""))
    with pytest.raises(ValueError, match="signed"):
        check_record(good, source_needs_signature=True)
    assert check_record(_baseline(SPECS[2]), source_needs_signature=True).tier == "template"


def _export(tmp_path: Path, name: str, records: list[KernelRecord], sign_key: Path | None = None) -> Path:
    store = KernelStore(tmp_path / f"src-{name}", shipped=False, software=SW)
    for record in records:
        store.put(record)
    export_bundle(store, tmp_path / name, sign_key=sign_key)
    return tmp_path / name


def test_source_records_need_a_trusted_signature_when_keys_are_configured(tmp_path: Path) -> None:
    alice_priv, _, alice_pub = keygen(tmp_path / "keys" / "alice")
    mallory_priv, _, _ = keygen(tmp_path / "keys" / "mallory")
    template = _baseline(SPECS[0])
    source = _agent_edit(SPECS[1])
    unsigned = _export(tmp_path, "unsigned", [template, source])
    assert verify_bundle(unsigned, trusted_keys=()).ok  # no keys configured: the allowlist gate alone
    assert not verify_bundle(unsigned, trusted_keys=[alice_pub]).ok  # the manifest policy refuses it whole
    assert verify_bundle(_export(tmp_path, "alice", [template, source], alice_priv), trusted_keys=[alice_pub]).ok
    assert not verify_bundle(_export(tmp_path, "mallory", [source], mallory_priv), trusted_keys=[alice_pub]).ok
    # the record-level rule the bundle and layer checks apply (signer not trusted while keys are configured)
    for record in (template, source):
        raw = json.dumps(record.to_dict()).encode()
        assert validate_record(raw, source_needs_signature=False).tier == record.tier
    assert validate_record(json.dumps(template.to_dict()).encode(), source_needs_signature=True) == template
    with pytest.raises(BundleError, match="signed"):
        validate_record(json.dumps(source.to_dict()).encode(), source_needs_signature=True)


def test_validate_record_names_the_tier_gate() -> None:
    source = as_source_record(_baseline(SPECS[0]))
    raw = json.dumps(source.to_dict()).encode()
    assert validate_record(raw, store_key(source.spec, CPU)).tier == "template"  # format upgrade on read
    evil = dataclasses.replace(source, source=source.source + "\nimport subprocess\n", sha256="")
    with pytest.raises(BundleError, match="allowlist"):
        validate_record(json.dumps(evil.to_dict()).encode())


def test_shipped_bundle_is_template_tier_and_verifies() -> None:
    roots = shipped_roots()
    assert roots, "the package ships at least one bundle"
    for root in roots:
        report = verify_bundle(root, trusted_keys=())
        assert report.ok, report.problems
        for record in report.records.values():
            assert record.tier == "template" and record.source is None
            assert KernelGenome.from_dict(record.genome or {}).template in TEMPLATES  # flash_ws90 since session 18
            assert kernel_for_record(record).entry_point == record.entry_point
