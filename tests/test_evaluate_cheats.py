"""Planted cheats (ANTICHEAT.md), each rejected at the stage that should catch it; an honest kernel passes.

Every cheat is the real rendered flash_v1 kernel with one edit, so it follows the launcher ABI and fails where
intended, not at compile. A sandboxed CPU worker (Triton interpreter), fresh per candidate, runs them; this
process judges. The full ANTICHEAT suite is tests/test_anticheat.py.
"""
from __future__ import annotations

import dataclasses

import pytest

from avo_inductor.kernels.render import default_genome, render
from avo_inductor.search import bench
from avo_inductor.search.evaluate import SandboxedEvaluator
from avo_inductor.search.types import Candidate, Stage
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind

SPEC = AttentionSpec(batch=2, q_heads=4, kv_heads=2, q_len=100, kv_len=120, head_dim=16, dtype="float16", causal=True)
STORE_O = "    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_dv[None, :] < V_HEAD_DIM))\n"
KV_LOOP = "        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPECIALIZE):\n            start_n = tl.multiple_of(start_n, BLOCK_N)\n"
AFTER_Q = "    q = _load_tile(Q + "  # start of the statement loading the q tile; the cheat stores q back right before
FWD_BODY = "    if PERSISTENT:\n"


@pytest.fixture(scope="module")
def rendered():
    return render(default_genome(SPEC, HardwareKey("cpu", "triton-interpreter", (0, 0), 0)), SPEC)


def edited(rendered, cid: str, old: str, new: str) -> Candidate:
    """The rendered kernel with the first ``old`` (in the forward part) replaced by ``new``, as a free-form candidate."""
    at, bwd = rendered.source.find(old), rendered.source.find("# ---- backward")
    assert 0 <= at and (bwd < 0 or at < bwd), f"anchor for {cid} not found in the forward kernel"
    return Candidate(id=cid, spec=SPEC, source=rendered.source.replace(old, new, 1), entry_point=rendered.entry_point,
                     bwd_entry_point=rendered.bwd_entry_point, launch=rendered.launch_dict, operator="agent")


def cheats(rendered) -> dict[str, Candidate]:
    return {
        "writes_nothing": edited(rendered, "writes_nothing", STORE_O, "    pass\n"),
        "partial_output": edited(rendered, "partial_output", STORE_O, STORE_O.replace(
            "(offs_dv[None, :] < V_HEAD_DIM)", "(offs_dv[None, :] < V_HEAD_DIM // 2)")),
        # keeps whatever the output buffer already holds (a "cache hit"), computes only into NaN slots
        "cached_result": edited(rendered, "cached_result", STORE_O,
            "    o_mask = (offs_m[:, None] < N_Q) & (offs_dv[None, :] < V_HEAD_DIM)\n"
            "    prev = tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)\n"
            "    acc = tl.where(prev == prev, prev, acc)\n" + STORE_O),
        "skips_tail": edited(rendered, "skips_tail", KV_LOOP,
                             KV_LOOP.replace("range(lo, hi, BLOCK_N,", "range(lo, hi // BLOCK_N * BLOCK_N, BLOCK_N,")),
        "modifies_inputs": edited(rendered, "modifies_inputs", AFTER_Q,
            "    tl.store(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,"
            " tl.zeros([BLOCK_M, BLOCK_D], dtype=Q.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))\n"
            + AFTER_Q),
    }


@pytest.fixture(scope="module")
def evaluator():
    with SandboxedEvaluator(["cpu"], timeout_s=120) as ev:
        yield ev


def test_correct_candidate_passes_every_stage(evaluator, rendered):
    honest = Candidate(id="honest", spec=SPEC, genome=default_genome(SPEC, HardwareKey("cpu", "triton-interpreter", (0, 0), 0)))
    (result,) = evaluator.evaluate([honest])
    assert result.ok and result.stage is Stage.PASSED, result.message
    assert result.speedup is not None and result.median_ms and result.baseline == "sdpa"
    assert result.extra["informative_only"] and len(result.extra["harness_sha256"]) == 64
    assert result.max_abs_err is not None and result.max_abs_err < 2e-3
    promoted = evaluator.promote(honest)  # new seeds + held-out shapes before anything enters the store
    assert promoted.ok and promoted.extra["held_out"] and promoted.extra["seed"] != result.extra["seed"]


def test_numerical_cheats_rejected_at_correct_small(evaluator, rendered):
    planted = cheats(rendered)
    results = dict(zip(planted, evaluator.evaluate(list(planted.values()))))
    for name, result in results.items():
        assert not result.ok and result.stage is Stage.CORRECT_SMALL, (name, result.stage, result.message)
    assert "NaN" in results["writes_nothing"].message
    assert "not finite" in results["partial_output"].message
    assert "disagree" in results["cached_result"].message or "did not change" in results["cached_result"].message
    assert "max abs err" in results["skips_tail"].message
    assert "modified its inputs" in results["modifies_inputs"].message


@pytest.mark.parametrize("name,old,new,expect", [
    ("torch_reference", "import triton\n", "import triton\nimport torch\n", "import of 'torch'"),
    ("module_state", "LOG2E = ", "_CACHE = {}\nLOG2E = ", "module-level"),
    ("imports_os", "import triton\n", "import os\nimport triton\n", "import of 'os'"),
    ("opens_files", AFTER_Q, "    f = open('/etc/passwd')\n" + AFTER_Q, "name 'open' not allowed"),
    ("reads_pointer", AFTER_Q, "    p = Q.data_ptr()\n" + AFTER_Q, "'data_ptr' not allowed"),
])
def test_static_cheats_rejected_before_any_code_runs(evaluator, rendered, name, old, new, expect):
    (result,) = evaluator.evaluate([edited(rendered, name, old, new)])
    assert not result.ok and result.stage is Stage.STATIC, result.message
    assert expect in result.message
    assert "pid" not in result.extra  # decided in the parent: no worker saw it


def test_missing_entry_point_is_static(evaluator, rendered):
    cand = dataclasses.replace(edited(rendered, "renamed", "def attn_fwd(", "def attn_fwd2("), id="renamed")
    (result,) = evaluator.evaluate([cand])
    assert result.stage is Stage.STATIC and "attn_fwd" in result.message


def test_hang_times_out_crash_is_contained_and_the_run_goes_on(rendered):
    hang = edited(rendered, "hang", FWD_BODY, "    while True:\n        pass\n" + FWD_BODY)
    crash = edited(rendered, "crash", FWD_BODY, "    junk = tl.load(Q + 1099511627776)\n" + FWD_BODY)
    after = cheats(rendered)["writes_nothing"]
    with SandboxedEvaluator(["cpu"], timeout_s=15) as ev:  # the hang costs the whole limit: keep it short
        r_hang, r_crash = ev.evaluate([hang, crash])
        ev.timeout_s = 300  # the honest candidate, on the same pool, gets a limit no loaded CI box comes near
        (r_after,) = ev.evaluate([after])
    assert r_hang.stage is Stage.TIMEOUT and "compile" in r_hang.message and "SIGKILL" in r_hang.message
    assert r_crash.stage is Stage.CRASH and "exit code -11" in r_crash.message
    assert r_after.stage is Stage.CORRECT_SMALL  # the restarted worker still evaluates the next candidate
    # one fresh worker per candidate: no candidate's verdict comes from a process another candidate ran in
    assert len({r.extra["worker_pid"] for r in (r_hang, r_crash, r_after)}) == 3


def test_impossible_flop_rate_rejected_by_plausibility():
    spec = AttentionSpec(batch=4, q_heads=32, kv_heads=32, q_len=4096, kv_len=4096, head_dim=128, causal=True)
    flops = spec.flops()
    honest_ms = flops / 450e12 * 1e3  # 450 TFLOP/s: tuned Triton territory on an H100
    fine = bench.check_plausibility(flops, honest_ms, "NVIDIA H100 80GB HBM3", "bfloat16", cudnn_ms=flops / 541e12 * 1e3)
    assert fine.ok and not fine.needs_remeasure and 440 < fine.tflops < 460
    faked = bench.check_plausibility(flops, flops / 2000e12 * 1e3, "NVIDIA H100 80GB HBM3", "bfloat16")
    assert not faked.ok and "exceeds" in faked.message and faked.peak_tflops == pytest.approx(989.4)
    suspicious = bench.check_plausibility(flops, flops / 700e12 * 1e3, "NVIDIA H200", "bfloat16",
                                          cudnn_ms=flops / 541e12 * 1e3)
    assert suspicious.ok and suspicious.needs_remeasure and "re-measurement" in suspicious.message
    # sliding window: useful work, not dense work, so a good window kernel is not flagged as impossible
    windowed = dataclasses.replace(spec, window=512)
    assert windowed.flops() == pytest.approx(0.2344 * spec.flops(), rel=0.01)
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == pytest.approx(756.5)
    # the cuDNN ratio applies only where SDPA runs the same algorithm: with a dense mask (window, ALiBi, bias,
    # padding) it skips nothing, and a kernel 4x faster is expected
    assert bench.same_work_as_cudnn(spec) and bench.same_work_as_cudnn(dataclasses.replace(spec, causal=False))
    assert not bench.same_work_as_cudnn(windowed)
    assert not bench.same_work_as_cudnn(dataclasses.replace(spec, mask=MaskKind.ALIBI))
    # causal decode: a single query row sees every key, SDPA gets no mask and does the same work
    assert bench.same_work_as_cudnn(dataclasses.replace(spec, q_len=1))
    assert not bench.same_work_as_cudnn(dataclasses.replace(spec, q_len=100))  # non-square causal: a dense mask


def _fake_forward(fault):
    """A stand-in kernel for the worker-side runner: the reference (fp32 math) written into the harness's buffers,
    then ``fault`` applied to the output."""
    import torch

    from avo_inductor.kernels.reference import attention_reference, reference_lse

    def run(loaded, spec_, x, out, lse):
        kw = dict(scale=spec_.scale, causal=spec_.causal, window=spec_.window, mask_kind=spec_.mask.value, mask=x.mask)
        ref = attention_reference(x.q, x.k, x.v, compute_dtype=torch.float32, **kw)
        out.copy_(fault(ref, x).to(out.dtype))
        lse.copy_(reference_lse(x.q, x.k, compute_dtype=torch.float32, **kw))
    return run


def _run_and_judge(monkeypatch, spec, fault, runs, seed=0):
    import random

    import torch

    from avo_inductor.check import run as check_run
    from avo_inductor.check.cases import CheckCase
    from avo_inductor.check.judge import judge_case

    rng = random.Random(seed)
    case = CheckCase("t", spec, (rng.getrandbits(62), rng.getrandbits(62)), runs, False)
    monkeypatch.setattr(check_run, "run_forward", _fake_forward(fault))
    monkeypatch.setattr(check_run, "scratch_bytes", lambda spec_, loaded: 4)
    return judge_case(case, check_run.run_case(None, case, torch.device("cpu")))


@pytest.mark.parametrize("fault", ["last_group_wrong", "one_nan", "correct"])
def test_target_check_catches_one_wrong_row_and_one_unwritten_element(monkeypatch, fault):
    """The target-size check (one run, no scratch games) still compares every element with float64: one wrong row
    in the last batch's last head, or one element left NaN, fails it."""
    from avo_inductor.check.tolerance import CheckFailure
    from avo_inductor.spec import AttentionSpec

    spec = AttentionSpec(3, 8, 2, 19, 23, 8, dtype="float32", causal=True)

    def apply(ref, x):
        if fault == "last_group_wrong":
            ref[-1, -1, 5] += 0.5
        elif fault == "one_nan":
            ref[0, 0, 0, 0] = float("nan")
        return ref

    if fault == "correct":
        assert _run_and_judge(monkeypatch, spec, apply, 1).max_abs_err < 1e-5
    else:
        with pytest.raises(CheckFailure, match="not finite" if "nan" in fault else r"max abs err.*first at \(2, 7, 5"):
            _run_and_judge(monkeypatch, spec, apply, 1)


@pytest.mark.parametrize("seed", range(4))
def test_full_check_catches_a_kernel_wrong_only_where_a_padding_row_reaches_the_last_key(monkeypatch, seed):
    """A padded-attention kernel that miscounts keys only in rows kept through the last key (as flash_v1's split-K
    once did: it re-ran the previous split's keys) fails the check on every draw, not on the one random prefix
    length in ten that reaches the end: the checks keep every key of the last batch row. An honest kernel passes."""
    from avo_inductor.check.tolerance import CheckFailure
    from avo_inductor.spec import AttentionSpec

    spec = AttentionSpec(2, 4, 2, 1, 70, 16, dtype="float32", mask="padding")
    _run_and_judge(monkeypatch, spec, lambda ref, x: ref, 3, seed)
    with pytest.raises(CheckFailure, match="max abs err"):  # wrong only in the batch rows that keep the last key
        _run_and_judge(monkeypatch, spec, lambda ref, x: ref + 0.5 * x.mask[:, -1].to(ref.dtype)[:, None, None, None],
                       3, seed)
