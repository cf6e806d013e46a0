"""Which stored record serves an attention site: the rule the compiled model follows, in one place.

The backend's pass (backend/graph_pass.py) rewrites a site to the record this returns; the search
(search/engine.py) seeds its population with that same record's kernel, so what it promotes is measured against the
kernel the model runs today and a search can never make a model slower than it was out of the box.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..spec import AttentionSpec, HardwareKey

if TYPE_CHECKING:
    from .store import StoreHit


def lookup_record(store: Any, spec: AttentionSpec, hardware: HardwareKey | None) -> StoreHit | None:
    """Exact spec first; an inference site may also take the same shape's training record (its forward and LSE
    were checked like any record's). A training site never takes an inference record: only training records
    have their backward checked (check/cases.py ``with_grads``), and an unchecked backward with a wrong dq or
    LSE would silently corrupt the gradients.

    Without an exact record, a class record tuned at a neighbouring shape (``KernelStore.lookup_class``, same
    inference/training rule; docs/CACHE.md "Class records"): ``hit.serves`` is then the site's spec, and the
    backend checks the record at that shape before it is used. ``store``: a KernelStore, or anything with its
    ``lookup`` and ``lookup_class``."""
    train = dataclasses.replace(spec, needs_grad=True)
    hit = store.lookup(spec, hardware)
    if hit is None and not spec.needs_grad:
        hit = store.lookup(train, hardware)
    if hit is None:
        hit = store.lookup_class(spec, hardware)
    if hit is None and not spec.needs_grad:
        hit = store.lookup_class(train, hardware, serves=spec)
    return hit
