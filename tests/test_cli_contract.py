"""The contract both command lines keep (README "Command line"): --json before or after the subcommand gives the
same JSON and nothing else on stdout; exit codes 0 ok / 1 refused or failed / 2 usage; a user error is one line
on stderr, never a traceback, a closed pipe included; --version; the console scripts point at the two mains."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import pytest

from avo_inductor import __version__
from avo_inductor.cache.__main__ import main as cache_main
from avo_inductor.search.cli import main as search_main
from avo_inductor.settings import reset_settings
from cli_helpers import Populated, populate

ROOT = Path(__file__).resolve().parent.parent
MAINS: dict[str, Callable[..., int]] = {"cache": cache_main, "search": search_main}


@pytest.fixture
def populated(isolated_avo: Path) -> Populated:
    return populate(isolated_avo)


def _call(capsys: pytest.CaptureFixture[str], which: str, argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one in-process command; argparse's SystemExit counts as its code."""
    capsys.readouterr()
    try:
        code = MAINS[which](argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _read_commands(p: Populated) -> list[tuple[str, list[str]]]:
    return [("cache", ["ls"]), ("cache", ["ls", "--all"]), ("cache", ["show", p.record_key]),
            ("cache", ["show", p.kernel_id[:10]]), ("cache", ["stats"]), ("cache", ["pending"]),
            ("cache", ["verify", "--all"]), ("search", ["status"]), ("search", ["status", "--db", str(p.db)]),
            ("search", ["lineage", p.run.specs[0].spec_key]), ("search", ["lineage", p.run.specs[0].kernel_id or ""])]


def test_json_before_and_after_the_subcommand(populated: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    for which, argv in _read_commands(populated):
        before = _call(capsys, which, ["--json", *argv])
        after = _call(capsys, which, [*argv, "--json"])
        assert before[0] == after[0] == 0, (which, argv, before[2], after[2])
        data = json.loads(before[1])  # stdout is one JSON document and nothing else
        assert json.loads(after[1]) == data and data, (which, argv)
        text = _call(capsys, which, argv)
        assert text[0] == 0 and text[1].strip() and not text[1].lstrip().startswith(("{", "["))
    status = json.loads(_call(capsys, "search", ["status", "--json"])[1])
    (run,) = status["runs"]
    assert run["run_id"] == populated.run.run_id and run["specs"][0]["kernel_id"] == populated.run.specs[0].kernel_id
    steps = json.loads(_call(capsys, "search", ["lineage", populated.run.specs[0].spec_key, "--json"])[1])["steps"]
    assert steps[0]["operator"] == "seed" and steps[-1]["score"] == populated.run.specs[0].best_speedup


def test_write_commands_print_json_only(populated: Populated, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    code, stdout, _ = _call(capsys, "cache", ["export", "-o", str(out), "--json"])
    assert code == 0 and json.loads(stdout)["out"] == str(out) and out.exists()
    code, stdout, _ = _call(capsys, "cache", ["prune", "--unused-days", "1000", "--dry-run", "--json"])
    pruned = json.loads(stdout)  # make_record's records are old: listed, not removed
    assert code == 0 and pruned["dry_run"] and pruned["removed"] == []
    assert populated.record_key in pruned["would_remove"]
    code, stdout, _ = _call(capsys, "cache", ["rm", populated.record_key, "--json"])
    assert code == 0 and json.loads(stdout) == {"removed": [populated.record_key]}
    code, stdout, _ = _call(capsys, "cache", ["pending", "--clear", "--json"])
    assert code == 0 and json.loads(stdout) == {"cleared": 1}



def test_search_run_prints_json_only(populated: Populated, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --json`: the RunResult on stdout, progress on stderr; the synthetic evaluator stands in for the sandbox."""
    from avo_inductor.search import runner
    from search_fakes import FakeEvaluator

    monkeypatch.setattr(runner, "build_evaluator", lambda options: FakeEvaluator())
    code, stdout, err = _call(capsys, "search", ["run", "--campaign", str(populated.campaign), "--json"])
    result = json.loads(stdout)
    assert code == 0 and result["run_id"] != populated.run.run_id and result["specs"][0]["best_speedup"] > 1.0
    assert "run_finished" in err  # the live progress went to stderr
    assert _call(capsys, "cache", ["pending", "--clear"])[0] == 0
    code, stdout, err = _call(capsys, "search", ["run", "--pending", "--json"])  # an empty queue is not a failure
    assert code == 0 and json.loads(stdout)["run_id"] is None and "nothing to search" in err


USAGE, FAILED = 2, 1


def _error_cases(p: Populated, tmp: Path) -> list[tuple[str, list[str], dict[str, str], int, str]]:
    """(cli, argv, env, exit code, text the one stderr line must hold)."""
    not_a_dir = tmp / "file"
    not_a_dir.write_text("x")
    return [
        ("search", ["status"], {"AVO_LOG": "maybe"}, USAGE, "AVO_LOG"),
        ("cache", ["stats"], {"AVO_LOG": "maybe"}, USAGE, "AVO_LOG"),
        ("search", ["run", "--campaign", str(tmp / "missing.toml")], {}, USAGE, "cannot read campaign file"),
        ("search", ["run", "--campaign", str(p.campaign)], {"AVO_CACHE_DIR": str(not_a_dir / "x")}, FAILED,
         "cannot write the search database"),
        ("search", ["status", "--db", str(tmp / "none.db")], {}, FAILED, "no search database"),
        ("search", ["lineage", "nope", "--json"], {}, FAILED, "not a kernel id"),
        ("search", ["resume", "latest"], {}, FAILED, "no unfinished run"),
        ("search", ["resume", "r-unknown"], {}, FAILED, "no run 'r-unknown'"),
        ("search", ["run", "--campaign", str(p.campaign), "--train"], {}, USAGE, "--model"),
        ("search", ["run", "--campaign", str(p.campaign), "--operators", "agent"], {}, USAGE, "ANTHROPIC_API_KEY"),
        ("cache", ["show", "no-such-record"], {}, FAILED, "no record"),
        ("cache", ["rm", "no/such-key", "--json"], {}, FAILED, "no local record"),
        ("cache", ["verify"], {}, USAGE, "BUNDLE or --all"),
        ("cache", ["prune"], {}, USAGE, "--stale-software"),
        ("cache", ["baseline", "--spec", "1,2,3"], {}, USAGE, "6 or 7"),
    ]


def test_exit_codes_and_one_line_errors(populated: Populated, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for which, argv, env, code, needle in _error_cases(populated, tmp_path):
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            reset_settings()
            got, out, err = _call(capsys, which, argv)
        reset_settings()
        lines = err.strip().splitlines()
        assert got == code, (which, argv, err)
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, (which, argv, err)
        assert out == "", (which, argv, out)  # --json or not: no prose, no half document on stdout


@pytest.mark.parametrize("which,argv", [("search", []), ("search", ["run"]), ("search", ["status", "--bogus"]),
                                        ("search", ["run", "--pending", "--gpus", "0"]), ("cache", ["ls", "--nope"]),
                                        ("cache", []), ("search", ["run", "--pending", "--model", "m:f"])])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], which: str, argv: list[str]) -> None:
    code, out, err = _call(capsys, which, argv)
    assert code == 2 and out == "" and "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("which", ["search", "cache"])
def test_version(capsys: pytest.CaptureFixture[str], which: str) -> None:
    code, out, _ = _call(capsys, which, ["--version"])
    assert code == 0 and out.strip() == f"python -m avo_inductor.{which} {__version__}"


def test_console_scripts_are_the_mains(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"avo-search", "avo-cache"}
    for script, target in scripts.items():
        module, _, attr = target.partition(":")
        entry = getattr(import_module(module), attr)
        assert entry is MAINS[script.removeprefix("avo-")]
        monkeypatch.setattr(sys, "argv", [f"/usr/local/bin/{script}"])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            entry(["--version"])
        assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"{script} {__version__}"  # named as typed


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_closed_pipe_ends_quietly(populated: Populated) -> None:
    """`cache --json stats | head -c 10`, made deterministic: a real pipe whose reader has gone before the command
    writes (with head, whether it has exited by then is a race). Exit 1, nothing on stderr, no traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "avo_inductor.cache", "--json", "stats"], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=_env(), timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
