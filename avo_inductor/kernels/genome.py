"""KernelGenome: every knob that distinguishes one attention kernel variant from another.

The knobs, their values, defaults and validation are the knob table in ``avo_inductor/artifact.py`` (one entry
per knob); KernelGenome is the frozen dataclass generated from it, so an invalid genome never reaches the
renderer. This module is the genome's import home for the kernels layer.
"""
from __future__ import annotations

from ..artifact import GENOME_SPACE, KNOB_BY_NAME, KNOBS, KernelGenome, Knob

__all__ = ["GENOME_SPACE", "KNOBS", "KNOB_BY_NAME", "KernelGenome", "Knob"]
