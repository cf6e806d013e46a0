"""KernelRecord: what the store holds per (hardware, spec) key — source, launch config, provenance, metrics."""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from ..spec import AttentionSpec, HardwareKey, SoftwareKey

RECORD_FORMAT = 1


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KernelMetrics:
    """Measured on the record's hardware; speedup is over ``baseline`` timed in the same process."""

    median_ms: float | None = None
    tflops: float | None = None
    speedup: float | None = None
    baseline: str | None = None
    baseline_ms: float | None = None
    max_abs_err: float | None = None
    rel_err: float | None = None
    bwd_median_ms: float | None = None
    bwd_speedup: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelMetrics:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class KernelRecord:
    """A verified kernel for one spec on one GPU.

    source: full Triton module text (the only code in a record; checked by the static allowlist before use).
    entry_point / bwd_entry_point: names of the forward / backward ``@triton.jit`` functions in ``source``
    following the launcher ABI in ``kernels/launch.py`` (bwd None = backward recomputes through the fallback).
    launch: block sizes, warps, stages and grid rule the trusted launcher uses.
    verified_software: software keys this record was (re)verified on.
    """

    spec: AttentionSpec
    hardware: HardwareKey
    software: SoftwareKey
    source: str
    entry_point: str
    launch: dict[str, Any]
    genome: dict[str, Any] | None = None
    bwd_entry_point: str | None = None
    metrics: KernelMetrics = field(default_factory=KernelMetrics)
    lineage_id: str = ""
    parent_ids: tuple[str, ...] = ()
    operator: str = "baseline"
    created_at: float = field(default_factory=time.time)
    sha256: str = ""
    verified_software: tuple[SoftwareKey, ...] = ()
    format: int = RECORD_FORMAT

    def __post_init__(self) -> None:
        actual = source_sha256(self.source)
        if not self.sha256:
            object.__setattr__(self, "sha256", actual)
        elif self.sha256 != actual:
            raise ValueError(f"KernelRecord sha256 mismatch: recorded {self.sha256[:12]}…, source hashes to {actual[:12]}…")
        if not self.entry_point.isidentifier():
            raise ValueError(f"KernelRecord.entry_point must be an identifier; got {self.entry_point!r}")
        object.__setattr__(self, "parent_ids", tuple(self.parent_ids))
        object.__setattr__(self, "verified_software", tuple(self.verified_software))

    @property
    def kernel_id(self) -> str:
        """Short content id: changes whenever the source or launch config changes."""
        from ..spec import kernel_id

        return kernel_id(self.sha256, self.entry_point, self.bwd_entry_point, self.launch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "spec": self.spec.to_dict(),
            "hardware": self.hardware.to_dict(),
            "software": self.software.to_dict(),
            "source": self.source,
            "entry_point": self.entry_point,
            "bwd_entry_point": self.bwd_entry_point,
            "launch": dict(self.launch),
            "genome": self.genome,
            "metrics": self.metrics.to_dict(),
            "lineage_id": self.lineage_id,
            "parent_ids": list(self.parent_ids),
            "operator": self.operator,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "verified_software": [s.to_dict() for s in self.verified_software],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelRecord:
        """Parse a record; raises ValueError (never KeyError/TypeError) on malformed or future-format data."""
        try:
            fmt = int(data.get("format", RECORD_FORMAT))
            if fmt > RECORD_FORMAT:
                raise ValueError(f"record format {fmt} is newer than this avo_inductor understands ({RECORD_FORMAT})")
            return cls(
                spec=AttentionSpec.from_dict(data["spec"]),
                hardware=HardwareKey.from_dict(data["hardware"]),
                software=SoftwareKey.from_dict(data["software"]),
                source=str(data["source"]),
                entry_point=str(data["entry_point"]),
                bwd_entry_point=data.get("bwd_entry_point"),
                launch=dict(data["launch"]),
                genome=data.get("genome"),
                metrics=KernelMetrics.from_dict(data.get("metrics") or {}),
                lineage_id=str(data.get("lineage_id", "")),
                parent_ids=tuple(data.get("parent_ids", ())),
                operator=str(data.get("operator", "baseline")),
                created_at=float(data.get("created_at", 0.0)),
                sha256=str(data.get("sha256", "")),
                verified_software=tuple(SoftwareKey.from_dict(s) for s in data.get("verified_software", ())),
                format=fmt,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed KernelRecord: {type(exc).__name__}: {exc}") from None

    def with_changes(self, **changes: Any) -> KernelRecord:
        return dataclasses.replace(self, **changes)
