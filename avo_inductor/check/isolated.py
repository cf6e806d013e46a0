"""``verify_isolated``: the verification cases run in a sandboxed worker, judged in the calling process.

The worker (check/sandbox.py: scrubbed environment, private folder, SIGKILL past the timeout) loads the record
and runs each case into poisoned buffers, writing raw outputs to a private temp folder; this process rebuilds
the inputs from the seeds, computes the float64 reference and decides. Nothing the worker says is a verdict,
and the worker is discarded afterwards. Shared by promotion (search/engine.py), ``cache import`` and
``cache verify`` (cache/bundle.py), which is why it lives below both.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from typing import Any

import torch

from ..artifact import KernelRecord
from .cases import verification_cases
from .judge import judge_dir
from .sandbox import Worker
from .tolerance import CheckFailure


def judge_device(worker_device: str) -> torch.device:
    """Judge on the worker's GPU when this process has CUDA (the float64 reference of a real shape is big)."""
    if worker_device.startswith("cuda") and torch.cuda.is_available():
        return torch.device(worker_device)
    return torch.device("cpu")


def _record_device(record: KernelRecord) -> str:
    return "cpu" if record.hardware.vendor == "cpu" or not torch.cuda.is_available() else "cuda:0"


def verify_isolated(record: KernelRecord, timeout_s: float = 900.0, device: str | None = None) -> tuple[bool, str]:
    """(ok, problems) for ``record``: forward and LSE (training specs: dq, dk, dv too) on the verification cases.

    A crashing, hanging or hostile kernel costs the verification, never the calling process."""
    dev = device or _record_device(record)
    deadline = time.monotonic() + timeout_s
    worker = Worker(dev, start_timeout_s=min(timeout_s, 180.0))
    try:
        with tempfile.TemporaryDirectory(prefix="avo-verify-out-") as out_dir:
            os.chmod(out_dir, 0o700)
            load = worker.request({"op": "load", **_kernel_message(record)}, max(1.0, deadline - time.monotonic()))
            failed = _failure("load", load)
            if failed:
                return False, failed
            rng = random.Random(int.from_bytes(os.urandom(8), "little"))
            cases = verification_cases(record.spec, dev.split(":")[0], rng)
            reply = worker.request({"op": "run_cases", "cases": [c.to_dict() for c in cases], "out_dir": out_dir},
                                   max(1.0, deadline - time.monotonic()))
            failed = _failure("run", reply)
            if failed:
                return False, failed
            try:
                judge_dir(cases, out_dir, judge_device(dev))
            except CheckFailure as exc:
                return False, str(exc)
            except Exception as exc:  # an unreadable output file is the worker's fault
                return False, f"unreadable worker output: {type(exc).__name__}: {exc}"
    finally:
        worker.close()
    return True, ""


def _kernel_message(record: KernelRecord) -> dict[str, Any]:
    """What the worker loads: a template record rendered here from the installed template (it carries no source),
    a source record's own text."""
    from ..kernels.tiers import kernel_for_record

    if record.tier == "template":
        kernel = kernel_for_record(record)
        return {"source": kernel.source, "entry_point": kernel.entry_point,
                "bwd_entry_point": kernel.bwd_entry_point, "launch": kernel.launch_dict}
    return {"source": record.source, "entry_point": record.entry_point, "bwd_entry_point": record.bwd_entry_point,
            "launch": dict(record.launch)}


def _failure(step: str, reply: Any) -> str:
    """'' for a clean reply, else why the step failed."""
    if reply.status == "timeout":
        return f"verification timed out during {step} (worker killed)"
    if reply.status != "ok":
        return f"verification worker died during {step}: {reply.stderr_tail.strip()[-400:]}"
    if reply.payload.get("error"):
        return f"{step}: {reply.payload['error']}"
    return ""
