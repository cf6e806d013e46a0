"""What both command lines (``avo-search``, ``avo-cache``) share: exit codes, --json / --version, error lines.

One convention, documented in the README: exit 0 ok, 1 refused or failed (not found, verification failed, an
environment problem), 2 usage (bad arguments, bad input, a bad AVO_* setting). A user error is one line on
stderr, never a traceback (AVO_STRICT=1 re-raises for debugging); a closed stdout (``| head``) ends quietly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .version import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
JSON_HELP = "machine-readable output on stdout (JSON only; messages go to stderr)"


def prog_name(module: str, script: str) -> str:
    """``script`` (e.g. avo-search) when run as the console script, else ``python -m module``: usage lines
    and error messages then name the command the user typed."""
    return script if Path(sys.argv[0]).name == script else f"python -m {module}"


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--version and a top-level --json on the main parser."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def add_json_flag(subparser: argparse.ArgumentParser) -> None:
    """--json after the subcommand too; SUPPRESS keeps the top-level value when it is not repeated here."""
    subparser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def strict() -> bool:
    """AVO_STRICT=1 without going through Settings: the error being reported may be a bad AVO_* value itself."""
    return os.environ.get("AVO_STRICT", "").strip().lower() in ("1", "true", "yes", "on")


def error_line(prog: str, message: str) -> None:
    """One line on stderr: ``prog: error: message`` (newlines folded so a caller can rely on one line)."""
    text = " ".join(str(message).split("\n"))
    try:
        print(f"{prog}: error: {text}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # stderr closed too: nowhere left to say it
        pass


def _silence_stdout() -> None:
    """After EPIPE: point fd 1 at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def guarded(prog: str, run: Callable[[], int], errors: tuple[tuple[type[BaseException], int], ...]) -> int:
    """Run ``run`` and map the exception types in ``errors`` (first match wins) to one stderr line and their exit
    code. A broken stdout pipe exits 1 quietly; Ctrl-C exits 130. stdout is flushed inside, so a pipe closed early
    is seen here and not at interpreter exit."""
    try:
        code = run()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
    except KeyboardInterrupt:
        error_line(prog, "interrupted")
        return 130
    except Exception as exc:
        for kind, code in errors:
            if isinstance(exc, kind):
                if strict():
                    raise
                error_line(prog, exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc))
                _flush_quietly()
                return code
        raise


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
