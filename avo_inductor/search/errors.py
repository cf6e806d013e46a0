"""The search's user-facing refusals, shared by the Python API (api.py), the report and the CLI's exit codes."""
from __future__ import annotations


class SearchNotFound(LookupError):
    """A search database, run, kernel id, candidate id or spec key that does not exist (CLI exit code 1)."""


class SearchRefused(RuntimeError):
    """A request that is well formed but cannot be done now, e.g. resuming a finished run (CLI exit code 1)."""
