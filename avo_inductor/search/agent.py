"""LLM variation operator: a tool-using Anthropic Messages loop that proposes, repairs, critiques and verifies.

The agent sees the parent's source, its lineage and hardware notes (data files in prompts/ and hardware_notes/),
and can run the evaluator cascade up to a stage through tools. Only candidates that passed the full cascade in
the sandbox come back to the engine. Tokens and dollars are charged against one budget per operator; when it
runs out, or the search's wall-clock deadline (``set_deadline``) passes, the operator stops cleanly and proposes
nothing more.
"""
from __future__ import annotations

import difflib
import inspect
import json
import logging
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..settings import Settings
from ..spec import HardwareKey
from .budget import Budget
from .operators import candidate_id, content_hash
from .types import Candidate, EvalResult, Evaluator, Stage

log = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent
PROMPTS_DIR, NOTES_DIR = _HERE / "prompts", _HERE / "hardware_notes"
_TOOL_STAGE = {"compile_candidate": Stage.COMPILE, "test_candidate": Stage.CORRECT_TARGET,
               "time_candidate": None, "submit_candidate": None}
_KERNEL_PROPS = {
    "source": {"type": "string", "description": "full Triton module source following the launcher ABI"},
    "launch": {"type": "object", "description": "launch config (same keys as the parent's); omit to keep the parent's"},
    "genome": {"type": "object", "description": "instead of source: template knobs to change, e.g. {\"block_n\": 128}"},
}
TOOLS: list[dict[str, Any]] = [
    {"name": "compile_candidate", "description": "Static checks + compile + one launch on a tiny input.",
     "input_schema": {"type": "object", "properties": _KERNEL_PROPS}},
    {"name": "test_candidate",
     "description": "Static, compile, correctness on ragged small shapes and the target shape.",
     "input_schema": {"type": "object", "properties": _KERNEL_PROPS}},
    {"name": "time_candidate", "description": "The full cascade including timing against the best built-in backend.",
     "input_schema": {"type": "object", "properties": _KERNEL_PROPS}},
    {"name": "submit_candidate",
     "description": "Hand in the final kernel (evaluated in full). {\"same\": true} re-submits the last one.",
     "input_schema": {"type": "object", "properties": {**_KERNEL_PROPS, "same": {"type": "boolean"},
                                                        "notes": {"type": "string"}}}},
]


def agent_available(settings: Settings) -> tuple[bool, str]:
    """(usable?, reason). The agent needs an API key and the anthropic SDK; without them the search runs structured."""
    if not settings.anthropic_api_key:
        return False, "ANTHROPIC_API_KEY is not set: the agent operator is disabled (structured operators only)"
    try:
        import anthropic  # noqa: F401
    except ImportError as exc:
        return False, f"the anthropic SDK is not importable ({exc}): the agent operator is disabled"
    return True, f"agent operator available (model {settings.agent_model})"


def render_prompt(name: str, **values: Any) -> str:
    """prompts/<name>.md with ``$placeholders`` filled (string.Template: kernel source braces stay untouched)."""
    return string.Template((PROMPTS_DIR / f"{name}.md").read_text()).safe_substitute(
        {k: str(v) for k, v in values.items()})


def hardware_notes(hardware: HardwareKey | None) -> tuple[str, str]:
    """(target name, notes text) for the device generation: Hopper (sm_90+), Ampere (sm_8x), else the interpreter."""
    if hardware is None or hardware.vendor == "cpu":
        return "the CPU Triton interpreter", (NOTES_DIR / "cpu_interpreter.md").read_text()
    family = "hopper" if hardware.capability >= (9, 0) else "ampere"
    major, minor = hardware.capability[0], hardware.capability[1]
    return f"{hardware.name} (sm_{major}{minor})", (NOTES_DIR / f"{family}.md").read_text()


def format_result(result: EvalResult) -> str:
    """What a tool returns to the model: the stage reached, the error text, the measurements."""
    if not result.ok:
        head = f"FAILED at stage {result.stage.value}: {result.message[:2500]}"
    else:
        head = f"PASSED up to stage {result.stage.value}" + (f" ({result.message})" if result.message else "")
    facts = {k: getattr(result, k) for k in ("median_ms", "baseline_ms", "baseline", "speedup", "tflops",
                                             "max_abs_err", "rel_err", "spread") if getattr(result, k) is not None}
    return head + (f"\nmeasurements: {json.dumps(facts)}" if facts else "")


def lineage_summary(parent: Candidate, result: EvalResult | None, history: Sequence[Any] = ()) -> str:
    """Lines of what was tried: ancestors (LineageStep-like objects) and the parent's own result."""
    lines = []
    for step in history:
        outcome = f"score {step.score:.3f}" if step.ok else f"failed at {step.stage}: {str(step.message)[:200]}"
        lines.append(f"- {step.candidate_id} [{step.operator}] {step.diff or 'seed'} -> {outcome}")
    if result is not None:
        outcome = (f"score {result.score:.3f}" if result.ok
                   else f"failed at {result.stage.value}: {result.message[:200]}")
        lines.append(f"- parent {parent.id} [{parent.operator}] {parent.diff or 'seed'} -> {outcome}")
    return "\n".join(lines) or "(no history: this is a seed kernel)"


def _block_param(block: Any) -> dict[str, Any] | None:
    """An SDK or scripted content block as a Messages API param (dict), for re-sending the conversation."""
    kind = getattr(block, "type", None) or block.get("type")
    get = (lambda k: getattr(block, k)) if not isinstance(block, dict) else block.get
    if kind == "text":
        return {"type": "text", "text": get("text")}
    if kind == "tool_use":
        return {"type": "tool_use", "id": get("id"), "name": get("name"), "input": get("input")}
    return None


@dataclass
class _Session:
    parent: Candidate
    critiqued: bool = False
    last_submitted: Candidate | None = None
    accepted: tuple[Candidate, EvalResult] | None = None
    best: tuple[Candidate, EvalResult] | None = None
    cache: dict[tuple[str, str], EvalResult] = field(default_factory=dict)
    critique: str = ""


class AgentOperator:
    """VariationOperator backed by an LLM. ``client_factory()`` returns an ``anthropic.Anthropic``-like client.

    ``evaluator`` runs the cascade; if its ``evaluate`` accepts ``until=Stage`` the compile/test tools stop
    early. ``history(parent)`` (optional) returns the parent's lineage steps for the prompt.
    """

    name = "agent"

    def __init__(self, client_factory: Callable[[], Any], settings: Settings, evaluator: Evaluator, *,
                 hardware: HardwareKey | None = None, max_turns: int = 16, max_output_tokens: int = 8192,
                 history: Callable[[Candidate], Sequence[Any]] | None = None, budget: Budget | None = None) -> None:
        self.client_factory, self.settings, self.evaluator = client_factory, settings, evaluator
        self.hardware, self.max_turns, self.max_output_tokens = hardware, max_turns, max_output_tokens
        self.history = history
        self.budget = budget or Budget(settings.agent_max_tokens, settings.agent_max_dollars)
        self.stop_reason = ""
        self._client: Any = None
        params = inspect.signature(evaluator.evaluate).parameters
        self._staged = "until" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def set_deadline(self, deadline: float | None, clock: Callable[[], float] | None = None) -> None:
        """The search's wall-clock deadline (on ``clock``, the engine's): checked before every model call and
        every tool round, so a long tool-use session ends with the search's budget, not after it."""
        self.budget.set_deadline(deadline, clock)

    def propose(self, parents: Sequence[tuple[Candidate, EvalResult | None]], n: int, seed: int) -> list[Candidate]:
        """One agent session per child (parents round-robin); returns only fully verified children."""
        children: list[Candidate] = []
        for i in range(max(0, n)):
            spent = self.budget.exhausted()
            if spent:
                self.stop_reason = f"agent budget exhausted: {spent}"
                log.warning(self.stop_reason)
            if spent or not parents:
                break
            parent, result = parents[i % len(parents)]
            child = self._session(parent, result, seed + i)
            if child is not None:
                children.append(child)
        return children

    # ---- one session --------------------------------------------------------------------------------------
    def _session(self, parent: Candidate, parent_result: EvalResult | None, seed: int) -> Candidate | None:
        if self._client is None:
            self._client = self.client_factory()
        state = _Session(parent)
        messages: list[dict[str, Any]] = [{"role": "user", "content": self._task_prompt(parent, parent_result)}]
        system = [{"type": "text", "text": render_prompt("system"), "cache_control": {"type": "ephemeral"}}]
        nudged = False
        for _turn in range(self.max_turns):
            reason = self.budget.refuse_next(self.settings.agent_model, self.max_output_tokens)
            if reason:
                self.stop_reason = f"agent stopped: {reason}"
                log.warning(self.stop_reason)
                break
            try:
                response = self._client.messages.create(model=self.settings.agent_model, system=system, tools=TOOLS,
                                                         messages=messages, max_tokens=self.max_output_tokens)
            except Exception as exc:  # API/transport errors end this session, never the search
                self.stop_reason = f"agent API call failed: {type(exc).__name__}: {exc}"
                log.warning(self.stop_reason)
                break
            self.budget.charge(self.settings.agent_model, response.usage)
            content = [p for p in (_block_param(b) for b in response.content) if p is not None]
            messages.append({"role": "assistant", "content": content})
            if state.critiqued and not state.critique:  # the answer to the critique turn
                state.critique = " ".join(b["text"] for b in content if b["type"] == "text").strip()[:2000]
            uses = [b for b in content if b["type"] == "tool_use"]
            if not uses:
                if nudged:
                    break
                nudged = True
                messages.append({"role": "user", "content": "Use the tools, then call submit_candidate."})
                continue
            results = self._tool_round(state, uses)
            if results is None:
                break
            messages.append({"role": "user", "content": results})
            if state.accepted:
                break
        chosen = state.accepted or state.best
        if chosen is None:
            return None
        cand, _ = chosen
        return replace(cand, notes=(state.critique or cand.notes)[:2000])

    def _tool_round(self, state: _Session, uses: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Run one response's tool calls; None when the deadline passed before one of them could start (each
        may be a full evaluation). The session then ends with the best candidate verified so far."""
        results = []
        for use in uses:
            late = self.budget.out_of_time()
            if late:
                self.stop_reason = f"agent stopped: {late}"
                log.warning(self.stop_reason)
                return None
            results.append(self._tool(state, use))
        return results

    def _task_prompt(self, parent: Candidate, result: EvalResult | None) -> str:
        source, _, _, launch = self._parent_source(parent)
        target, notes = hardware_notes(self.hardware)
        history = self.history(parent) if self.history else ()
        try:
            from ..kernels import launch as launch_mod
            abi = (launch_mod.__doc__ or "").strip()
        except ImportError:
            abi = "(see the parent kernel: keep its entry point signature)"
        score = f"score {result.score:.3f}x" if result and result.ok else "not yet scored"
        return render_prompt("task", target=target, spec_short=parent.spec.short(),
                             spec_json=json.dumps(parent.spec.to_dict()),
                             gflops=f"{parent.spec.flops() / 1e9:.3f}", abi=abi,
                             parent_id=parent.id, parent_score=score,
                             parent_launch=json.dumps(launch), parent_source=source,
                             parent_genome=json.dumps(parent.genome.to_dict()) if parent.genome else "none (free-form)",
                             lineage=lineage_summary(parent, result, history), hardware_notes=notes)

    @staticmethod
    def _parent_source(parent: Candidate) -> tuple[str, str, str | None, dict[str, Any]]:
        """(source, entry, bwd entry, launch) of the parent, rendered when it is a genome (one rule: materialize)."""
        from .evaluate import materialize

        return materialize(parent)

    def _child(self, state: _Session, data: dict[str, Any]) -> Candidate:
        """The candidate a tool call describes (ValueError on a malformed call, fed back to the model)."""
        parent = state.parent
        if data.get("same"):
            if state.last_submitted is None:
                raise ValueError("nothing submitted yet to re-submit")
            return state.last_submitted
        if data.get("source"):
            src, entry, bwd, launch = self._parent_source(parent)
            diff = "".join(difflib.unified_diff(src.splitlines(True), str(data["source"]).splitlines(True),
                                                "parent", "child"))
            # entry names come from the materialised parent: a genome parent's Candidate defaults are not its names
            child = Candidate(id="", spec=parent.spec, genome=parent.genome, source=str(data["source"]),
                              entry_point=entry, bwd_entry_point=bwd,
                              launch=dict(data.get("launch") or launch), diff=diff[:4000])
        elif data.get("genome"):
            if parent.genome is None:
                raise ValueError("the parent is free-form source: pass `source`, not `genome`")
            genome = parent.genome.replace(**dict(data["genome"]))
            child = Candidate(id="", spec=parent.spec, genome=genome, diff=f"genome {json.dumps(data['genome'])}")
        else:
            raise ValueError("pass `source` (full module) or `genome` (knob changes)")
        return replace(child, id=candidate_id(parent.spec, content_hash(child)), parent_ids=(parent.id,),
                       operator=self.name, island=parent.island, generation=parent.generation + 1)

    def _evaluate(self, state: _Session, cand: Candidate, until: Stage | None) -> EvalResult:
        key = (cand.id, until.value if until else "all")
        if key not in state.cache:
            kwargs = {"until": until} if (self._staged and until is not None) else {}
            state.cache[key] = self.evaluator.evaluate([cand], **kwargs)[0]
        return state.cache[key]

    def _tool(self, state: _Session, use: dict[str, Any]) -> dict[str, Any]:
        name, data = use["name"], dict(use.get("input") or {})
        out = {"type": "tool_result", "tool_use_id": use["id"]}
        if name not in _TOOL_STAGE:
            return {**out, "content": f"unknown tool {name!r}; use one of {sorted(_TOOL_STAGE)}", "is_error": True}
        try:
            cand = self._child(state, data)
        except (ValueError, TypeError) as exc:
            return {**out, "content": f"bad tool input: {exc}", "is_error": True}
        result = self._evaluate(state, cand, _TOOL_STAGE[name])
        full_pass = result.ok and _TOOL_STAGE[name] is None
        if full_pass and (state.best is None or result.score > state.best[1].score):
            state.best = (cand, result)
        text = format_result(result)
        if name == "submit_candidate":
            state.last_submitted = cand
            if not result.ok:
                text += "\nNot accepted: repair it and submit again."
            elif not state.critiqued:
                state.critiqued = True
                text = render_prompt("critique", result=text)
            else:
                state.accepted = (cand, result)
                text += "\nAccepted."
        return {**out, "content": text}
