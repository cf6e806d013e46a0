"""The ANTICHEAT suite (shared/ANTICHEAT.md, issue 20 item 7): every cheat class planted as a real kernel and
rejected at a named stage, with a message that says why.

Each plant is the rendered flash_v1 kernel with one edit (so it follows the launcher ABI and fails where
intended, not at compile), evaluated by the real SandboxedEvaluator: a fresh sandboxed worker per candidate runs
it, this process judges. Numerical plants run on the CPU interpreter and, marked ``gpu``, on CUDA. Host-escape
plants (the interpreter runs kernel bodies as host Python) reach ``sys`` and ``inspect`` through triton's own
modules, which the old name-based allowlist let through: each would have passed on the old evaluator (verdict
and timing decided in the worker that ran the candidate, worker reused) and is refused now either by the
grammar at STATIC (once kernels/grammar.py is on the branch) or, as defence in depth, by the design: the
verdict is computed in the parent and every candidate gets a fresh worker.

PLANTS_PER_CLASS is the count the closing note cites.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from avo_inductor.kernels.render import default_genome, render
from avo_inductor.search.evaluate import SandboxedEvaluator
from avo_inductor.search.types import Candidate, Stage
from avo_inductor.spec import AttentionSpec, HardwareKey

SPEC = AttentionSpec(batch=2, q_heads=4, kv_heads=2, q_len=40, kv_len=48, head_dim=16, dtype="float16", causal=True)
TRAIN = dataclasses.replace(SPEC, needs_grad=True)
STORE_O = "    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_dv[None, :] < V_HEAD_DIM))\n"
STORE_LSE = "    tl.store(LSE + (off_b * H_Q * SPLITS + out_h) * N_Q + offs_m, lse, mask=offs_m < N_Q)\n"
DQ_SCALE = "    dq = dq * tl.cast(sm_scale, tl.float32)\n"
FWD_BODY = "    if PERSISTENT:\n"

# The harness-patching plant: replaces the comparison functions of whichever harness modules the worker holds
# (old: search.correctness; new: check.tolerance / check.judge, which the worker never imports) and writes no
# output. Reaches sys through triton.language.core.inspect (allowed by the old allowlist: attribute, not a name).
PATCH_HARNESS = (
    "    mods = tl.core.inspect.sys.modules\n"
    "    for name in ('avo_inductor.search.correctness', 'avo_inductor.check.tolerance', 'avo_inductor.check.judge'):\n"
    "        m = mods.get(name)\n"
    "        if m is not None:\n"
    "            m.compare = lambda *a, **k: (0.0, 0.0)\n")
# Timing-only: walks the host call stack and computes nothing while a timing function is on it.
TIMING_ONLY = (
    "    f = tl.core.inspect.currentframe()\n"
    "    timing = False\n"
    "    while f is not None:\n"
    "        timing = timing or f.f_code.co_name in ('_time', '_time_op', 'time_interleaved', 'wall_ms_per_call')\n"
    "        f = f.f_back\n"
    "    if timing:\n"
    "        acc = acc * 0.0\n")
# Memoisation across calls: after the first call in a process, leave the output buffer as it is.
MEMOISE = (
    "    mods = tl.core.inspect.sys.modules\n"
    "    if mods.get('avo_memo_planted') is None:\n"
    "        mods['avo_memo_planted'] = mods.get('math')\n"
    "    else:\n"
    "        acc = tl.load(o_ptrs, mask=(offs_m[:, None] < N_Q) & (offs_dv[None, :] < V_HEAD_DIM), other=0.0).to(tl.float32)\n")
# Reading the reference from the caller's frame: copies any float64 tensor a caller holds under a reference-like
# name into the output; there is none in the worker any more (the reference exists only in the parent).
STEAL_REFERENCE = (
    "    f = tl.core.inspect.currentframe()\n"
    "    stolen = None\n"
    "    while f is not None:\n"
    "        for key in ('ref', 'ref_x', 'refs', 'expected', 'want'):\n"
    "            if stolen is None and key in f.f_locals:\n"
    "                stolen = f.f_locals[key]\n"
    "        f = f.f_back\n"
    "    if stolen is None:\n"
    "        acc = acc * 0.0\n")

PLANTS_PER_CLASS = {
    "batch index >= 1 wrong": 1,
    "kv head 1 wrong": 1,
    "wrong LSE": 1,
    "wrong backward (halved dq)": 1,
    "NaN fill": 1,
    "constant output": 1,
    "timing-only work (host escape)": 1,
    "harness patching (host escape)": 1,
    "cross-candidate contamination via a reused worker": 1,
    "memoisation across calls (host escape)": 1,
    "reading the reference from the caller's frame (host escape)": 1,
}


def _rendered(spec: AttentionSpec, device: str) -> object:
    hw = HardwareKey("cpu", "triton-interpreter", (0, 0), 0) if device == "cpu" else HardwareKey.current()
    return render(default_genome(spec, hw), spec)


def plant(rendered: object, spec: AttentionSpec, cid: str, old: str, new: str, backward: bool = False) -> Candidate:
    """The rendered kernel with its first ``old`` (in the forward, or with ``backward`` in the backward part)
    replaced by ``new``, as a free-form candidate."""
    src: str = rendered.source  # type: ignore[attr-defined]
    split = src.find("# ---- backward")
    at = src.find(old, split if backward else 0)
    assert at >= 0 and (backward or split < 0 or at < split), f"anchor for {cid} not found"
    return Candidate(id=cid, spec=spec, source=src[:at] + new + src[at + len(old):],
                     entry_point=rendered.entry_point, bwd_entry_point=rendered.bwd_entry_point,  # type: ignore[attr-defined]
                     launch=rendered.launch_dict, operator="agent")


def numeric_plants(rendered: object, spec: AttentionSpec) -> dict[str, tuple[Candidate, str]]:
    """name -> (candidate, text the refusal must contain)."""
    return {
        "batch1_zero": (plant(rendered, spec, "batch1_zero", STORE_O,
                              "    acc = acc * (off_b == 0).to(tl.float32)\n" + STORE_O), "(1, "),
        "kvhead1_zero": (plant(rendered, spec, "kvhead1_zero", STORE_O,
                               "    acc = acc * (off_h // GROUP == 0).to(tl.float32)\n" + STORE_O), "max abs err"),
        "wrong_lse": (plant(rendered, spec, "wrong_lse", STORE_LSE, STORE_LSE.replace(", lse, mask", ", lse + 0.5, mask")),
                      "lse"),
        "nan_fill": (plant(rendered, spec, "nan_fill", STORE_O,
                           "    acc = tl.where(offs_m[:, None] % 2 == 0, acc, float('nan'))\n" + STORE_O), "not finite"),
        "constant": (plant(rendered, spec, "constant", STORE_O,
                           "    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32) + 0.25\n" + STORE_O), "max abs err"),
    }


def _device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def rendered():
    return _rendered(SPEC, "cpu")


def _evaluate(cands: list[Candidate], until: Stage | None = None, device: str = "cpu") -> list:
    with SandboxedEvaluator([device], timeout_s=600, quick=True) as ev:
        return ev.evaluate(cands, until=until)


def _assert_numeric_refusals(rendered: object, spec: AttentionSpec, device: str) -> None:
    planted = numeric_plants(rendered, spec)
    results = _evaluate([c for c, _ in planted.values()], until=Stage.CORRECT_SMALL, device=device)
    for (name, (_, needle)), r in zip(planted.items(), results):
        assert not r.ok and r.stage is Stage.CORRECT_SMALL, (name, r.stage, r.message)
        assert needle in r.message, (name, r.message)
    by_name = dict(zip(planted, results))
    assert "lse (run 1" in by_name["wrong_lse"].message  # the output itself is right: only the LSE check sees it
    assert "output (run 1" in by_name["batch1_zero"].message


def test_numerical_plants_refused_at_correct_small(rendered):
    """Wrong only for batch >= 1 / kv head 1, a wrong LSE with a right output, NaN rows, a constant: each
    refused at correct_small, saying which tensor and where."""
    _assert_numeric_refusals(rendered, SPEC, "cpu")


def test_halved_dq_of_a_training_kernel_refused():
    """A training kernel whose backward halves dq: the forward is right, the backward check refuses it."""
    bad = plant(_rendered(TRAIN, "cpu"), TRAIN, "half_dq", DQ_SCALE, "    dq = dq * tl.cast(sm_scale * 0.5, tl.float32)\n",
                backward=True)
    (r,) = _evaluate([bad], until=Stage.CORRECT_SMALL)
    assert not r.ok and r.stage is Stage.CORRECT_SMALL and "dq (backward" in r.message, r.message


def test_host_escape_plants_are_refused(rendered):
    """Harness patching, memoisation and reading the reference from the caller's frame, each followed in the
    same evaluator (one device: on the old design, the same worker) by a kernel that writes nothing: every one
    is refused, and the one after the harness patch is judged on its own (fresh worker, verdict here)."""
    writes_nothing = plant(rendered, SPEC, "writes_nothing", STORE_O, "    pass\n")
    cands = [plant(rendered, SPEC, "patch_harness", STORE_O, PATCH_HARNESS + "    pass\n"),
             writes_nothing,
             plant(rendered, SPEC, "memoise", STORE_O, MEMOISE + STORE_O),
             plant(rendered, SPEC, "steal_reference", STORE_O, STEAL_REFERENCE + STORE_O)]
    results = dict(zip([c.id for c in cands], _evaluate(cands, until=Stage.CORRECT_TARGET)))
    for name, r in results.items():
        assert not r.ok and r.stage in (Stage.STATIC, Stage.CORRECT_SMALL), (name, r.stage, r.message)
    if results["patch_harness"].stage is Stage.CORRECT_SMALL:  # the old allowlist let it run: the design holds
        assert "not finite" in results["patch_harness"].message
        assert results["patch_harness"].extra["worker_pid"] != results["writes_nothing"].extra["worker_pid"]
    assert "not finite" in results["writes_nothing"].message
    if results["memoise"].stage is Stage.CORRECT_SMALL:
        # the interpreter runs one program per tile: the first tile computes, every later one (this call and after)
        # leaves the buffer as it is, which the poison, the second run or the third shows
        assert any(s in results["memoise"].message for s in ("not finite", "disagree", "did not change"))
    if results["steal_reference"].stage is Stage.CORRECT_SMALL:
        assert "max abs err" in results["steal_reference"].message


def test_timing_only_plant_refused_by_checking_the_timed_outputs(rendered):
    """Right whenever it is checked, zero work while a timing function is on the stack: the outputs of the timed
    calls are judged too, so it fails at timing (or at static, by the grammar)."""
    cheat = plant(rendered, SPEC, "timing_only", STORE_O, TIMING_ONLY + STORE_O)
    (r,) = _evaluate([cheat])
    assert not r.ok and r.stage in (Stage.STATIC, Stage.TIMING), (r.stage, r.message)
    if r.stage is Stage.TIMING:
        assert "outputs of the timed calls are wrong" in r.message, r.message


@pytest.mark.gpu
def test_gpu_numerical_plants_refused():
    """The same numerical plants, compiled for the GPU, refused at correct_small on CUDA."""
    spec = dataclasses.replace(SPEC, dtype="bfloat16")
    _assert_numeric_refusals(_rendered(spec, "cuda"), spec, "cuda:0")


@pytest.mark.gpu
def test_gpu_halved_dq_refused():
    spec = dataclasses.replace(TRAIN, dtype="bfloat16")
    bad = plant(_rendered(spec, "cuda"), spec, "half_dq", DQ_SCALE,
                "    dq = dq * tl.cast(sm_scale * 0.5, tl.float32)\n", backward=True)
    (r,) = _evaluate([bad], until=Stage.CORRECT_SMALL, device="cuda:0")
    assert not r.ok and r.stage is Stage.CORRECT_SMALL and "dq (backward" in r.message, r.message
