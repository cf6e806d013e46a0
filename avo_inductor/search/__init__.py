"""Evolutionary kernel search. From Python: ``run``, ``resume``, ``status``, ``lineage`` (see ``search.api``);
from a shell: ``avo-search`` / ``python -m avo_inductor.search``.

The API is loaded on first use, so importing a submodule (``search.types``) does not pull in the runner.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Lineage, RunResult, RunStatus, SpecResult, lineage, resume, run, status

__all__ = ["Lineage", "RunResult", "RunStatus", "SpecResult", "lineage", "resume", "run", "status"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'avo_inductor.search' has no attribute {name!r}")
