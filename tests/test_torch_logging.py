"""The avo pass's decisions reach PyTorch's logging: TORCH_LOGS=avo / +avo (through the ``torch.backends`` hook),
TORCH_LOGS=avo_inductor and set_logs without it, TORCH_TRACE artifacts; and TORCH_LOGS=avo without the hook fails.

TORCH_LOGS is parsed inside ``import torch``, so every case runs in its own interpreter; the cases start together
(one Dynamo compile each) to keep the file's wall time near one case's.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import avo_torch_logs
from avo_inductor.backend import logs
from avo_inductor.backend import report as rep
from avo_inductor.settings import get_settings
from avo_inductor.spec import AttentionSpec

REPO = Path(__file__).resolve().parents[1]

# One Dynamo compile of a causal GQA SDPA site through the avo pass (``_apply_pass``, what backend="avo" runs before
# Inductor), returning the graph eagerly: the decisions are emitted before Inductor would start.
COMPILE = """
import torch, torch.nn.functional as F
from avo_inductor.backend.register import _apply_pass
{setup}
def backend(gm, example_inputs):
    _apply_pass(gm)
    return gm.forward
def attend(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
q, k, v = torch.randn(2, 4, 17, 16), torch.randn(2, 2, 17, 16), torch.randn(2, 2, 17, 16)
torch.compile(attend, backend=backend)(q, k, v)
"""
SET_LOGS = "import logging\ntorch._logging.set_logs(modules={'avo': logging.INFO})"


@dataclass(frozen=True)
class Case:
    code: str
    env: dict[str, str]
    hook: bool  # a dist-info declaring the torch.backends entry point is put on the path


CASES = {
    "hook_debug_trace": Case(COMPILE.format(setup=""), {"TORCH_LOGS": "+avo"}, hook=True),
    "module_name": Case(COMPILE.format(setup=""), {"TORCH_LOGS": "avo_inductor"}, hook=False),
    "set_logs": Case(COMPILE.format(setup=SET_LOGS), {}, hook=False),
    "no_hook": Case("import torch", {"TORCH_LOGS": "avo"}, hook=False),
}


def _hook_dist(root: Path) -> Path:
    """A distribution whose only content is the entry point pyproject.toml declares (the installed metadata of a
    checkout may predate it): importlib.metadata finds it on PYTHONPATH, as torch's autoload does."""
    info = root / "avo_logs_hook-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: avo-logs-hook\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[torch.backends]\navo_logs = avo_torch_logs:torch_logs_hook\n")
    return root


@dataclass(frozen=True)
class Result:
    rc: int
    stderr: str
    trace_dir: Path


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    root = tmp_path_factory.mktemp("torch-logs")
    hook_path = _hook_dist(root / "hook")
    running = {}
    for name, case in CASES.items():
        trace_dir = root / name / "trace"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_LOGS", "TORCH_TRACE", "AVO_"))}
        paths = [str(REPO), *([str(hook_path)] if case.hook else [])]
        env.update(case.env, PYTHONPATH=os.pathsep.join(paths), TRITON_INTERPRET="1", TORCH_TRACE=str(trace_dir),
                   AVO_CACHE_DIR=str(root / name / "cache"), AVO_USE_SHIPPED="0")
        if not case.hook:  # an installed checkout may carry the hook already: turn torch's autoload off
            env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
        running[name] = (subprocess.Popen([sys.executable, "-c", case.code], env=env, cwd=root, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE), trace_dir)
    out = {}
    for name, (proc, trace_dir) in running.items():
        _, stderr = proc.communicate(timeout=300)
        out[name] = Result(proc.returncode, stderr, trace_dir)
    return out


def _site_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "avo site:" in line]


@pytest.mark.parametrize("name", ["hook_debug_trace", "module_name", "set_logs"])
def test_decision_lines_reach_torch_logs(results: dict[str, Result], name: str) -> None:
    res = results[name]
    assert res.rc == 0, res.stderr[-3000:]
    lines = _site_lines(res.stderr)
    assert len(lines) == 1, res.stderr[-3000:]
    # torch's own format (glog prefix with the compile id), the site's decision and its spec
    assert lines[0].startswith("I") and "[0/0]" in lines[0] and "kept/miss" in lines[0]
    assert "2,4,2,17,17,16 float32 causal" in lines[0]
    detail = [line for line in res.stderr.splitlines() if "avo site detail:" in line]
    if name == "hook_debug_trace":  # +avo is DEBUG: one JSON detail line per site
        assert len(detail) == 1 and detail[0].startswith("V")
        site = json.loads(detail[0].split("avo site detail: ", 1)[1])
        assert site["status"] == "miss" and site["spec"]["kv_heads"] == 2
    else:
        assert detail == []


def test_unregistered_avo_breaks_import_torch(results: dict[str, Result]) -> None:
    """The limit the hook works around: without it, TORCH_LOGS=avo is an unknown name when torch parses it."""
    res = results["no_hook"]
    assert res.rc != 0 and "Invalid log settings: avo" in res.stderr


def _trace_records(trace_dir: Path) -> list[tuple[dict, str | None]]:
    """(metadata, payload) of every record in the TORCH_TRACE logs (a glog prefix, JSON, then tab-indented payload)."""
    records: list[tuple[dict, list[str]]] = []
    for path in sorted(trace_dir.glob("dedicated_log_torch_trace_*.log")):
        for line in path.read_text().splitlines():
            if line.startswith("\t"):
                records[-1][1].append(line[1:])
            else:
                records.append((json.loads(line.split("] ", 1)[1]), []))
    return [(meta, "\n".join(payload) if payload else None) for meta, payload in records]


def test_trace_holds_the_avo_sites_artifact(results: dict[str, Result]) -> None:
    res = results["hook_debug_trace"]
    found = [(meta, payload) for meta, payload in _trace_records(res.trace_dir)
             if meta.get("artifact", {}).get("name") == logs.TRACE_ARTIFACT]
    assert len(found) == 1, res.stderr[-3000:]
    meta, payload = found[0]
    assert meta["artifact"]["encoding"] == "json"
    assert (meta["frame_id"], meta["frame_compile_id"]) == (0, 0)  # filed under its compile id (tlparse's folder)
    assert payload is not None
    sites = json.loads(payload)
    assert [(s["pattern"], s["status"], s["action"]) for s in sites] == [("sdpa[gqa]", "miss", "kept")]
    assert AttentionSpec.from_dict(sites[0]["spec"]) == AttentionSpec(2, 4, 2, 17, 17, 16, dtype="float32",
                                                                      causal=True)


@pytest.mark.parametrize(("setting", "named"), [
    ("avo", True), ("+avo", True), ("dynamo, -avo", True), ("help", True),
    ("avo_inductor", False), ("dynamo,inductor", False), ("", False),
])
def test_hook_registers_only_when_asked(setting: str, named: bool) -> None:
    assert avo_torch_logs.names_avo(setting) is named


def _site() -> rep.SiteReport:
    spec = AttentionSpec(2, 4, 2, 17, 33, 16, dtype="float32", causal=True)
    return rep.SiteReport(module_path="layers.0", pattern="sdpa", action=rep.KEPT, spec=spec, status="miss",
                          reason="no kernel; queued")


def test_root_info_alone_does_not_print_sites(caplog: pytest.LogCaptureFixture) -> None:
    """One line per site per compile is opt-in (AVO_LOG, TORCH_LOGS, or the avo_inductor logger's own level)."""
    with caplog.at_level(logging.INFO):  # the root logger only
        logs.emit_sites([_site()], get_settings(), in_compile=False)
    assert not [r for r in caplog.records if "avo site" in r.getMessage()]
    with caplog.at_level(logging.DEBUG, logger=rep.logger.name):
        logs.emit_sites([_site()], get_settings(), in_compile=False)
    messages = [r.getMessage() for r in caplog.records if r.name == rep.logger.name]
    assert len(messages) == 2 and "layers.0 [sdpa]" in messages[0] and messages[1].startswith("avo site detail:")
