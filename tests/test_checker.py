"""The one checker, parent side and rules: tolerance, cases, judge, timed outputs, wall clock, training lookup.

No kernel runs here: the judge is fed outputs built from plain torch (an honest "kernel": fp32 math stored in the
input dtype) and corrupted copies of them, so every rule is checked in well under a second per case.
"""
from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from avo_inductor.check.cases import (CheckCase, case_grad_output, case_inputs, small_cases, target_case,
                                      verification_cases, with_grads)
from avo_inductor.check.judge import judge_case
from avo_inductor.check.run import input_digest
from avo_inductor.check.tolerance import FACTOR, CheckFailure, compare, compare_lse
from avo_inductor.kernels.reference import attention_reference, reference_grads, reference_lse
from avo_inductor.spec import AttentionSpec, MaskKind

BASE = AttentionSpec(batch=2, q_heads=4, kv_heads=2, q_len=17, kv_len=33, head_dim=16, dtype="float16", causal=True)
SPECS = [BASE, dataclasses.replace(BASE, dtype="bfloat16", causal=False, mask=MaskKind.PADDING),
         dataclasses.replace(BASE, q_heads=8, q_len=33, kv_len=17, window=7),
         dataclasses.replace(BASE, dtype="float32", mask=MaskKind.BIAS, causal=False)]


def honest_outputs(case: CheckCase) -> dict[str, Any]:
    """What a correct kernel returns for ``case``: fp32 math stored in the input dtype, fp32 LSE."""
    spec = case.spec
    kw = dict(scale=spec.scale, causal=spec.causal, window=spec.window, mask_kind=spec.mask.value)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        x = case_inputs(spec, seed, "cpu")
        out = attention_reference(x.q, x.k, x.v, mask=x.mask, compute_dtype=torch.float32, **kw).to(spec.torch_dtype)
        lse = reference_lse(x.q, x.k, mask=x.mask, compute_dtype=torch.float32, **kw)
        return out, lse, x

    out1, lse1, x = run(case.seeds[0])
    got: dict[str, Any] = {"out1": out1, "lse1": lse1, "digest_x": input_digest(x)}
    if case.grads:
        do = case_grad_output(spec, case.seeds[0], "cpu")
        grads = reference_grads(x.q, x.k, x.v, do, mask=x.mask, compute_dtype=torch.float32, **kw)
        got.update({n: g.to(spec.torch_dtype) for n, g in zip(("dq", "dk", "dv"), grads)})
    if case.runs == 3:
        out3, lse3, y = run(case.seeds[1])
        got.update(out2=out1.clone(), lse2=lse1.clone(), out3=out3, lse3=lse3, digest_y=input_digest(y))
    return got


def _case(spec: AttentionSpec, grads: bool = False, runs: int = 3) -> CheckCase:
    return CheckCase("t", spec, (11, 12), runs, grads)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.dtype}-{s.mask.value}-c{int(s.causal)}-w{s.window}")
def test_honest_outputs_pass_and_every_corruption_is_named(spec: AttentionSpec) -> None:
    case = _case(spec, grads=True)
    good = honest_outputs(case)
    stats = judge_case(case, good)
    assert stats.max_abs_err >= 0 and stats.rel_err < 1e-2

    def refused(name: str, change: Any, needle: str) -> None:
        bad = dict(good)
        bad[name] = change(good[name].clone() if isinstance(good[name], torch.Tensor) else good[name])
        with pytest.raises(CheckFailure, match=needle):
            judge_case(case, bad)

    def last_row(t: torch.Tensor) -> torch.Tensor:  # last batch, last head, last row only
        t[-1, -1, -1] += 0.5
        return t

    refused("out1", last_row, rf"output \(run 1.*first at \({spec.batch - 1}, {spec.q_heads - 1}, {spec.q_len - 1}, 0\)")
    refused("out1", lambda t: t.index_fill_(3, torch.tensor([0]), float("nan")), "not finite")
    refused("lse1", lambda t: t + 0.25, r"lse \(run 1")
    refused("dq", lambda t: t * 0.5, r"dq \(backward")
    refused("dv", last_row, r"dv \(backward")
    refused("out2", lambda t: t + 1.0, "two runs on the same inputs disagree")
    refused("out3", lambda t: good["out1"].clone(), "stale or cached")
    refused("digest_x", lambda t: "0" * 64, "modified its inputs")
    refused("out1", lambda t: t.double(), "expected torch.")


def test_tolerance_is_relative_to_torch_at_the_input_dtype() -> None:
    ref = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    same = ref.to(torch.float16)
    torch_err = float((same.double() - ref).abs().max())
    compare("o", ref + 2 * torch_err, ref, same, torch.float16)  # within FACTOR x torch's error
    with pytest.raises(CheckFailure, match="max abs err"):
        compare("o", ref + (FACTOR + 1.5) * torch_err + 1e-2, ref, same, torch.float16)
    exact = torch.full((1, 1, 1, 4), 0.3, dtype=torch.float64)  # torch is exact here: the floor still allows a rounding
    compare("o", exact.to(torch.float16).double(), exact, exact, torch.float16)
    with pytest.raises(CheckFailure, match="shape"):
        compare("o", ref[0], ref, same, torch.float16)


def test_lse_rules_for_empty_and_huge_negative_rows() -> None:
    ref = torch.tensor([[[1.5, math.inf, -3e38]]], dtype=torch.float64)
    ok = torch.tensor([[[1.5, math.inf, -2e38]]])
    compare_lse(ok, ref, ref)
    with pytest.raises(CheckFailure, match=r"\+inf"):
        compare_lse(torch.tensor([[[1.5, 0.0, -2e38]]]), ref, ref)
    with pytest.raises(CheckFailure, match="below"):
        compare_lse(torch.tensor([[[1.5, math.inf, 0.0]]]), ref, ref)
    with pytest.raises(CheckFailure, match="NaN"):
        compare_lse(torch.tensor([[[float("nan"), math.inf, -2e38]]]), ref, ref)


@pytest.mark.parametrize("lse", [0.3, 2.9, -3.7, 41.0])
def test_lse_floor_allows_a_few_fp32_ulps_of_the_row_and_no_more(lse: float) -> None:
    """Torch's fp32 logsumexp exact to the reference (the worst case for the relative rule): a kernel LSE a few ulps
    off passes (the folded scale, log2 and ln 2 each round once; 2 "+0.3 - 0.3" steps once refused such a row),
    one 1e-4 off does not."""
    ref = torch.full((1, 2, 2), lse, dtype=torch.float64)
    ulp = torch.finfo(torch.float32).eps * max(abs(lse), 1.0)
    compare_lse((ref + 6 * ulp).float(), ref, ref)
    with pytest.raises(CheckFailure, match="max abs err"):
        compare_lse((ref + 1e-4).float(), ref, ref)


def test_reference_lse_follows_the_launcher_abi() -> None:
    q, k = torch.randn(2, 2, 3, 8, dtype=torch.float64), torch.randn(2, 2, 4, 8, dtype=torch.float64)
    keep = torch.tensor([[True, True, False, False], [False, False, False, False]])
    lse = reference_lse(q, k, mask_kind="padding", mask=keep)
    assert torch.isposinf(lse[1]).all() and torch.isfinite(lse[0]).all()
    s = (q[0] @ k[0, :, :2].transpose(-1, -2)) / math.sqrt(8)
    torch.testing.assert_close(lse[0], torch.logsumexp(s, -1))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("spec", [BASE, dataclasses.replace(BASE, q_heads=16, kv_heads=1, q_len=1, kv_len=4096),
                                  dataclasses.replace(BASE, needs_grad=True, q_len=2048, kv_len=2048)])
def test_every_case_has_batch_2_two_kv_heads_the_gqa_ratio_and_ragged_lengths(device: str, spec: AttentionSpec) -> None:
    rng = random.Random(0)
    cases = small_cases(spec, device, rng) + small_cases(spec, device, rng, held_out=True) + \
        verification_cases(spec, device, rng)
    for c in cases:
        s = c.spec
        assert s.batch >= 2 and s.kv_heads >= 2 and s.gqa_group == spec.gqa_group and s.q_heads == s.kv_heads * s.gqa_group
        assert c.grads == with_grads(spec) == spec.needs_grad
        assert (s.head_dim, s.dtype, s.causal, s.window, s.mask) == (spec.head_dim, spec.dtype, spec.causal, spec.window, spec.mask)
    ragged = [c for c in small_cases(spec, device, random.Random(1)) if not spec.is_decode]
    assert all(c.spec.q_len != c.spec.kv_len and c.runs == 3 for c in ragged)
    t = target_case(spec, device, rng)
    assert t.runs == 1
    if device == "cuda":
        assert t.spec == dataclasses.replace(spec, dynamic=())
    else:
        assert max(t.spec.q_len, t.spec.kv_len) <= 48 and t.spec.batch == 2 and t.spec.kv_heads == 2
    assert CheckCase.from_dict(t.to_dict()) == t


def test_case_inputs_are_rebuilt_identically_from_the_seed() -> None:
    spec = dataclasses.replace(BASE, mask=MaskKind.PADDING)
    a, b = case_inputs(spec, 5, "cpu"), case_inputs(spec, 5, "cpu")
    assert input_digest(a) == input_digest(b) and input_digest(a) != input_digest(case_inputs(spec, 6, "cpu"))
    assert bool(a.mask[-1].all())  # the last batch keeps every key: split-K tails are exercised


# ---- the parent's verdict on timing ----------------------------------------------------------------------
class _Reply:
    def __init__(self, payload: dict[str, Any], marks: tuple[tuple[str, float], ...]) -> None:
        self.status, self.payload, self.marks = "ok", payload, marks


class _FakeSession:
    """Stands in for a worker session answering the "time" op: writes what ``outputs`` says into the parent's
    folder, as the worker does, and reports the raw timings and marks given."""

    def __init__(self, spec: AttentionSpec, outputs: Any, wall_s: float, device: str = "cpu") -> None:
        self.spec, self.outputs, self.wall_s = spec, outputs, wall_s
        self.worker = type("W", (), {"device": device})()

    def ask(self, stage: Any, message: dict[str, Any]) -> _Reply:
        seeds = message["seeds"]
        for i in range(len(seeds) + 1):
            index = i % len(seeds)
            got = honest_outputs(CheckCase("x", self.spec, (seeds[index], seeds[index]), 1, False))
            got["input_index"] = index
            torch.save(self.outputs(i, got), Path(message["out_dir"]) / f"timed{i}.pt")
        timing = {"median_ms": 1.0, "spread": 0.01, "samples_ms": [1.0], "method": "do_bench"}
        marks = (("rtt", 0.0), ("rtt_done", 0.001), ("wall", 1.0), ("wall_done", 1.0 + 0.001 + self.wall_s))
        return _Reply({"candidate": timing, "baseline": {**timing, "median_ms": 1.2, "samples_ms": [1.2]},
                       "wall_calls": 20, "method": "do_bench"}, marks)


def _time(session: _FakeSession, tmp_path: Path, promotion: bool = False) -> tuple[dict[str, Any], Any]:
    from avo_inductor.search.evaluate import SandboxedEvaluator

    tmp_path.mkdir(parents=True, exist_ok=True)
    ev = SandboxedEvaluator(["cpu"])
    job = {"promotion": promotion, "quick": False}
    base = {"best": "sdpa", "ms": {"sdpa": 1.2}, "method": "do_bench"}
    out = ev._time(session, job, session.spec, base, str(tmp_path), torch.device("cpu"), random.Random(0))
    return out, ev


def test_outputs_of_the_timed_calls_are_judged(tmp_path: Path) -> None:
    from avo_inductor.search.evaluate import _Failed
    from avo_inductor.search.types import Stage

    out, _ = _time(_FakeSession(BASE, lambda i, got: got, wall_s=0.02), tmp_path / "a")
    assert out["speedup"] == pytest.approx(1.2) and out["extra"]["timed_outputs_checked"] == 3
    assert out["extra"]["wall_ms"] == pytest.approx(1.0)

    def skipped_work(i: int, got: dict[str, Any]) -> dict[str, Any]:
        if i == 2:  # the buffer still holds an answer for other inputs: the work was skipped in timing
            got = {**got, "input_index": (got["input_index"] + 1) % 2}
        return got

    with pytest.raises(_Failed, match="outputs of the timed calls are wrong") as info:
        _time(_FakeSession(BASE, skipped_work, wall_s=0.02), tmp_path / "b")
    assert info.value.stage is Stage.TIMING


def test_the_parents_wall_clock_overrules_the_event_time() -> None:
    """Events say 1 ms per call; the parent clocked 5 ms per call for the segment: flagged for re-measurement,
    and a failure at promotion."""
    from avo_inductor.search.evaluate import SandboxedEvaluator, _Failed, _wall_ms

    assert _wall_ms((("rtt", 0.0), ("rtt_done", 0.01), ("wall", 1.0), ("wall_done", 1.11)), 20) == pytest.approx(5.0)
    spec = dataclasses.replace(BASE, batch=4, q_heads=32, kv_heads=8, q_len=4096, kv_len=4096, head_dim=128,
                               dtype="bfloat16")
    ev = SandboxedEvaluator(["cpu"])
    fresh = {"informative_only": False, "timing_method": "do_bench", "baselines_ms": {"sdpa": 1.2}}
    extra = {**fresh, "wall_ms": 5.0}
    base = {"best": "sdpa", "ms": {"sdpa": 1.2}, "method": "do_bench"}
    metrics = {"median_ms": 1.0}
    ev._plausibility({"promotion": False}, spec, "NVIDIA H100 80GB HBM3", base, metrics, extra)
    assert "contradicts the event median" in extra["needs_remeasure"]
    with pytest.raises(_Failed, match="still implausible"):
        ev._plausibility({"promotion": True}, spec, "NVIDIA H100 80GB HBM3", base, {"median_ms": 1.0},
                         {**fresh, "wall_ms": 5.0})
    honest = {**fresh, "wall_ms": 1.1}
    ev._plausibility({"promotion": True}, spec, "NVIDIA H100 80GB HBM3", base, {"median_ms": 1.0}, honest)
    assert "needs_remeasure" not in honest


# ---- training sites ----------------------------------------------------------------------------------------
class _Store:
    def __init__(self, specs: list[AttentionSpec]) -> None:
        self.specs = specs

    def lookup(self, spec: AttentionSpec, hardware: Any) -> Any:
        return spec if spec in self.specs else None

    def lookup_class(self, spec: AttentionSpec, hardware: Any, serves: Any = None) -> Any:
        return None  # exact records only here; class records: tests/test_class_records.py


def test_an_inference_record_never_serves_a_training_site() -> None:
    """Only training records have their backward checked, so a training site takes only a training record; an
    inference site may take the training record of the same shape (its forward and LSE were checked)."""
    from avo_inductor.backend.graph_pass import lookup_record

    infer, train = BASE, dataclasses.replace(BASE, needs_grad=True)
    assert lookup_record(_Store([infer]), train, None) is None
    assert lookup_record(_Store([infer, train]), train, None) == train
    assert lookup_record(_Store([train]), infer, None) == train
    assert lookup_record(_Store([infer]), infer, None) == infer


def test_training_compile_never_runs_an_inference_records_unchecked_backward() -> None:
    """End to end: the store holds only an inference record whose backward halves dq (its forward is right). A
    training compile must not use it (a miss, SDPA kept), so the gradients match eager."""
    import dataclasses as dc

    import avo_inductor
    from avo_inductor.cache.store import KernelStore
    from avo_inductor.kernels.baseline import baseline_record
    from avo_inductor.kernels.tiers import as_source_record
    from torch import nn
    from torch._dynamo.utils import counters

    class Attn(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    model = Attn()
    q = torch.randn(2, 4, 17, 16, requires_grad=True)
    k, v = (torch.randn(2, 2, 17, 16, requires_grad=True) for _ in range(2))
    spec = avo_inductor.explain(model, q, k, v, quiet=True)[0].spec
    assert spec.needs_grad
    good = as_source_record(baseline_record(dc.replace(spec, needs_grad=False)))  # an edit carries its source
    anchor = "    dq = dq * tl.cast(sm_scale, tl.float32)\n"
    assert anchor in good.source
    bad = good.with_changes(source=good.source.replace(anchor, "    dq = dq * tl.cast(sm_scale * 0.5, tl.float32)\n"),
                            sha256="")
    KernelStore.from_settings().put(bad)
    counters.clear()
    out = torch.compile(model, backend="avo")(q, k, v)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = torch.autograd.grad(model(q, k, v).square().sum(), (q, k, v))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    assert counters["avo"]["hit"] == 0


@pytest.mark.parametrize("tier", ["template", "source"])
def test_isolated_verification_of_both_trust_tiers(tier: str) -> None:
    """``cache import`` / ``cache verify`` run this un-mocked: a template record (no source: rendered from the
    installed template) and a source record of the same kernel both pass."""
    from avo_inductor.check.isolated import verify_isolated
    from avo_inductor.kernels.baseline import baseline_record
    from avo_inductor.kernels.tiers import as_source_record

    spec = AttentionSpec(2, 4, 2, 17, 33, 16, dtype="float32", causal=True)
    record = baseline_record(spec)
    assert record.tier == "template" and record.source is None
    if tier == "source":
        record = as_source_record(record)
    ok, problems = verify_isolated(record, timeout_s=600)
    assert ok, problems
