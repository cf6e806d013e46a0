"""The untuned starting point of every search and the kernel a fresh install can use: default genome, rendered."""
from __future__ import annotations

from ..cache.record import KernelRecord, source_sha256
from ..spec import AttentionSpec, HardwareKey, SoftwareKey
from .genome import KernelGenome
from .render import default_genome, render


def baseline_record(spec: AttentionSpec, hardware: HardwareKey | None = None,
                    software: SoftwareKey | None = None, genome: KernelGenome | None = None) -> KernelRecord:
    """KernelRecord of ``genome`` (default: ``default_genome(spec, hardware)``) rendered for ``spec`` (operator
    "baseline", no metrics): the untuned kernel, or a hand-picked variant for template A/B timing.

    hardware/software default to this process's device and versions. Not verified here: see verify_record.
    """
    hardware = hardware or HardwareKey.current()
    software = software or SoftwareKey.current()
    genome = genome or default_genome(spec, hardware)
    rendered = render(genome, spec)
    sha = source_sha256(rendered.source)
    return KernelRecord(
        spec=spec, hardware=hardware, software=software, source=rendered.source,
        entry_point=rendered.entry_point, bwd_entry_point=rendered.bwd_entry_point, launch=dict(rendered.launch),
        genome=genome.to_dict(), operator="baseline", lineage_id=f"baseline-{sha[:12]}", sha256=sha,
    )
