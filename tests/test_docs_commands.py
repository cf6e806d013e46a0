"""Every avo command shown in a fenced block of README.md, docs/*.md and search/README.md is parsed by the real
argparse parser, and the read-only ones run against a populated temporary store: docs and CLI cannot drift.

A ``<placeholder>`` in a command must be one of PLACEHOLDERS (filled with a real id from the temp store)."""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from avo_inductor.cache import __main__ as cache_cli
from avo_inductor.search import cli as search_cli
from cli_helpers import Populated, populate

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "search" / "README.md"]
SCRIPTS = {"avo-search": "avo_inductor.search", "avo-cache": "avo_inductor.cache"}
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "avo_inductor.search": search_cli._parser, "avo_inductor.cache": cache_cli._parser}
MAINS = {"avo_inductor.search": search_cli.main, "avo_inductor.cache": cache_cli.main}
# placeholder text -> how to fill it from the populated store
PLACEHOLDERS: dict[str, Callable[[Populated], str]] = {
    "spec key | kernel id | candidate id": lambda p: p.run.specs[0].kernel_id or "",
    "run id": lambda p: p.run.run_id,
    "candidate": lambda p: p.run.specs[0].best_candidate_id or "",
}
# (module, subcommand) that only read: run against the temp store; the rest are parsed only.
READ_ONLY = {("avo_inductor.cache", "ls"), ("avo_inductor.cache", "show"), ("avo_inductor.cache", "stats"),
             ("avo_inductor.cache", "pending"), ("avo_inductor.search", "status"),
             ("avo_inductor.search", "lineage")}
_PLACEHOLDER = re.compile(r"<([^<>]+)>")


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    module: str
    argv: tuple[str, ...]

    def filled(self, populated: Populated) -> list[str]:
        out = []
        for token in self.argv:
            match = re.fullmatch(r"@@(\d+)@@", token)
            out.append(PLACEHOLDERS[_NAMES[int(match.group(1))]](populated) if match else token)
        return out

    @property
    def read_only(self) -> bool:
        sub = next((a for a in self.argv if not a.startswith("-")), "")
        if sub == "verify":
            return "--all" in self.argv
        return (self.module, sub) in READ_ONLY and "--clear" not in self.argv


_NAMES: list[str] = []


def _fenced(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, logical line) inside fenced blocks that are not Python, backslash continuations joined."""
    inside, lang, pending, start = False, "", "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside, lang = not inside, line.strip()[3:].strip()
            continue
        if not inside or lang in ("python", "py", "toml"):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def _segments(line: str) -> Iterator[list[str]]:
    """Shell words of each simple command on ``line`` (split at |, &&, ;), comments dropped; placeholders kept as
    one word each."""
    def keep(m: re.Match[str]) -> str:
        if m.group(1) not in _NAMES:
            _NAMES.append(m.group(1))
        return f" @@{_NAMES.index(m.group(1))}@@ "
    lexer = shlex.shlex(_PLACEHOLDER.sub(keep, line), posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    words: list[str] = []
    for token in lexer:
        if token and set(token) <= set("|&;()<>"):
            yield words
            words = []
        else:
            words.append(token)
    yield words


def doc_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        for number, line in _fenced(path):
            for words in _segments(line):
                while words and (words[0] == "RUN" or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0])):
                    words = words[1:]  # Dockerfile RUN, VAR=value prefixes
                where = f"{path.relative_to(ROOT)}:{number}"
                if words[:2] == ["python", "-m"] and len(words) > 2 and words[2].startswith("avo_inductor"):
                    found.append(DocCommand(where, words[2], tuple(words[3:])))
                elif words and words[0] in SCRIPTS:
                    found.append(DocCommand(where, SCRIPTS[words[0]], tuple(words[1:])))
    return found


COMMANDS = doc_commands()


def test_docs_show_both_clis() -> None:
    modules = {c.module for c in COMMANDS}
    assert {"avo_inductor.search", "avo_inductor.cache"} <= modules, modules
    assert sum(c.read_only for c in COMMANDS) >= 4
    used = {_NAMES[int(m.group(1))] for c in COMMANDS for a in c.argv if (m := re.fullmatch(r"@@(\d+)@@", a))}
    unknown = used - set(PLACEHOLDERS)
    assert not unknown, f"docs use placeholders this test cannot fill: {sorted(unknown)}"


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where}:{' '.join(c.argv)[:40]}" for c in COMMANDS])
def test_doc_command_parses(command: DocCommand) -> None:
    if command.module not in PARSERS:  # another runnable module: it must at least exist
        assert importlib.util.find_spec(command.module) is not None, command
        return
    argv = [a if not re.fullmatch(r"@@\d+@@", a) else "placeholder" for a in command.argv]
    try:
        args = PARSERS[command.module]().parse_args(argv)
    except SystemExit as exc:  # --help / --version exit 0; a usage error exits 2
        assert exc.code == 0, f"{command.where}: `{' '.join(command.argv)}` is not a valid {command.module} command"
        return
    if getattr(args, "campaign", None):  # a campaign file the docs name exists and parses
        from avo_inductor.search.campaign import load_campaign

        assert load_campaign(ROOT / args.campaign).specs


def test_read_only_doc_commands_run(isolated_avo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populated = populate(isolated_avo)
    failures = []
    for command in (c for c in COMMANDS if c.read_only and c.module in MAINS):
        argv = command.filled(populated)
        if "--db" in argv:  # a database path in the docs (a campaign's runs/) points at the temp one here
            argv[argv.index("--db") + 1] = str(populated.db)
        try:
            code = MAINS[command.module](argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        if code != 0 or not out.strip():
            failures.append(f"{command.where}: `{' '.join(argv)}` -> exit {code}: {err.strip()[-300:]}")
    assert not failures, "\n".join(failures)
