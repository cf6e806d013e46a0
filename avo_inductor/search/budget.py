"""Token, dollar and wall-clock budget for the LLM operator, priced from prompts/prices.json (data, not code).

One Budget is shared by every call an operator makes, so a search never spends more than the settings allow.
Unknown models are charged at the most expensive listed rate: a budget may be underused, never overrun. The
deadline is the search's own wall-clock budget, handed down by the engine: one tool-use session can run for many
minutes, and without it the agent kept talking (and evaluating) after the search's time was up.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from ..parsing import bounded_int, finite_float

PRICES_FILE = Path(__file__).resolve().parent / "prompts" / "prices.json"


def load_prices(path: Path = PRICES_FILE) -> dict[str, dict[str, float]]:
    """model -> {input, output, cache_write, cache_read} in USD per million tokens ("_default" for unknown)."""
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def price_for(model: str, prices: dict[str, dict[str, float]]) -> dict[str, float]:
    """Exact model name, else the longest listed prefix (e.g. a dated snapshot), else the _default rate."""
    if model in prices:
        return prices[model]
    prefixes = [k for k in prices if not k.startswith("_") and model.startswith(k)]
    return prices[max(prefixes, key=len)] if prefixes else prices["_default"]


def _usage_get(usage: Any, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
    return int(value or 0)


@dataclass
class Budget:
    """Running totals against ``max_tokens`` and ``max_dollars`` (all token kinds count toward tokens), and an
    optional ``deadline`` on ``clock`` after which no model call or tool round may start."""

    max_tokens: int
    max_dollars: float
    tokens_used: int = 0
    dollars_used: float = 0.0
    calls: int = 0
    last_input_tokens: int = 0
    prices: dict[str, dict[str, float]] = field(default_factory=load_prices)
    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        # A NaN cap would make every "spent >= cap" test False, i.e. no cap at all.
        self.max_tokens = bounded_int("max_tokens", self.max_tokens, minimum=1)
        self.max_dollars = finite_float("max_dollars", self.max_dollars, minimum=0.0)

    def set_deadline(self, deadline: float | None, clock: Callable[[], float] | None = None) -> None:
        """Stop at ``deadline`` (a ``clock()`` value; None = no time limit). The engine passes its own clock so
        the deadline and the search's budget are measured the same way."""
        self.deadline = deadline
        if clock is not None:
            self.clock = clock

    def out_of_time(self) -> str:
        """Why time is up ("" while the deadline is ahead or there is none)."""
        if self.deadline is None:
            return ""
        now = self.clock()
        if not now < self.deadline:
            return f"wall-clock budget spent (deadline passed {now - self.deadline:.1f}s ago)"
        return ""

    def cost(self, model: str, usage: Any) -> tuple[int, float]:
        """(tokens, dollars) of one Messages API response's ``usage``."""
        rate = price_for(model, self.prices)
        parts = {k: _usage_get(usage, f) for k, f in (("input", "input_tokens"), ("output", "output_tokens"),
                                                      ("cache_write", "cache_creation_input_tokens"),
                                                      ("cache_read", "cache_read_input_tokens"))}
        dollars = sum(parts[k] * rate[k] for k in parts) / 1e6
        return sum(parts.values()), dollars

    def charge(self, model: str, usage: Any) -> None:
        tokens, dollars = self.cost(model, usage)
        self.tokens_used += tokens
        self.dollars_used += dollars
        self.calls += 1
        self.last_input_tokens = sum(_usage_get(usage, f) for f in
                                     ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))

    def exhausted(self) -> str:
        """Why the budget is spent ("" while some is left): tokens, dollars or time."""
        late = self.out_of_time()
        if late:
            return late
        # Written as "not under the cap" so that a NaN anywhere reads as spent, never as budget left.
        if not self.tokens_used < self.max_tokens:
            return f"token budget spent ({self.tokens_used:,} of {self.max_tokens:,} tokens)"
        if not self.dollars_used < self.max_dollars:
            return f"dollar budget spent (${self.dollars_used:.4f} of ${self.max_dollars:.2f})"
        return ""

    def refuse_next(self, model: str, max_output_tokens: int) -> str:
        """Why the next call must not be made: spent, or its worst case (the last prompt grown by a quarter
        plus a full ``max_output_tokens`` answer) would overrun. "" when the call may go ahead."""
        spent = self.exhausted()
        if spent:
            return spent
        rate = price_for(model, self.prices)
        prompt = int(self.last_input_tokens * 1.25) + 2000
        worst_tokens = prompt + max_output_tokens
        worst_dollars = (prompt * rate["input"] + max_output_tokens * rate["output"]) / 1e6
        if not self.tokens_used + worst_tokens <= self.max_tokens:
            return (f"token budget nearly spent ({self.tokens_used:,} of {self.max_tokens:,}; the next call may "
                    f"need {worst_tokens:,})")
        if not self.dollars_used + worst_dollars <= self.max_dollars:
            return (f"dollar budget nearly spent (${self.dollars_used:.4f} of ${self.max_dollars:.2f}; the next "
                    f"call may cost ${worst_dollars:.4f})")
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "max_dollars": self.max_dollars, "tokens_used": self.tokens_used,
                "dollars_used": round(self.dollars_used, 6), "calls": self.calls}
