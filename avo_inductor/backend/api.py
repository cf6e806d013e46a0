"""The kernel for a spec, for tools: benchmarks, probes, notebooks (``avo_inductor.kernel_for``).

A tool that times or inspects avo kernels needs what ``torch.compile(backend="avo")`` would run for a spec (the
store's record, verified on first use) or the untuned template kernel, registered with the avo op so that
``torch.ops.avo.attention(..., handle.kernel_id, ...)`` runs it. The store lookup and first-use verification are
the graph pass's own (``graph_pass``), not a copy, so a tool gets exactly the kernel a compile would get. It lives
in the backend layer for that reason: it uses the pass's lookup policy, and the cache and kernels below it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from ..artifact import KernelRecord
from ..kernels.baseline import baseline_record
from ..kernels.genome import KernelGenome
from ..kernels.op import register_kernel
from ..kernels.render import default_genome
from ..settings import get_settings
from ..spec import AttentionSpec, HardwareKey
from .graph_pass import ensure_verified, lookup_record, shared_store

if TYPE_CHECKING:
    from ..cache.store import KernelStore

Source = Literal["store", "baseline", "auto"]
SOURCES: tuple[str, ...] = ("store", "baseline", "auto")
TEMPLATE_LAYER = "template"  # KernelHandle.layer of a baseline kernel: rendered here, from no store layer


class KernelNotFound(LookupError):
    """``source="store"`` and the store has no usable record for the spec (a miss, or it failed verification)."""


@dataclass(frozen=True)
class KernelHandle:
    """A kernel registered with the avo op, and where it came from.

    ``spec`` is the spec asked for (what a call computes: scale, causal, window, mask kind); ``record.spec`` is the
    one the kernel was tuned or rendered for (a store record covers a bucket of shapes, and the graph pass's lookup
    may serve an inference site from the same shape's training record). ``source`` is "store" or "baseline";
    ``layer`` the store layer the record came from, or "template" for a baseline. ``note`` says why
    ``source="auto"`` fell back to the baseline. ``tuned_at``: set when a class record tuned at another shape serves
    the spec (verified at the spec's shape first); a caller reports it like the graph pass and queues the spec.
    """

    spec: AttentionSpec
    record: KernelRecord
    kernel_id: str
    source: Literal["store", "baseline"]
    layer: str
    note: str = ""
    tuned_at: AttentionSpec | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """``torch.ops.avo.attention`` with this kernel and the spec's semantics; q (B,Hq,Nq,D), k/v (B,Hkv,Nk,D)."""
        return torch.ops.avo.attention(q, k, v, mask, self.kernel_id, self.spec.effective_scale, self.spec.causal,
                                       self.spec.window or 0, self.spec.mask.value)

    def describe(self) -> str:
        """One line for logs and tables: which kernel, from where, tuned for what."""
        if self.source == "store":
            return f"tuned kernel {self.kernel_id} from {self.layer} (record {self.record.spec.to_text()})"
        return f"template kernel {self.kernel_id}" + (f" ({self.note})" if self.note else "")


def kernel_for(spec: AttentionSpec, *, source: Source = "auto", hardware: HardwareKey | None = None,
               device: torch.device | str | None = None, store: KernelStore | None = None,
               template: str | None = None, genome: KernelGenome | None = None) -> KernelHandle:
    """The kernel for ``spec``, registered with the avo op.

    ``source``: "store" = the record a compile would use (the graph pass's lookup: exact spec first), verified once
    on ``device`` when it was tuned on other software or read from a bundle; raises KernelNotFound on a miss or a
    failed verification. "baseline" = the untuned template kernel (``genome``, else the default genome of
    ``template``, else of the default template). "auto" = the store's, else the baseline
    (``note`` says why).
    ``hardware`` defaults to ``device``'s key (default device: CUDA if available, else the CPU interpreter);
    ``store`` defaults to the process-wide store of the current settings, the one the backend uses.
    """
    if source not in SOURCES:
        raise ValueError(f"kernel_for: source must be one of {SOURCES}; got {source!r}")
    if source == "store" and (template is not None or genome is not None):
        raise ValueError(f"kernel_for: template={template!r} / genome pin a baseline kernel; source='store' "
                         f"takes neither")
    if template is not None and genome is not None:
        raise ValueError(f"kernel_for: give template ({template!r}) or genome, not both (a genome names its template)")
    hardware = hardware or HardwareKey.current(device)
    note = ""
    if source != "baseline":
        store = store if store is not None else shared_store(get_settings())
        hit = lookup_record(store, spec, hardware)
        note = f"no record for {spec.to_text()} on {hardware.slug}"
        while hit is not None and not ensure_verified(store, hit, _device(device)):
            note = f"record {hit.record.kernel_id} failed verification on this GPU"
            hit = lookup_record(store, spec, hardware) if hit.is_class else None  # a class hit: the next neighbour
        if hit is not None:
            return KernelHandle(spec, hit.record, register_kernel(hit.record), "store", hit.layer,
                                tuned_at=hit.record.spec if hit.is_class else None)
        if source == "store":
            raise KernelNotFound(f"kernel_for: {note}")
    record = _baseline(spec, hardware, template, genome)
    return KernelHandle(spec, record, register_kernel(record), "baseline", TEMPLATE_LAYER, note)


def _device(device: torch.device | str | None) -> torch.device | None:
    return torch.device(device) if device is not None else None


def _baseline(spec: AttentionSpec, hardware: HardwareKey, template: str | None,
              genome: KernelGenome | None) -> KernelRecord:
    if genome is None:
        genome = default_genome(spec, hardware, template)
    return baseline_record(spec, hardware, genome=genome)
