"""Parent side of a check: rebuild a case's inputs from its seeds, compute the references, judge raw outputs.

Runs in the process that did NOT run the candidate (the search driver, the caller of ``verify_isolated``), or,
for first-use verification, in the user's process after the kernel ran. The float64 reference and the
plain-torch-at-dtype yardstick (check/tolerance.py) are computed only after the kernel's outputs exist, from
inputs rebuilt here; the worker's own account of anything is never read, only its raw tensors and digests.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..kernels.reference import attention_reference, reference_grads, reference_lse
from ..spec import AttentionSpec
from .cases import CheckCase, case_grad_output, case_inputs
from .run import input_digest, output_path
from .tolerance import CheckFailure, compare, compare_lse

_EXPECTED = {"out1", "lse1", "digest_x"}


@dataclass(frozen=True)
class CaseStats:
    """A passed case: the worst max-abs error and relative (Frobenius) error of its outputs."""

    name: str
    max_abs_err: float
    rel_err: float


def _refs(spec: AttentionSpec, x: Any, grads: bool, seed: int) -> dict[str, torch.Tensor]:
    """float64 reference and the same math at the input dtype, for out, lse (and dq, dk, dv)."""
    kw = dict(scale=spec.scale, causal=spec.causal, window=spec.window, mask_kind=spec.mask.value, mask=x.mask)
    dt = spec.torch_dtype
    refs = {"out": attention_reference(x.q, x.k, x.v, **kw),
            "out@dtype": attention_reference(x.q, x.k, x.v, compute_dtype=dt, **kw),
            "lse": reference_lse(x.q, x.k, **kw), "lse@dtype": reference_lse(x.q, x.k, compute_dtype=dt, **kw)}
    if grads:
        do = case_grad_output(spec, seed, x.q.device)
        for name, g, g_dt in zip(("dq", "dk", "dv"), reference_grads(x.q, x.k, x.v, do, **kw),
                                 reference_grads(x.q, x.k, x.v, do, compute_dtype=dt, **kw), strict=True):
            refs[name], refs[f"{name}@dtype"] = g, g_dt
    return refs


def _shape(spec: AttentionSpec) -> str:
    return (f"B{spec.batch} Hq{spec.q_heads} Hkv{spec.kv_heads} Nq{spec.q_len} Nk{spec.kv_len} "
            f"D{spec.head_dim}/{spec.v_head_dim} {spec.dtype} mask={spec.mask.value} causal={spec.causal} "
            f"window={spec.window}")


def judge_case(case: CheckCase, got: dict[str, Any], device: torch.device | str = "cpu") -> CaseStats:
    """Raise CheckFailure unless ``got`` (run.run_case's outputs) is right for ``case``; see run.py for the runs."""
    spec, dev = case.spec, torch.device(device)
    missing = sorted((_EXPECTED | ({"out2", "lse2", "out3", "lse3", "digest_y"} if case.runs == 3 else set())
                      | ({"dq", "dk", "dv"} if case.grads else set())) - set(got))
    if missing:
        raise CheckFailure(f"{case.name}: the worker returned no {missing}")
    where = f"{case.name}; {_shape(spec)}"
    for name in ("out1", "out2", "out3", "dq", "dk", "dv"):
        t = got.get(name)
        if t is not None and (not isinstance(t, torch.Tensor) or t.dtype != spec.torch_dtype):
            raise CheckFailure(f"{name}: {getattr(t, 'dtype', type(t).__name__)}, "
                               f"expected {spec.torch_dtype} ({where})")
    x = case_inputs(spec, case.seeds[0], dev)
    if got["digest_x"] != input_digest(x):
        raise CheckFailure(f"the kernel modified its inputs (q/k/v/mask differ after the call; inputs must stay "
                           f"unchanged) ({where})")
    refs = _refs(spec, x, case.grads, case.seeds[0])
    dt = spec.torch_dtype
    out = compare("output", got["out1"].to(dev), refs["out"], refs["out@dtype"], dt, f"run 1, {where}")
    compare_lse(got["lse1"].to(dev), refs["lse"], refs["lse@dtype"], f"run 1, {where}")
    worst = [out]
    if case.grads:
        for name in ("dq", "dk", "dv"):
            worst.append(compare(name, got[name].to(dev), refs[name], refs[f"{name}@dtype"], dt,
                                 f"backward of run 1, {where}"))
    if case.runs == 3:
        try:
            compare("output", got["out2"].to(dev), refs["out"], refs["out@dtype"], dt,
                    f"run 2, other pre-fill, {where}")
            compare_lse(got["lse2"].to(dev), refs["lse"], refs["lse@dtype"], f"run 2, {where}")
        except CheckFailure as exc:
            diff = float((got["out2"].double() - got["out1"].double()).abs().nan_to_num(float("inf")).max())
            raise CheckFailure(f"two runs on the same inputs disagree (max diff {diff:.3g}): the kernel reads memory "
                               f"it did not write (scratch / uninitialized output). {exc}") from None
        y = case_inputs(spec, case.seeds[1], dev)
        if got["digest_y"] != input_digest(y):
            raise CheckFailure(f"the kernel modified its inputs in run 3 ({where})")
        refs_y = _refs(spec, y, False, case.seeds[1])
        try:
            compare("output", got["out3"].to(dev), refs_y["out"], refs_y["out@dtype"], dt,
                    f"run 3, fresh inputs into run 1's buffer, {where}")
            compare_lse(got["lse3"].to(dev), refs_y["lse"], refs_y["lse@dtype"], f"run 3, {where}")
        except CheckFailure as exc:
            if torch.equal(got["out3"], got["out1"]):
                raise CheckFailure(f"output did not change when the inputs changed: stale or cached result "
                                   f"({where})") from None
            raise exc
    return CaseStats(case.name, max(c.max_abs_err for c in worst), max(c.rel_err for c in worst))


def load_outputs(path: str | Path) -> dict[str, Any]:
    """A worker's output file, read as data only (``weights_only``: tensors, strings, containers)."""
    got = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(got, dict):
        raise CheckFailure(f"worker output {Path(path).name} is not a mapping")
    return got


def judge_dir(cases: list[CheckCase], out_dir: str | Path, device: torch.device | str = "cpu") -> list[CaseStats]:
    """``judge_case`` over the output files a worker wrote into the parent's private ``out_dir``."""
    stats = []
    for i, case in enumerate(cases):
        path = output_path(out_dir, i)
        if not path.is_file():
            raise CheckFailure(f"{case.name}: the worker wrote no outputs")
        stats.append(judge_case(case, load_outputs(path), device))
    return stats
