"""Promotion: re-evaluate a search winner with fresh seeds and turn it into a KernelRecord if it holds up.

A candidate's search score came from one evaluation; noise and lucky inputs make some winners fake
(ANTICHEAT.md: "noise counted as speedup"). So the winner is evaluated again — through the evaluator's
``promote(candidate)`` when it offers one (new seeds, held-out shapes), else ``evaluate([c], promotion=True)``
when its ``evaluate`` accepts that flag, else a plain second ``evaluate`` — and is stored only if it passes
and its speedup exceeds 1 by more than the spread measured in that same evaluation.
"""
from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any, Callable

from ..artifact import KernelMetrics, KernelRecord
from ..spec import AttentionSpec, HardwareKey, SoftwareKey
from .types import Candidate, EvalResult, Evaluator, Stage


def promotion_eval(evaluator: Evaluator, candidate: Candidate) -> EvalResult:
    """Re-evaluate ``candidate`` the strictest way ``evaluator`` offers (see module docstring)."""
    promote = getattr(evaluator, "promote", None)
    if callable(promote):
        result = promote(candidate)
    else:
        params = inspect.signature(evaluator.evaluate).parameters
        accepts = "promotion" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        results = evaluator.evaluate([candidate], promotion=True) if accepts else evaluator.evaluate([candidate])  # type: ignore[call-arg]
        if len(results) != 1:
            raise RuntimeError(f"evaluator returned {len(results)} results for one promotion candidate")
        result = results[0]
    if result.candidate_id != candidate.id:
        raise RuntimeError(f"evaluator answered for {result.candidate_id!r}, asked about {candidate.id!r}")
    return result


def promotion_decision(result: EvalResult, require_speedup: bool = True, min_gain: float = 0.0) -> tuple[bool, str]:
    """(promote?, reason). ``spread`` is read as the relative run-to-run spread of the candidate's timing
    (e.g. 0.02 = 2 %); the speedup must clear ``1 + max(spread, min_gain)``. Without ``require_speedup``
    (CPU interpreter, where timings say nothing about a GPU) passing the cascade is enough."""
    if not result.ok:
        return False, f"re-evaluation failed at {result.stage.value}: {result.message}"
    if not require_speedup:
        return True, "passed re-evaluation (speedup not required)"
    if result.speedup is None:
        return False, "re-evaluation reported no speedup"
    margin = max(result.spread or 0.0, min_gain)
    if result.speedup - 1.0 <= margin:
        return False, f"speedup {result.speedup:.3f}x does not beat the baseline by more than the spread ({margin:.3f})"
    return True, f"speedup {result.speedup:.3f}x > 1 + spread {margin:.3f}"


def promotion_eval_batch(evaluator: Evaluator, candidates: list[Candidate]) -> list[EvalResult]:
    """``promotion_eval`` for several winners, one per evaluation device at a time when the evaluator offers
    ``promote_many`` (one winner per spec: a 19-spec campaign re-checked one by one left 3 of 4 GPUs idle for
    minutes). A batch that raises becomes failed results for its candidates; the others still count."""
    step = max(1, int(getattr(evaluator, "parallelism", 1)))
    many = getattr(evaluator, "promote_many", None)
    out: list[EvalResult] = []
    for i in range(0, len(candidates), step):
        batch = candidates[i:i + step]
        try:
            results = list(many(batch)) if callable(many) else [promotion_eval(evaluator, c) for c in batch]
            if [r.candidate_id for r in results] != [c.id for c in batch]:
                raise RuntimeError(f"evaluator answered for {[r.candidate_id for r in results]}, "
                                   f"asked about {[c.id for c in batch]}")
        except Exception as exc:
            results = [failed_result(c, exc) for c in batch]
        out += results
    return out


def build_record(candidate: Candidate, result: EvalResult, hardware: HardwareKey, software: SoftwareKey,
                 render: Callable[[Any, AttentionSpec], Any] | None = None) -> KernelRecord:
    """KernelRecord for a promoted candidate: a genome candidate becomes a template-tier record (rendered to check
    it and take its launch config), a source candidate a source-tier record holding its text verbatim.

    Hardware/software keys reported by the evaluator (``result.extra["hardware"|"software"]``, as dicts) win
    over the driver's: with Ray the driver may not have the GPU the kernel was timed on.
    """
    if candidate.source is not None:
        source, entry, bwd, launch = candidate.source, candidate.entry_point, candidate.bwd_entry_point, candidate.launch
        tier: dict[str, str] = {}
    elif candidate.genome is not None:
        if render is None:
            from ..kernels.render import render as render_fn
            render = render_fn
        from ..kernels.render import template_digest
        rendered = render(candidate.genome, candidate.spec)
        source, entry, bwd, launch = None, rendered.entry_point, rendered.bwd_entry_point, rendered.launch_dict
        tier = {"tier": "template", "template_digest": template_digest(candidate.genome.template)}
    else:
        raise ValueError(f"candidate {candidate.id} has neither genome nor source")
    extra = result.extra or {}
    if isinstance(extra.get("hardware"), dict):
        hardware = HardwareKey.from_dict(extra["hardware"])
    if isinstance(extra.get("software"), dict):
        software = SoftwareKey.from_dict(extra["software"])
    metrics = KernelMetrics(median_ms=result.median_ms, tflops=result.tflops, speedup=result.speedup,
                            baseline=result.baseline, baseline_ms=result.baseline_ms, max_abs_err=result.max_abs_err,
                            rel_err=result.rel_err, bwd_median_ms=extra.get("bwd_median_ms"),
                            bwd_speedup=extra.get("bwd_speedup"))
    return KernelRecord(spec=candidate.spec, hardware=hardware, software=software, source=source, entry_point=entry,
                        bwd_entry_point=bwd, launch=dict(launch), genome=candidate.genome.to_dict() if candidate.genome else None,
                        metrics=metrics, lineage_id=candidate.id, parent_ids=candidate.parent_ids,
                        operator=candidate.operator, verified_software=(software,), **tier)


def failed_result(candidate: Candidate, exc: BaseException) -> EvalResult:
    """An EvalResult for a promotion attempt that raised, so the failure is recorded as data."""
    return EvalResult(candidate_id=candidate.id, ok=False, stage=Stage.PROMOTION,
                      message=f"{type(exc).__name__}: {exc}")


# The verdict goes to a private dup of stdout and fd 1 is pointed at stderr first (as in sandbox.worker_main), so
# anything the kernel prints (the interpreter runs kernel bodies as Python) cannot forge the verdict line.
_VERIFY_SNIPPET = (
    "import json, os, sys\n"
    "verdict = os.fdopen(os.dup(1), 'w')\n"
    "os.dup2(2, 1)\n"
    "from avo_inductor.artifact import KernelRecord\n"
    "from avo_inductor.kernels.verify import verify_record\n"
    "report = verify_record(KernelRecord.from_dict(json.load(sys.stdin)))\n"
    "verdict.write(json.dumps({'ok': bool(report.ok), 'problems': list(report.problems)[:5]}) + '\\n')\n"
    "verdict.flush()\n"
)


def verify_isolated(record: KernelRecord, timeout_s: float = 900.0) -> tuple[bool, str]:
    """``kernels.verify.verify_record`` (forward and, for training specs, gradients) in a child process with the
    evaluator workers' scrubbed environment and a private scratch cache folder, so a crashing, hanging or hostile
    kernel costs the verification, never the calling process (a search run, or ``python -m avo_inductor.cache
    import`` holding the store). The one implementation both callers share: no second sandbox to keep in step."""
    from .sandbox import scrubbed_env

    device = "cpu" if record.hardware.vendor == "cpu" else "cuda:0"
    with tempfile.TemporaryDirectory(prefix="avo-verify-") as work_dir:
        proc = subprocess.Popen([sys.executable, "-s", "-c", _VERIFY_SNIPPET], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work_dir,
                                env=scrubbed_env(device, work_dir=work_dir), start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(record.to_dict()), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return False, f"verification timed out after {timeout_s:.0f}s"
        except BaseException:  # Ctrl-C or an I/O error: the child is in its own session and would outlive us
            _kill_group(proc)
            raise
    return _read_verdict(proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the child's whole session (compiler grandchildren too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _read_verdict(returncode: int, stdout: str, stderr: str) -> tuple[bool, str]:
    """(ok, problems) from the child's last stdout line; anything else (crash, garbage) is a failure."""
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        return False, f"verification process exited {returncode}: {stderr.strip()[-400:]}"
    try:
        verdict = json.loads(lines[-1])
    except json.JSONDecodeError:
        return False, f"unreadable verification output: {lines[-1][:200]}"
    if not isinstance(verdict, dict):
        return False, f"unreadable verification output: {lines[-1][:200]}"
    return bool(verdict.get("ok")), "; ".join(str(p) for p in verdict.get("problems", []))
