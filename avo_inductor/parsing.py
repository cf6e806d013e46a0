"""Defensive parsing of values that cross a trust boundary: env vars, configure(), manifests, records, CLI numbers.

Every function returns a clean value or raises ValueError naming the field and the offending value; none lets
a NaN, an infinity, a bool posing as an int, an out-of-range number or a truthy string ("no", "0") through.
This module is at the bottom of the layer order: it imports nothing of the package and no torch.
"""
from __future__ import annotations

import json
import math
from typing import Any

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
# Integers in records, manifests and settings are sizes, counts, lengths and tile sizes: 2^53 is far above any
# of them and is the largest integer a JSON reader in another language keeps exactly.
MAX_INT = 2**53
MAX_JSON_DEPTH = 32


def strict_bool(name: str, value: Any) -> bool:
    """A bool from a bool, 0/1, or the strings 1/0, true/false, yes/no, on/off (any case); anything else raises.

    ``bool("no")`` is True: settings passed as strings must never be kept as truthy strings.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ValueError(f"{name} must be a boolean (true/false, 1/0, yes/no, on/off); got {value!r}")


def finite_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite float within [minimum, maximum]; NaN, +-inf, bools and unparsable text raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value!r}")
    return number


def bounded_int(name: str, value: Any, *, minimum: int | None = 0, maximum: int = MAX_INT) -> int:
    """An int within [minimum, maximum] from an int or its decimal text; floats (1e999 included), bools raise."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 20:  # longer than any in-range integer: refuse before int() does quadratic work
            raise ValueError(f"{name} must be an integer <= {maximum}; got {value[:24]!r}…")
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer; got {text!r}") from None
    if not isinstance(value, int):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {str(value)[:24]}")
    return value


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, iteratively (a recursive walk would itself hit the recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"non-finite number {token} is not allowed")


def load_json(text: str | bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted text: NaN/Infinity literals, numbers that overflow to infinity (``1e999``),
    nesting deeper than ``max_depth`` and any parser failure (RecursionError, MemoryError included) raise
    ValueError naming ``what``."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_json_float)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"{what} is nested too deeply or too large to parse") from None
    if _depth(data, max_depth) > max_depth:
        raise ValueError(f"{what} is nested deeper than {max_depth} levels")
    return data


def _finite_json_float(token: str) -> float:
    number = float(token)
    if not math.isfinite(number):
        raise ValueError(f"number {token[:24]} overflows a double")
    return number
