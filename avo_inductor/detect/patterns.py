"""The grammar of hand-written attention, written once: every variant is a path through it, not a copy.

    qk      := matmul | bmm | baddbmm (q', k')
    q'      := q (* or / c)*
    k'      := k^T | (k^T or repeat(k)) (* or / c)*
    scores  := qk ( * c | / c | + bias | - bias | masked_fill(m, -inf) | where(m, ., -inf) | cast | split )*
    probs   := softmax(scores, -1 [, dtype]) ( cast | dropout | merge )*
    out     := matmul | bmm (probs, v')
    split   := view(B, H, Nq, Nk) of (B*H, Nq, Nk) scores; merge is its inverse (BLOOM: baddbmm on (B*H, N, D),
               masks and softmax on (B, H, Nq, Nk)); a site with a split needs the merge and q/k/v that are
               (B*H, N, D) views of (B, H, N, D) tensors
    v'      := v | repeat(v)
    repeat  := repeat_interleave | expand+reshape

Inductor's ``fuse_attention.py`` spells these as 18 pattern functions; here each production is one step function
over FX nodes, so scale-on-q vs scale-on-scores, fp32 softmax, dropout and GQA combine freely.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import fx

from .fx_utils import (
    arg, constant_number, hint, input_node, is_last_two_swap, is_op, is_symbolic, shape_of, sym_expr,
)
from .masks import NEG_THRESHOLD, TermKind

SDPA_FNS = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}

MATMUL_FNS = (torch.matmul, operator.matmul, torch.bmm)
MATMUL_METHODS = ("matmul", "bmm", "__matmul__")
SOFTMAX_FNS = (torch.softmax, F.softmax, torch.special.softmax)
CAST_METHODS = ("float", "half", "bfloat16", "double", "to", "type", "type_as", "contiguous")
DROPOUT_FNS = (F.dropout, torch.dropout)
MUL = ((operator.mul, torch.mul), ("mul", "__mul__", "__rmul__"))
DIV = ((operator.truediv, torch.div, torch.true_divide), ("div", "__truediv__", "true_divide"))
ADD = ((operator.add, torch.add), ("add", "__add__", "__radd__"))
SUB = ((operator.sub, torch.sub), ("sub", "__sub__"))
MASKED_FILL = ((torch.masked_fill,), ("masked_fill",))
WHERE = ((torch.where,), ("where",))
REPEAT_INTERLEAVE = ((torch.repeat_interleave,), ("repeat_interleave",))
VIEW_METHODS = ("view", "reshape")


class Unsupported(Exception):
    """Looks like attention but uses a construct the detector does not understand; the message is the reason."""


def is_matmul(node: object) -> TypeGuard[fx.Node]:
    return is_op(node, MATMUL_FNS, MATMUL_METHODS)


def is_qk(node: object) -> TypeGuard[fx.Node]:
    return is_matmul(node) or is_op(node, (torch.baddbmm,), ("baddbmm",))


def is_softmax(node: object) -> TypeGuard[fx.Node]:
    return is_op(node, SOFTMAX_FNS, ("softmax",))


def is_sdpa(node: object) -> TypeGuard[fx.Node]:
    return is_op(node, SDPA_FNS)


def sdpa_arguments(node: fx.Node) -> dict[str, object]:
    """SDPA's arguments by name, positional or keyword, defaults filled in."""
    out: dict[str, object] = dict(SDPA_DEFAULTS)
    for i, name in enumerate(SDPA_ARGS):
        out[name] = arg(node, i, name, out.get(name))
    return out


def softmax_dim(node: fx.Node) -> object:
    return arg(node, 1, "dim", None)


def softmax_dtype(node: fx.Node) -> object:
    index = 3 if node.op == "call_function" and node.target is F.softmax else 2
    return arg(node, index, "dtype", None)


@dataclass(frozen=True)
class ScoreStep:
    """One op between the qk matmul and the softmax: ``source`` is its scores-side input."""

    source: fx.Node
    scale: float = 1.0
    # (mask operand as written, how it enters, sign for BIAS); the matcher rejects a mask that is not a graph node
    term: tuple[fx.node.Argument, TermKind, float] | None = None
    # H when this op splits (B*H, Nq, Nk) scores into (B, H, Nq, Nk): terms before it live in the merged frame
    split_heads: int | None = None
    # the score a masked_fill / where term gives a masked key (MaskTerm.fill)
    fill: float = float("-inf")


def _masks_out(value: object) -> bool:
    number = constant_number(value)
    return number is not None and ((math.isinf(number) and number < 0) or number <= NEG_THRESHOLD)


def _fill(value: object) -> float:
    number = constant_number(value)
    assert number is not None  # _masks_out accepted it
    return number


def reaches_qk(node: object, depth: int = 16) -> bool:
    """True when walking back through score ops from ``node`` reaches a qk matmul (picks the scores operand)."""
    if not isinstance(node, fx.Node) or depth == 0:
        return False
    if is_qk(node):
        return True
    if node.op not in ("call_function", "call_method") or is_softmax(node):
        return False
    return any(reaches_qk(n, depth - 1) for n in node.all_input_nodes)


def score_step(node: fx.Node) -> ScoreStep | None:
    """Decode one scores-chain op; None when ``node`` is not a score op (the walk stops there)."""
    args = node.args
    if is_op(node, (), CAST_METHODS):
        src = input_node(node)
        return None if src is None else ScoreStep(src)
    if is_op(node, (torch.reshape,), VIEW_METHODS):
        src = input_node(node)
        heads = None if src is None else split_heads(src, node)
        return None if heads is None or src is None else ScoreStep(src, split_heads=heads)
    if is_op(node, *MUL) or is_op(node, *DIV):
        a, b = args[0], args[1]
        divide = is_op(node, *DIV)
        if divide and arg(node, 2, "rounding_mode") is not None:
            raise Unsupported("scores divided with a rounding mode")
        if isinstance(a, fx.Node) and (c := constant_number(b)) is not None and shape_of(a) is not None:
            return ScoreStep(a, 1.0 / c if divide else c)
        if not divide and isinstance(b, fx.Node) and (c := constant_number(a)) is not None \
                and shape_of(b) is not None:
            return ScoreStep(b, c)
        raise Unsupported(f"scores scaled by a tensor ({node.format_node()})")
    if is_op(node, *ADD) or is_op(node, *SUB):
        if arg(node, 2, "alpha") not in (None, 1):
            raise Unsupported("add/sub with alpha on the scores")
        a, b = args[0], args[1]
        sign = -1.0 if is_op(node, *SUB) else 1.0
        if constant_number(b) is not None and isinstance(a, fx.Node):
            return ScoreStep(a)  # softmax is shift-invariant
        if constant_number(a) is not None and isinstance(b, fx.Node) and sign > 0:
            return ScoreStep(b)
        if isinstance(a, fx.Node) and isinstance(b, fx.Node):
            if reaches_qk(a):
                return ScoreStep(a, term=(b, TermKind.BIAS, sign))
            if reaches_qk(b) and sign > 0:
                return ScoreStep(b, term=(a, TermKind.BIAS, 1.0))
        raise Unsupported(f"unrecognised addition to the scores ({node.format_node()})")
    if is_op(node, *MASKED_FILL):
        value = arg(node, 2, "value")
        if not _masks_out(value):
            raise Unsupported(f"masked_fill with value {value!r} (only -inf or <= {NEG_THRESHOLD:g} masks a key)")
        src = input_node(node)
        return None if src is None else ScoreStep(src, term=(arg(node, 1, "mask"), TermKind.DROP, 1.0),
                                                  fill=_fill(value))
    if is_op(node, *WHERE) and len(args) == 3:
        cond, a, b = args
        if isinstance(a, fx.Node) and reaches_qk(a) and _masks_out(b):
            return ScoreStep(a, term=(cond, TermKind.KEEP, 1.0), fill=_fill(b))
        if isinstance(b, fx.Node) and reaches_qk(b) and _masks_out(a):
            return ScoreStep(b, term=(cond, TermKind.DROP, 1.0), fill=_fill(a))
        raise Unsupported(f"torch.where on the scores with a non-masking value ({node.format_node()})")
    return None


def split_heads(merged: fx.Node, split: fx.Node) -> int | None:
    """H when ``split`` is ``merged`` (B*H, X, Y) viewed as (B, H, X, Y) with X, Y unchanged, else None."""
    m_shape, s_shape = shape_of(merged), shape_of(split)
    if m_shape is None or s_shape is None or len(m_shape) != 3 or len(s_shape) != 4:
        return None
    if sym_expr(m_shape[1]) != sym_expr(s_shape[2]) or sym_expr(m_shape[2]) != sym_expr(s_shape[3]):
        return None
    if hint(s_shape[0]) * hint(s_shape[1]) != hint(m_shape[0]) or is_symbolic(s_shape[1]):
        return None
    return int(s_shape[1])


def merge_step(node: fx.Node) -> tuple[fx.Node, int] | None:
    """(input, H) when ``node`` views (B, H, Nq, Nk) probabilities as (B*H, Nq, Nk) (the inverse of a split)."""
    if not is_op(node, (torch.reshape,), VIEW_METHODS):
        return None
    src = input_node(node)
    heads = None if src is None else split_heads(node, src)
    return None if heads is None or src is None else (src, heads)


def unmerge_heads(node: fx.Node, heads: int) -> fx.Node | None:
    """The (B, H, N, D) tensor that ``node`` (B*H, N, D) is a reshape/view of, or None (a copy or other layout)."""
    if not is_op(node, (torch.reshape,), VIEW_METHODS):
        return None
    src = input_node(node)
    if src is None:
        return None
    return src if split_heads(node, src) == heads else None


def prob_step(node: fx.Node) -> tuple[fx.Node, float] | None:
    """Decode one op between softmax and the PV matmul: (its input, dropout p). None if not a probs op."""
    if is_op(node, (), CAST_METHODS):
        src = input_node(node)
        return None if src is None else (src, 0.0)
    if is_op(node, DROPOUT_FNS, ("dropout",)):
        p = arg(node, 1, "p", 0.5)
        training = arg(node, 2, "training" if node.target is not torch.dropout else "train", True)
        if not isinstance(training, bool) or (p_value := constant_number(p)) is None:
            raise Unsupported(f"dropout with non-constant arguments ({node.format_node()})")
        src = input_node(node)
        return None if src is None else (src, p_value if training else 0.0)
    return None


def peel_scale(node: fx.Node) -> tuple[fx.Node, float]:
    """Strip ``x * c`` / ``x / c`` (constant c) from an operand: (x, product of factors)."""
    factor = 1.0
    while True:
        try:
            step = score_step(node) if is_op(node, *MUL) or is_op(node, *DIV) else None
        except Unsupported:
            step = None
        if step is None:
            return node, factor
        node, factor = step.source, factor * step.scale


def peel_repeat(node: fx.Node) -> tuple[fx.Node, int]:
    """Undo a GQA head repeat on dim 1: ``repeat_interleave(x, n, dim=1)`` or HF ``repeat_kv``.

    repeat_kv is ``x[:, :, None].expand(B, Hkv, n, N, D).reshape(B, Hkv * n, N, D)``; both orders put query head h
    on kv head h // n, which is SDPA's ``enable_gqa`` and the avo kernel's convention. Returns (x, n), n=1 if none.
    """
    shape = shape_of(node)
    if shape is None or len(shape) != 4:
        return node, 1
    if is_op(node, *REPEAT_INTERLEAVE):
        repeats = arg(node, 1, "repeats")
        dim = arg(node, 2, "dim")
        src = input_node(node)
        if isinstance(repeats, int) and dim in (1, -3) and src is not None and shape_of(src) is not None:
            return src, repeats
        return node, 1
    if is_op(node, (torch.reshape,), ("reshape", "view", "flatten")):
        expanded = node.args[0]
        e_shape = shape_of(expanded)
        if not is_op(expanded, (), ("expand",)) or e_shape is None or len(e_shape) != 5:
            return node, 1
        if node.target == "flatten" and tuple(node.args[1:]) not in ((1, 2),):
            return node, 1
        unsq = expanded.args[0]
        src = _unsqueezed_at_2(unsq)
        if src is None:
            return node, 1
        n = hint(e_shape[2])
        s_shape = shape_of(src)
        if s_shape and hint(shape[1]) == hint(s_shape[1]) * n and hint(e_shape[1]) == hint(s_shape[1]):
            return src, int(n)
    return node, 1


def _unsqueezed_at_2(node: object) -> fx.Node | None:
    """x if ``node`` is ``x.unsqueeze(2)`` or ``x[:, :, None]`` of a 4-D x, else None."""
    if is_op(node, (torch.unsqueeze,), ("unsqueeze",)) and arg(node, 1, "dim") in (2, -3):
        return input_node(node)
    if is_op(node, (operator.getitem,)):
        src, index = node.args
        full = slice(None, None, None)
        if isinstance(src, fx.Node) and isinstance(index, tuple) and len(index) >= 3 \
                and index[:3] == (full, full, None) and all(i == full or i is Ellipsis for i in index[3:]):
            return src
    return None


def peel_key(node: fx.Node, gqa: bool = True) -> tuple[fx.Node, bool, float, int]:
    """From the qk matmul's second operand to k: (k node, whether it is k itself (not k^T), scale, GQA repeat)."""
    factor, n_rep, transposed = 1.0, 1, False
    while True:
        node, f = peel_scale(node)
        factor *= f
        if not transposed and is_last_two_swap(node) and (src := input_node(node)) is not None:
            node, transposed = src, True
            continue
        if gqa and n_rep == 1:
            src, n = peel_repeat(node)
            if n > 1:
                node, n_rep = src, n
                continue
        return node, transposed, factor, n_rep
