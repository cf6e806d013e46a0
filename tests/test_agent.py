"""The LLM operator without a network: a scripted fake client, and the real anthropic SDK over a mock transport.

The evaluator here is a stand-in that records which stage each tool asked for (the sandboxed cascade itself is
covered by test_evaluate_cheats.py); it fails "compile" for a source with a planted typo like Triton would.
"""
from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import httpx2
import pytest

from avo_inductor.kernels.render import default_genome, render
from avo_inductor.search.agent import TOOLS, AgentOperator, agent_available
from avo_inductor.search.budget import Budget, price_for, load_prices
from avo_inductor.search.types import Candidate, EvalResult, Stage
from avo_inductor.settings import Settings
from avo_inductor.spec import AttentionSpec, HardwareKey

CPU = HardwareKey("cpu", "triton-interpreter", (0, 0), 0)
SPEC = AttentionSpec(batch=1, q_heads=2, kv_heads=1, q_len=64, kv_len=64, head_dim=16, dtype="float16", causal=True)
PARENT = Candidate(id="p0", spec=SPEC, genome=default_genome(SPEC, CPU), operator="seed")
GOOD = render(PARENT.genome, SPEC).source.replace("USE_EXP2 = tl.constexpr(True)", "USE_EXP2 = tl.constexpr(False)")
BAD = GOOD.replace("tl.arange(0, BLOCK_D)", "tl.arangee(0, BLOCK_D)", 1)


class RecordingEvaluator:
    def __init__(self) -> None:
        self.calls: list[tuple[Candidate, Stage | None]] = []

    def evaluate(self, candidates, until: Stage | None = None):
        out = []
        for c in candidates:
            self.calls.append((c, until))
            if c.source and "arangee" in c.source:
                out.append(EvalResult(c.id, False, Stage.COMPILE, "AttributeError: module 'triton.language' has no attribute 'arangee'"))
            elif until is not None:
                out.append(EvalResult(c.id, True, until))
            else:
                out.append(EvalResult(c.id, True, Stage.PASSED, median_ms=1.0, baseline_ms=1.25, baseline="sdpa", speedup=1.25))
        return out


def settings(**kw) -> Settings:
    return Settings(anthropic_api_key="test", agent_model="claude-sonnet-4-5", **kw)


def tool_use(tid: str, name: str, data: dict) -> SimpleNamespace:
    return SimpleNamespace(type="tool_use", id=tid, name=name, input=data)


class ScriptedClient:
    """Plays back assistant turns; keeps every request so the test can read what the operator sent."""

    def __init__(self, turns: list[list[SimpleNamespace]], usage=(1000, 200)) -> None:
        self.turns, self.requests, self.usage = list(turns), [], usage
        self.messages = self

    def create(self, **request):
        self.requests.append(json.loads(json.dumps(request, default=str)))
        content = self.turns.pop(0)
        stop = "tool_use" if any(b.type == "tool_use" for b in content) else "end_turn"
        return SimpleNamespace(content=content, stop_reason=stop,
                               usage=SimpleNamespace(input_tokens=self.usage[0], output_tokens=self.usage[1]))


def test_agent_available_needs_a_key():
    ok, reason = agent_available(Settings(anthropic_api_key=None))
    assert not ok and "ANTHROPIC_API_KEY" in reason
    assert agent_available(settings())[0]


def test_scripted_session_repairs_critiques_and_returns_the_verified_candidate():
    client = ScriptedClient([
        [SimpleNamespace(type="text", text="Try base-e softmax."), tool_use("t1", "compile_candidate", {"source": BAD})],
        [tool_use("t2", "test_candidate", {"source": GOOD})],
        [tool_use("t3", "submit_candidate", {"source": GOOD})],
        [SimpleNamespace(type="text", text="Critique: every row is stored; gain may be noise on CPU."),
         tool_use("t4", "submit_candidate", {"same": True})],
    ])
    ev = RecordingEvaluator()
    op = AgentOperator(lambda: client, settings(), ev, hardware=CPU)
    (child,) = op.propose([(PARENT, EvalResult("p0", True, Stage.PASSED, speedup=1.0))], n=1, seed=0)
    assert child.source == GOOD and child.parent_ids == ("p0",) and child.operator == "agent"
    assert child.notes.startswith("Critique") and "USE_EXP2" in child.diff
    assert [(c.source == BAD, until) for c, until in ev.calls] == [(True, Stage.COMPILE), (False, Stage.CORRECT_TARGET),
                                                                    (False, None)]
    first = client.requests[0]
    assert {t["name"] for t in first["tools"]} == {t["name"] for t in TOOLS}
    task = first["messages"][0]["content"]
    assert "attn_fwd" in task and "CPU Triton interpreter" in task and "parent p0" in task and "Launcher ABI" in task
    repair = client.requests[1]["messages"][-1]["content"][0]
    assert repair["tool_use_id"] == "t1" and "FAILED at stage compile" in repair["content"] and "arangee" in repair["content"]
    critique = client.requests[3]["messages"][-1]["content"][0]["content"]
    assert "critique" in critique.lower() and "PASSED" in critique
    assert op.budget.calls == 4 and op.budget.tokens_used == 4 * 1200


def _message(i: int, content: list[dict], usage=(900, 100)) -> dict:
    return {"id": f"msg_{i}", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": content,
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]}}


def test_real_sdk_over_mock_transport():
    anthropic = pytest.importorskip("anthropic")
    replies = [
        _message(1, [{"type": "text", "text": "Wider key tiles."},
                     {"type": "tool_use", "id": "toolu_01", "name": "time_candidate", "input": {"genome": {"block_n": 32}}}]),
        _message(2, [{"type": "tool_use", "id": "toolu_02", "name": "submit_candidate", "input": {"genome": {"block_n": 32}}}]),
        _message(3, [{"type": "text", "text": "Tail keys are masked; fine."},
                     {"type": "tool_use", "id": "toolu_03", "name": "submit_candidate", "input": {"same": True}}]),
    ]
    bodies: list[dict] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path.endswith("/v1/messages")
        assert "test" in (request.headers.get("x-api-key", ""), request.headers.get("authorization", "").removeprefix("Bearer "))
        bodies.append(json.loads(request.content))
        return httpx2.Response(200, json=replies[len(bodies) - 1])

    client = anthropic.Anthropic(api_key="test", http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
                                 max_retries=0)
    ev = RecordingEvaluator()
    op = AgentOperator(lambda: client, settings(), ev, hardware=CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK warns about model end-of-life dates
        (child,) = op.propose([(PARENT, None)], n=1, seed=1)
    assert child.genome is not None and child.genome.block_n == 32 and child.source is None
    assert len(bodies) == 3 and bodies[0]["model"] == "claude-sonnet-4-5"
    assert bodies[0]["system"][0]["cache_control"] == {"type": "ephemeral"}
    result_block = bodies[1]["messages"][-1]["content"][0]
    assert result_block["type"] == "tool_result" and result_block["tool_use_id"] == "toolu_01"
    assert "speedup" in result_block["content"]
    assert op.budget.dollars_used == pytest.approx(3 * (900 * 3.0 + 100 * 15.0) / 1e6)


def test_budget_exhaustion_stops_cleanly():
    client = ScriptedClient([[tool_use("t1", "compile_candidate", {"source": GOOD})]] * 3, usage=(3000, 500))
    op = AgentOperator(lambda: client, settings(agent_max_tokens=10_000), RecordingEvaluator(), hardware=CPU,
                       max_output_tokens=4096)
    assert op.propose([(PARENT, None)], n=2, seed=0) == []  # nothing verified before the money ran out
    assert len(client.requests) == 1 and "budget" in op.stop_reason
    assert op.propose([(PARENT, None)], n=1, seed=1) == [] and len(client.requests) == 1
    dollars = AgentOperator(lambda: client, settings(agent_max_dollars=0.0001), RecordingEvaluator(), hardware=CPU)
    assert dollars.propose([(PARENT, None)], n=1, seed=0) == [] and "dollar budget" in dollars.stop_reason


def test_prices_unknown_models_pay_the_most():
    prices = load_prices()
    assert price_for("claude-sonnet-4-5-20250929", prices) == prices["claude-sonnet-4-5"]
    assert price_for("some-new-model", prices) == prices["_default"]
    b = Budget(max_tokens=100, max_dollars=1.0)
    b.charge("claude-haiku-4-5", {"input_tokens": 60, "output_tokens": 50})
    assert b.exhausted().startswith("token budget spent")


class _FakeClock:
    """Seconds that pass only when the test says so (a model call or a tool evaluation "takes" some)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _SlowEvaluator(RecordingEvaluator):
    def __init__(self, clock: _FakeClock, seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def evaluate(self, candidates, until: Stage | None = None):
        self.clock.now += self.seconds
        return super().evaluate(candidates, until)


def test_deadline_stops_a_session_before_the_next_model_call_and_keeps_the_verified_child():
    """Regression: the wall-clock budget was never checked inside a session, so a long tool-use conversation ran
    past the search's budget. Each tool evaluation takes 10 s here; the deadline is at 15 s."""
    clock = _FakeClock()
    other = GOOD.replace("USE_EXP2 = tl.constexpr(False)", "USE_EXP2 = tl.constexpr(True)")
    client = ScriptedClient([
        [tool_use("t1", "time_candidate", {"source": GOOD})],      # t=0: fully verified, becomes the best
        [tool_use("t2", "compile_candidate", {"source": other})],  # t=10: still in time
        [tool_use("t3", "time_candidate", {"source": other})],     # t=20: must never be requested
    ])
    ev = _SlowEvaluator(clock, 10.0)
    op = AgentOperator(lambda: client, settings(), ev, hardware=CPU)
    op.set_deadline(15.0, clock)
    (child,) = op.propose([(PARENT, None)], n=3, seed=0)
    assert child.source == GOOD  # ended cleanly with the candidate verified before the deadline
    assert len(client.requests) == 2 and len(ev.calls) == 2
    assert "wall-clock" in op.stop_reason
    assert op.propose([(PARENT, None)], n=1, seed=1) == [] and len(client.requests) == 2  # no new session either


def test_deadline_passing_during_a_model_call_skips_its_tool_round():
    """A model call that ends past the deadline: its tool calls (each possibly a full evaluation) are not run."""
    clock = _FakeClock()

    class SlowClient(ScriptedClient):
        def create(self, **request):
            clock.now += 60.0
            return super().create(**request)

    client = SlowClient([[tool_use("t1", "time_candidate", {"source": GOOD})]])
    ev = RecordingEvaluator()
    op = AgentOperator(lambda: client, settings(), ev, hardware=CPU)
    op.set_deadline(30.0, clock)
    assert op.propose([(PARENT, None)], n=1, seed=0) == []
    assert len(client.requests) == 1 and ev.calls == [] and "wall-clock" in op.stop_reason


def test_budget_deadline_is_part_of_exhausted():
    clock = _FakeClock()
    b = Budget(max_tokens=10_000, max_dollars=1.0)
    assert b.out_of_time() == "" and b.exhausted() == ""
    b.set_deadline(5.0, clock)
    assert b.exhausted() == "" and b.refuse_next("claude-sonnet-4-5", 100) == ""
    clock.now = 5.0
    assert b.exhausted().startswith("wall-clock budget spent") and b.refuse_next("claude-sonnet-4-5", 100)
    b.set_deadline(None)
    assert b.exhausted() == ""
