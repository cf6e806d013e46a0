"""The search's user-facing refusals, shared by the Python API (api.py), the report and the CLI's exit codes."""
from __future__ import annotations

from pathlib import Path


class SearchNotFound(LookupError):
    """A search database, run, kernel id, candidate id or spec key that does not exist (CLI exit code 1)."""


class SearchRefused(RuntimeError):
    """A request that is well formed but cannot be done now, e.g. resuming a finished run (CLI exit code 1)."""


def require_database(path: Path) -> Path:
    """``path`` if a search database file is there; SearchNotFound (saying how to get one) if not. Read commands
    call this first, so a mistyped --db is a refusal, not an empty database created in its place."""
    if not path.is_file():
        raise SearchNotFound(f"no search database at {path} (run a search first, or pass --db PATH)")
    return path
