"""The untuned starting point of every search and the kernel a fresh install can use: default genome, rendered."""
from __future__ import annotations

from ..artifact import KernelRecord
from ..spec import AttentionSpec, HardwareKey, SoftwareKey
from .genome import KernelGenome
from .render import default_genome
from .tiers import template_record


def baseline_record(spec: AttentionSpec, hardware: HardwareKey | None = None,
                    software: SoftwareKey | None = None, genome: KernelGenome | None = None) -> KernelRecord:
    """Template-tier KernelRecord of ``genome`` (default: ``default_genome(spec, hardware)``) for ``spec`` (operator
    "baseline", no metrics): the untuned kernel, or a hand-picked variant for template A/B timing.

    hardware/software default to this process's device and versions. Not verified here: see verify_record.
    """
    hardware = hardware or HardwareKey.current()
    software = software or SoftwareKey.current()
    genome = genome or default_genome(spec, hardware)
    record = template_record(genome, spec, hardware, software, operator="baseline")
    return record.with_changes(lineage_id=f"baseline-{record.sha256[:12]}")
