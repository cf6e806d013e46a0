"""Progress sinks for SearchEvents: a JSONL run log (always) and a rich live table or plain lines (terminal).

The engine only calls ``sink(event)``; everything about files and terminals lives here.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .engine import SearchEvent


class JsonlLog:
    """Appends one JSON object per event to ``path`` (flushed per line, so a killed run keeps its log)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def __call__(self, event: SearchEvent) -> None:
        row = {"t": round(time.time(), 3), **dataclasses.asdict(event)}
        self._fh.write(json.dumps(row, default=str, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _fmt_budget(left: float | None) -> str:
    if left is None:
        return "unbounded"
    return f"{int(left // 60)}m{int(left % 60):02d}s"


class PlainProgress:
    """One line per event, for logs and non-TTY stdout (CI)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: SearchEvent) -> None:
        if event.kind == "evaluated":
            best = max(event.best.values(), default=0.0)
            line = (f"[{event.run_id}] gen {event.generation}: {event.evaluated} evaluated, {event.failed} failed, "
                    f"best {best:.3f}x, budget left {_fmt_budget(event.budget_left_s)}")
        else:
            line = (f"[{event.run_id}] " if event.run_id else "") + f"{event.kind}: {event.message}"
        print(line, file=self.stream, flush=True)


class RichProgress:
    """A live table (generation, evaluated/failed, budget left, best speedup per spec) for a terminal."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.labels = labels or {}
        self._last: SearchEvent | None = None
        self._notes: list[str] = []
        self._live = Live(console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def _table(self) -> Any:
        from rich.table import Table

        ev = self._last
        assert ev is not None
        title = (f"avo search {ev.run_id} — generation {ev.generation} — {ev.evaluated} evaluated, "
                 f"{ev.failed} failed — budget left {_fmt_budget(ev.budget_left_s)}")
        table = Table(title=title, expand=False)
        table.add_column("spec")
        table.add_column("best speedup", justify="right")
        for key, score in sorted(ev.best.items(), key=lambda kv: -kv[1]):
            table.add_row(self.labels.get(key, key), f"{score:.3f}x" if score else "—")
        for note in self._notes[-4:]:
            table.caption = (table.caption + "\n" if table.caption else "") + note
        return table

    def __call__(self, event: SearchEvent) -> None:
        self._last = event
        if event.kind in ("note", "promotion", "run_finished"):
            self._notes.append(f"{event.kind}: {event.message}")
        self._live.update(self._table())

    def close(self) -> None:
        self._live.stop()


class Fanout:
    """Calls every sink in turn; ``close`` closes those that can be closed."""

    def __init__(self, *sinks: Callable[[SearchEvent], None]) -> None:
        self.sinks = sinks

    def __call__(self, event: SearchEvent) -> None:
        for sink in self.sinks:
            sink(event)

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()


def make_progress(log_path: str | Path, tty: bool | None = None, labels: dict[str, str] | None = None) -> Fanout:
    """JSONL log at ``log_path`` plus a rich live display when stdout is a terminal, else plain lines."""
    tty = sys.stdout.isatty() if tty is None else tty
    return Fanout(JsonlLog(log_path), RichProgress(labels) if tty else PlainProgress())
