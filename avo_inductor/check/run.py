"""Worker side of a check: run a loaded kernel on a case's inputs into poisoned buffers and hand back raw outputs.

Trusted launcher code only: nothing here judges. The three-run protocol per case: run 1 into NaN-poisoned
out/lse (every element must be written; a no-op kernel leaves NaN); run 2 on the same inputs into buffers and
scratch pre-filled with other junk (reading memory it did not write shows up as a disagreement); run 3 with
fresh inputs into run 1's buffer (a stale or cached answer shows up unchanged). Cases with ``grads`` also run
the backward into NaN-poisoned dq/dk/dv. The inputs' digests after the calls go back too, so the parent, which
rebuilds the same inputs from the seeds, sees any write to them. ``handle_request`` is the sandbox handler
(check/sandbox.py) for ``verify_isolated``; the search's handler (search/evaluate.py) adds timing on top.
"""
from __future__ import annotations

import hashlib
import traceback
from pathlib import Path
from typing import Any

import torch

from ..kernels import fallback, launch
from ..spec import AttentionSpec
from .cases import CheckCase, case_grad_output, case_inputs

SCRATCH_JUNK = (float("nan"), 1.0e4)  # run 1 / run 2 pre-fill of allocator memory
OUT_JUNK = 1.0e3  # run 2's output pre-fill
# Errors after which a CUDA context may be poisoned: the worker reports them, the sandbox restarts it.
FATAL_MARKERS = ("illegal memory access", "CUDA error", "out of memory", "misaligned address", "unspecified launch",
                 "device-side assert", "AcceleratorError")


def alloc(spec: AttentionSpec, device: torch.device, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) buffers of ``spec`` filled with ``fill`` (never zeros: a kernel must not find a telltale value)."""
    out = torch.full((spec.batch, spec.q_heads, spec.q_len, spec.value_dim), fill, dtype=spec.torch_dtype,
                     device=device)
    lse = torch.full((spec.batch, spec.q_heads, spec.q_len), fill, dtype=torch.float32, device=device)
    return out, lse


def dirty_allocator(device: torch.device, nbytes: int, value: float) -> None:
    """Hand the allocator a freed block full of ``value``, so scratch the launcher allocates with torch.empty
    (split-kv partials) starts as junk that differs between runs."""
    junk = torch.full((max(1, nbytes // 4),), value, dtype=torch.float32, device=device)
    del junk


def scratch_bytes(spec: AttentionSpec, loaded: Any) -> int:
    splits = int(getattr(loaded.launch, "kv_splits", 1))
    return 4 * spec.batch * spec.q_heads * splits * spec.q_len * (spec.value_dim + 1)


def run_forward(loaded: Any, spec: AttentionSpec, inputs: Any, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Launch the kernel's forward through the trusted launcher into harness-allocated ``out``/``lse``."""
    launch.forward(loaded.functions, loaded.launch, inputs.q, inputs.k, inputs.v, inputs.mask,
                   **launch.spec_call_args(spec), out=out, lse=lse)


def run_backward(loaded: Any, spec: AttentionSpec, inputs: Any, out: torch.Tensor, lse: torch.Tensor,
                 do: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What the op's autograd runs for this kernel: its Triton backward into NaN-poisoned dq/dk/dv (reading the
    kernel's own out and LSE), or the plain-torch recompute fallback for a kernel without one."""
    args = launch.spec_call_args(spec)
    if loaded.has_backward:
        dq, dk, dv = (torch.full_like(t, float("nan")) for t in (inputs.q, inputs.k, inputs.v))
        return launch.backward(loaded.functions, loaded.launch, do, inputs.q, inputs.k, inputs.v, out, lse,
                               inputs.mask, dq=dq, dk=dk, dv=dv, **args)
    return fallback.recompute_backward(do, inputs.q, inputs.k, inputs.v, inputs.mask,
                                       **{**args, "scale": spec.effective_scale})[:3]


def run_training_step(loaded: Any, spec: AttentionSpec, inputs: Any, out: torch.Tensor, lse: torch.Tensor,
                      do: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Forward into ``out``/``lse``, then the backward: what a training step costs with this kernel."""
    run_forward(loaded, spec, inputs, out, lse)
    return run_backward(loaded, spec, inputs, out, lse, do)


def input_digest(inputs: Any) -> str:
    """sha256 of q, k, v and the mask (dtype, shape and bytes, on the host)."""
    h = hashlib.sha256()
    for t in (inputs.q, inputs.k, inputs.v, inputs.mask):
        if t is None:
            h.update(b"<none>")
            continue
        c = t.detach().contiguous().cpu()
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def host(t: torch.Tensor) -> torch.Tensor:
    """A host copy (a copy on CPU too: the buffer is reused by the next run)."""
    return t.detach().to("cpu", copy=True)


def run_case(loaded: Any, case: CheckCase, device: torch.device) -> dict[str, Any]:
    """Raw outputs of ``case`` (host tensors) and the inputs' digests after every call; nothing is judged here."""
    spec = case.spec
    x = case_inputs(spec, case.seeds[0], device)
    scratch = scratch_bytes(spec, loaded)
    out1, lse1 = alloc(spec, device, float("nan"))
    dirty_allocator(device, scratch, SCRATCH_JUNK[0])
    run_forward(loaded, spec, x, out1, lse1)
    got: dict[str, Any] = {"out1": host(out1), "lse1": host(lse1)}
    if case.grads:
        dq, dk, dv = run_backward(loaded, spec, x, out1, lse1, case_grad_output(spec, case.seeds[0], device))
        got.update(dq=host(dq), dk=host(dk), dv=host(dv))
    if case.runs == 3:
        out2, lse2 = alloc(spec, device, OUT_JUNK)
        dirty_allocator(device, scratch, SCRATCH_JUNK[1])
        run_forward(loaded, spec, x, out2, lse2)
        y = case_inputs(spec, case.seeds[1], device)
        run_forward(loaded, spec, y, out1, lse1)  # reused buffer, still holding run 1's answer
        got.update(out2=host(out2), lse2=host(lse2), out3=host(out1), lse3=host(lse1), digest_y=input_digest(y))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    got["digest_x"] = input_digest(x)
    return got


def output_path(out_dir: str | Path, index: int) -> Path:
    """Where the worker writes case ``index``'s outputs; the parent reads this path, never one the worker names."""
    return Path(out_dir) / f"case{index}.pt"


def timed_output_path(out_dir: str | Path, index: int) -> Path:
    """Where the worker writes the outputs of the last timed call into output buffer ``index``."""
    return Path(out_dir) / f"timed{index}.pt"


def save_outputs(outputs: dict[str, Any], out_dir: str, index: int) -> None:
    """Write case ``index``'s raw outputs where the parent will look (tensors and digests only, loaded there with
    weights_only)."""
    torch.save(outputs, output_path(out_dir, index))


def error_text(exc: BaseException, limit: int = 1500) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-limit:]


class WorkerState:
    """What one worker holds between the requests about its one candidate: the loaded kernel and its device."""

    def __init__(self) -> None:
        self.loaded: Any = None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


_STATE: WorkerState | None = None


def state() -> WorkerState:
    global _STATE
    if _STATE is None:
        _STATE = WorkerState()
    return _STATE


def load_op(message: dict[str, Any]) -> dict[str, Any]:
    """{"op": "load", source, entry_point, bwd_entry_point, launch} -> {} or {"error"}; the static check runs
    before anything is imported (the loader repeats it)."""
    from ..kernels.loader import load_source, static_violations

    try:
        problems = static_violations(message["source"], message["entry_point"], message["bwd_entry_point"],
                                     message["launch"])
        if problems:
            return {"error": "static check: " + "; ".join(str(p) for p in problems[:10]), "stage": "static"}
        state().loaded = load_source(message["source"], message["entry_point"], message["bwd_entry_point"],
                                     message["launch"])
    except Exception as exc:
        return {"error": error_text(exc)}
    return {}


def run_cases_op(message: dict[str, Any]) -> dict[str, Any]:
    """{"op": "run_cases", cases: [CheckCase dict], out_dir} -> {} or {"error", "case"}; outputs go to files."""
    st = state()
    if st.loaded is None:
        return {"error": "no kernel loaded in this worker"}
    for i, raw in enumerate(message["cases"]):
        case = CheckCase.from_dict(raw)
        try:
            save_outputs(run_case(st.loaded, case, st.device), message["out_dir"], i)
        except Exception as exc:  # compile/launch errors and CUDA faults are the kernel's, reported as data
            text = error_text(exc)
            return {"error": f"{case.name}: {text}", "case": case.name,
                    "restart": any(m in text for m in FATAL_MARKERS)}
    return {}


def handle_request(message: dict[str, Any], channel: Any) -> dict[str, Any]:
    """Sandbox handler for checks: ops "load" and "run_cases" (see above)."""
    op = message.get("op")
    channel.progress(str(op))
    if op == "load":
        return load_op(message)
    if op == "run_cases":
        return run_cases_op(message)
    return {"error": f"unknown op {op!r}"}
