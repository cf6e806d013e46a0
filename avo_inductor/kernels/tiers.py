"""Trust tiers of a KernelRecord: which code a record may run and what it must pass first.

"template": an installed template + genome. The record stores no source; the kernel is re-rendered from the
installed template when it is loaded, so no foreign code runs. When the installed template's digest differs from
the record's (the package was upgraded since the kernel was measured), the kernel is still rendered from the
installed template and re-verified like any record tuned on other software; its measured speedup is then stale
(:func:`stale_note`). "source": an agent-edited module; it passes the kernel-source gate
(``loader.static_violations``) and, when trusted keys are configured, comes from a bundle signed by one of them.
Format-1 records (no tier) are source records, except one whose genome renders to exactly its source: that one
is a template record (:func:`tiered`).
"""
from __future__ import annotations

import dataclasses

from ..artifact import KernelRecord, KernelSource, LaunchConfig
from ..spec import AttentionSpec, HardwareKey, SoftwareKey
from .genome import KernelGenome
from .render import render, template_digest


def template_record(genome: KernelGenome, spec: AttentionSpec, hardware: HardwareKey, software: SoftwareKey,
                    **provenance: object) -> KernelRecord:
    """A template-tier record of ``genome`` for ``spec`` (ValueError when the template cannot render it).

    ``provenance``: the other KernelRecord fields (metrics, lineage_id, parent_ids, operator, ...)."""
    kernel = render(genome, spec)
    return KernelRecord(spec=spec, hardware=hardware, software=software, source=None,
                        entry_point=kernel.entry_point, bwd_entry_point=kernel.bwd_entry_point,
                        launch=kernel.launch_dict, genome=genome.to_dict(), tier="template",
                        template_digest=template_digest(genome.template), **provenance)  # type: ignore[arg-type]


def kernel_for_record(record: KernelRecord) -> KernelSource:
    """The kernel a record runs: a template record re-rendered from the installed template (its launch config and
    entry points must be the genome's), a source record's own text. ValueError when they disagree."""
    if record.tier != "template":
        assert record.source is not None  # KernelRecord guarantees it for the source tier
        return KernelSource(record.source, record.entry_point, record.bwd_entry_point,
                            LaunchConfig.from_dict(record.launch))
    if record.genome is None:
        raise ValueError(f"template record {record.kernel_id} has no genome")
    kernel = render(KernelGenome.from_dict(record.genome), record.spec)
    if (kernel.entry_point, kernel.bwd_entry_point) != (record.entry_point, record.bwd_entry_point) \
            or kernel.launch != LaunchConfig.from_dict(record.launch):
        raise ValueError(f"template record {record.kernel_id}: its entry points / launch config are not what its "
                         f"genome renders ({record.launch} vs {kernel.launch_dict})")
    return kernel


def tiered(record: KernelRecord) -> KernelRecord:
    """``record`` in its trust tier: a source record whose genome renders to exactly its source (and launch) becomes
    a template record; anything else is returned unchanged."""
    if record.tier == "template" or record.genome is None:
        return record
    try:
        genome = KernelGenome.from_dict(record.genome)
        kernel = render(genome, record.spec)
    except ValueError:
        return record
    if kernel.source != record.source or kernel.launch != LaunchConfig.from_dict(record.launch) \
            or (kernel.entry_point, kernel.bwd_entry_point) != (record.entry_point, record.bwd_entry_point):
        return record
    return dataclasses.replace(record, source=None, sha256="", tier="template", launch=kernel.launch_dict,
                               template_digest=template_digest(genome.template))


def as_source_record(record: KernelRecord) -> KernelRecord:
    """A source-tier copy of ``record`` with the source it runs (the starting point of an agent edit)."""
    if record.tier == "source":
        return record
    kernel = kernel_for_record(record)
    return dataclasses.replace(record, source=kernel.source, sha256="", tier="source", template_digest="",
                               launch=kernel.launch_dict)


def stale_note(record: KernelRecord) -> str | None:
    """Why a template record's metrics may not describe the kernel it now renders to, or None when they do."""
    if record.tier != "template" or record.genome is None:
        return None
    installed = template_digest(str(record.genome.get("template", "flash_v1")))
    if installed == record.template_digest:
        return None
    return (f"template changed since measured (digest {record.template_digest} -> {installed}): rendered from the "
            "installed template and re-verified; the recorded speedup is stale")
