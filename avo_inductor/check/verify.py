"""In-process check of a KernelRecord: static check, load, run every verification case, judge. First use.

Used by first-use verification (backend/graph_pass.py ``ensure_verified``), where the record already runs in
the user's process anyway. Anything that must not run foreign code in the calling process (``cache import`` /
``cache verify``, promotion) uses check/isolated.py instead, which runs the same cases in a sandboxed worker and
judges here. Training: a record's backward is checked exactly when its spec is a training spec
(cases.with_grads); an inference record never serves a training site.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..artifact import KernelRecord
from ..spec import AttentionSpec
from .cases import verification_cases
from .judge import judge_case
from .run import run_case
from .tolerance import CheckFailure


@dataclass(frozen=True)
class VerificationReport:
    """ok: every check passed. problems: one line per failure. max_rel_err: worst relative error seen.
    ``environmental``: a check could not run here (the GPU ran out of memory): the failure says nothing about the
    kernel, so a caller that remembers verdicts must not remember this one."""

    ok: bool
    problems: tuple[str, ...] = ()
    max_rel_err: float = 0.0
    environmental: bool = False


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def verify_record(record: KernelRecord, device: torch.device | str | None = None,
                  seed: int | None = None, *, at: AttentionSpec | None = None,
                  own_lengths_only: bool = False) -> VerificationReport:
    """Static gate by trust tier, load and check ``record`` on ``device`` (default: CUDA if available, else the
    interpreter). ``at``: check the kernel at this spec's shape instead of the record's own (a class record about
    to serve a site of its class at another shape: the cases, own lengths included, are the site's).
    ``own_lengths_only``: that shape alone (cases.verification_cases), for a record verified on this software."""
    from ..kernels.loader import check_record, load_record

    dev = torch.device(device) if device is not None else default_device()
    try:
        record = check_record(record)
    except ValueError as exc:
        return VerificationReport(False, (f"static: {exc}",), float("inf"))
    try:
        loaded = load_record(record)
    except (ValueError, RuntimeError, SyntaxError) as exc:
        return VerificationReport(False, (f"load: {exc}",), float("inf"))
    problems: list[str] = []
    worst = 0.0
    environmental = False
    for case in verification_cases(at or record.spec, dev.type, random.Random(seed),
                                   own_lengths_only=own_lengths_only):
        try:
            worst = max(worst, judge_case(case, run_case(loaded, case, dev), dev).rel_err)
        except CheckFailure as exc:
            problems.append(str(exc))
            worst = float("inf")
        except torch.OutOfMemoryError as exc:  # first use runs beside the model, whose memory it is
            problems.append(f"{case.name}: out of memory: {str(exc)[:300]}")
            worst, environmental = float("inf"), True
        except Exception as exc:  # a kernel that fails to compile or crashes fails verification, never the caller
            problems.append(f"{case.name}: {type(exc).__name__}: {str(exc)[:300]}")
            worst = float("inf")
    return VerificationReport(not problems, tuple(problems), worst, environmental=environmental and bool(problems))
