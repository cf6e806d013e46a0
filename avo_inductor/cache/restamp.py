"""Re-stamp a bundle's template records after a template edit that left the code they run unchanged.

A template record names the template digest it was measured with; when the installed template's digest differs,
the store treats the record as stale (kernels/tiers.py ``stale_note``): its recorded speedup may not describe the
kernel the installed template renders, so it gets the full first-use verification on every host, and a class hit on
it is checked at the ragged set instead of the site's lengths alone. Most template edits touch one path (a backward
knob, an ALiBi loop) and leave the code of every other record byte-identical. Re-measuring those on a GPU would be
the same measurement again; what has to be shown is that the code is the same.

The evidence is two digest files written by ``python -m benchmarks.probes.ptx_digest --records BUNDLE/records``:
one from a checkout whose template has the records' digest (``before``), one from the installed template
(``after``), with the same Triton. Each holds the template digests it compiled with and the sha256 of the sm_90 PTX
of every entry kernel of every record, at the record's own lengths and at ragged ones. A record is re-stamped (its
``template_digest`` set to the installed one; its identity and kernel id follow; the old kernel id joins its
``parent_ids``) only when every one of its kernels compiled in both and is identical; any other record is copied
unchanged and keeps its first-use check. The result is a new bundle; replacing the shipped folder is the
maintainer's step, as with ``cache merge``.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact import KernelRecord
from ..kernels.render import template_digest
from .bundle import BundleRefused, verify_bundle, write_bundle_to
from .manifest import BundleError, Manifest, record_filename

RECORD_PREFIX = "record"  # ptx_digest --records names each kernel record/<file stem>/<lengths>/<kernel>


@dataclass(frozen=True)
class CodeDigests:
    """One ``ptx_digest --records`` file: the Triton version and template digests it compiled with, and
    {"record/<file stem>/<own|ragged>/<kernel>": sha256 of the PTX, or "error: ..."}."""

    triton: str
    template_digests: dict[str, str]
    kernels: dict[str, str]

    @classmethod
    def load(cls, path: str | Path) -> CodeDigests:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: not a readable digest file ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("kernels"), dict) \
                or not isinstance(data.get("template_digests"), dict) or not isinstance(data.get("triton"), str):
            raise BundleError(f"{path}: not a ptx_digest --records file (needs triton, template_digests, kernels)")
        return cls(data["triton"], {str(k): str(v) for k, v in data["template_digests"].items()},
                   {str(k): str(v) for k, v in data["kernels"].items()})

    def to_dict(self) -> dict[str, Any]:
        return {"triton": self.triton, "template_digests": self.template_digests, "kernels": self.kernels}

    def of_record(self, stem: str) -> dict[str, str]:
        prefix = f"{RECORD_PREFIX}/{stem}/"
        return {k[len(prefix):]: v for k, v in self.kernels.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class RestampOutcome:
    """What happened to one record: re-stamped (with the digests), or copied as it was and why."""

    key: str
    restamped: bool
    why: str


@dataclass
class RestampReport:
    out: str
    outcomes: list[RestampOutcome] = field(default_factory=list)
    manifest: Manifest | None = None

    @property
    def restamped(self) -> int:
        return sum(o.restamped for o in self.outcomes)


def _same_code(before: Mapping[str, str], after: Mapping[str, str]) -> str | None:
    """None when both sides compiled the same kernels to the same code; else why not."""
    if not before:
        return "no compiled kernels for it in the 'before' digests"
    if set(before) != set(after):
        return f"kernels differ between the digest files ({sorted(set(before) ^ set(after))[:3]})"
    for name, digest in sorted(before.items()):
        if digest.startswith("error") or after[name].startswith("error"):
            return f"{name} did not compile ({(digest if digest.startswith('error') else after[name])[:120]})"
        if after[name] != digest:
            return f"{name}: the code changed"
    return None


def restamp_record(key: str, record: KernelRecord, before: CodeDigests, after: CodeDigests,
                   installed: Mapping[str, str]) -> tuple[KernelRecord, RestampOutcome]:
    """``record`` re-stamped to the installed template when the digests show its code unchanged, else as it was."""
    if record.tier != "template" or record.genome is None:
        return record, RestampOutcome(key, False, "a source record: its code is its own, nothing to re-stamp")
    template = str(record.genome.get("template", "flash_v1"))
    now = installed.get(template) or template_digest(template)
    if record.template_digest == now:
        return record, RestampOutcome(key, False, "already measured with the installed template")
    if before.template_digests.get(template) != record.template_digest:
        return record, RestampOutcome(key, False, f"measured with template {record.template_digest}; the 'before' "
                                                  f"digests are of {before.template_digests.get(template)}")
    stem = Path(record_filename(key)).stem
    why = _same_code(before.of_record(stem), after.of_record(stem))
    if why is not None:
        return record, RestampOutcome(key, False, why)
    parents = record.parent_ids if record.kernel_id in record.parent_ids else (*record.parent_ids, record.kernel_id)
    fresh = dataclasses.replace(record, template_digest=now, sha256="", parent_ids=parents)
    return fresh, RestampOutcome(key, True, f"{record.template_digest} -> {now}: identical code "
                                            f"({len(before.of_record(stem))} kernels, triton {after.triton})")


def restamp_bundle(bundle: str | Path, out: str | Path, before: CodeDigests, after: CodeDigests, *,
                   creator: str | None = None, trusted_keys: Any = None) -> RestampReport:
    """Write ``bundle``'s records to the new bundle ``out``, each re-stamped where the digests prove its code
    unchanged. Refuses (BundleError, nothing written) when the bundle does not verify, the two digest files come from
    different Triton versions, or ``after`` was not compiled from the installed templates."""
    if before.triton != after.triton:
        raise BundleError(f"the digest files come from different Triton versions ({before.triton} vs "
                          f"{after.triton}): identical code cannot be shown across compilers")
    installed = {name: template_digest(name) for name in after.template_digests}
    wrong = {n: d for n, d in after.template_digests.items() if installed[n] != d}
    if wrong:
        raise BundleError(f"the 'after' digests were not compiled from the installed templates ({wrong}; installed "
                          f"{ {n: installed[n] for n in wrong} })")
    source = verify_bundle(bundle, trusted_keys)
    if not source.ok:
        raise BundleRefused(source)
    report = RestampReport(str(out))
    records: list[KernelRecord] = []
    for key, record in sorted(source.records.items()):
        fresh, outcome = restamp_record(key, record, before, after, installed)
        records.append(fresh)
        report.outcomes.append(outcome)
    manifest = source.manifest
    report.manifest = write_bundle_to(out, records, creator or (manifest.creator if manifest else None))
    return report
