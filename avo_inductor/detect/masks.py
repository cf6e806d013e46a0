"""Mask terms of an attention site and what they mean: causal, sliding window, or a tensor the kernel must read.

A mask that depends only on shapes, constants and module buffers (``triu(ones(N, N))``, ``arange`` comparisons,
HF's ``where(kv_idx <= q_idx, 0, finfo.min)``, nanoGPT's ``tril`` buffer sliced ``[:T, :T]``) is evaluated at
compile time and compared with the causal / sliding-window patterns; a mask fed by user data (padding) stays a
tensor. Policy (documented for ``explain()``):
- Module buffers are read at compile time, like constants: mutating a causal buffer after compiling is not seen
  (Dynamo guards on a buffer's shape/dtype, not its values). Call ``torch._dynamo.reset()`` and recompile after
  changing one. A runtime guard was weighed and left out: ``_version`` also moves on ``load_state_dict`` of equal
  values (false alarms), and comparing contents per call would cost an N x N read per layer.
- Under dynamic shapes the mask is evaluated at the traced sizes and again at larger sizes; the pattern must hold
  at both points, otherwise the mask is kept as a tensor (always correct, just not the causal kernel).
"""
from __future__ import annotations

import enum
import math
import operator
from dataclasses import dataclass
from typing import Any

import sympy
import torch
from torch import fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .fx_utils import env_hints, example, is_inplace, is_symbolic, tensor_meta

# Largest intermediate evaluated at compile time. 16M elements kept a causal triu mask at N=8192 a tensor mask, and
# SDPA then ran the dense-mask path: the Llama-style model took 13.8 ms vs 9.1 ms with is_causal (H200, B1 N8192).
# 1 GiB covers a bool mask up to 32k x 32k and a float32 one up to 16k x 16k, a one-off cost per compile.
MAX_EVAL_BYTES = 1 << 30
NEG_THRESHOLD = -1e4  # fill values at or below this mask a key (-inf, finfo.min, -1e9, -10000.0 all do)
# An additive fill at or below this swamps every score it is added to (s + fill == fill in float32 for |s| < 3e22),
# so a row whose every key carries it is a uniform softmax in eager. fp16's finfo.min (-65504) swamps fp16 scores
# below 16 in magnitude: see swamps_scores.
SWAMPING_FILL = -1e30
PERTURB = 5  # second evaluation point: every size symbol + 5


class TermKind(str, enum.Enum):
    """How a mask tensor enters the scores: KEEP (bool, True attends), DROP (bool, True is masked), BIAS (added)."""

    KEEP = "keep"
    DROP = "drop"
    BIAS = "bias"


@dataclass(frozen=True)
class MaskTerm:
    """One tensor combined into the scores. ``factor`` scales a BIAS term by the scales applied after it.

    ``heads``: the term was added to (B*H, Nq, Nk) scores that are later viewed as (B, H, Nq, Nk) (BLOOM's
    baddbmm input); :func:`in_site_frame` brings its values to the 4-D frame, the rewrite does the same in-graph.
    ``fill``: for KEEP / DROP terms, the score a masked key gets (-inf, or a finite value such as finfo.min, which
    gives a row whose every key is masked eager's uniform softmax: the mean of v; see ``empty_rows.py``).
    """

    node: fx.Node
    kind: TermKind
    factor: float = 1.0
    heads: int | None = None
    fill: float = float("-inf")
    sum_dtype: torch.dtype | None = None  # BIAS: the dtype of the add that brings it to the scores, when known


def in_site_frame(value: torch.Tensor, heads: int | None) -> torch.Tensor:
    """A term's value as it broadcasts against (B, H, Nq, Nk) scores: a merged-frame (B*H, X, Y) term becomes
    (B, H, X, Y); a leading dim of 1 (or a rank below 3) broadcasts over batch and heads as it is."""
    if heads is None or value.dim() < 3 or value.shape[-3] == 1:
        return value
    if value.dim() != 3 or value.shape[0] % heads:
        raise ValueError(f"merged-frame term of shape {tuple(value.shape)} does not split into {heads} heads")
    return value.reshape(value.shape[0] // heads, heads, *value.shape[1:])


class Pattern(str, enum.Enum):
    ALL = "all"  # attends everywhere: the term is a no-op
    CAUSAL = "causal"
    WINDOW = "window"
    GENERIC = "generic"


class NotConstant(Exception):
    """The node depends on user data (or randomness) and cannot be evaluated at compile time."""


_RANDOM = {"dropout", "rand", "randn", "randint", "bernoulli", "normal", "uniform_", "rand_like", "randn_like"}


def _is_buffer_placeholder(node: fx.Node) -> bool:
    graph_arg = node.meta.get("grapharg")
    if graph_arg is None:
        return False
    try:
        name = graph_arg.source.name
    except Exception:  # sources without a name are never buffers
        return False
    return "_buffers[" in name


class Evaluator:
    """Evaluates shape-only FX subgraphs on real tensors with every size symbol bound to a chosen value."""

    def __init__(self, gm: fx.GraphModule, assign: dict[sympy.Symbol, Any]) -> None:
        self.gm = gm
        self.assign = assign
        self.memo: dict[fx.Node, Any] = {}

    def sym(self, value: Any) -> Any:
        expr = value.node.expr.xreplace(self.assign)
        if expr.free_symbols:
            raise NotConstant(f"unbound symbols {expr.free_symbols}")
        if isinstance(value, torch.SymInt):
            return int(expr)
        if isinstance(value, torch.SymFloat):
            return float(expr)
        return bool(expr)

    def __call__(self, node: Any) -> Any:
        if not isinstance(node, fx.Node):
            return fx.node.map_aggregate(node, lambda a: self(a) if isinstance(a, fx.Node) else a)
        if node in self.memo:
            return self.memo[node]
        value = self._eval(node)
        self.memo[node] = value
        return value

    def _eval(self, node: fx.Node) -> Any:
        ev = example(node)
        if is_symbolic(ev):
            return self.sym(ev)
        if isinstance(ev, (int, float, bool)):
            return ev
        if isinstance(ev, (tuple, torch.Size)) and all(isinstance(x, (int, torch.SymInt)) for x in ev):
            return torch.Size([self.sym(x) if is_symbolic(x) else x for x in ev])
        if node.op == "placeholder":
            if _is_buffer_placeholder(node):
                return node.meta["grapharg"].example
            raise NotConstant(f"{node.name} is a graph input")
        if node.op == "get_attr":
            value: Any = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        if node.op not in ("call_function", "call_method") or is_inplace(node):
            raise NotConstant(f"{node.name}: {node.op} {node.target}")
        name = getattr(node.target, "__name__", str(node.target))
        if name in _RANDOM:
            raise NotConstant(f"{node.name} is random")
        args = self(node.args)
        kwargs = self(dict(node.kwargs))
        target = node.target
        if isinstance(target, str):  # call_method: FX requires a str target there and a callable for call_function
            result = getattr(args[0], target)(*args[1:], **kwargs)
        else:
            result = target(*args, **kwargs)
        if isinstance(result, torch.Tensor) and result.numel() * result.element_size() > MAX_EVAL_BYTES:
            nbytes = result.numel() * result.element_size()
            raise NotConstant(f"{node.name} has {result.numel()} elements ({nbytes} bytes)")
        return result


def is_shape_only(node: fx.Node) -> bool:
    """True when ``node`` depends only on sizes, constants and module buffers (cheap check before evaluating)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        ev = example(n)
        if is_symbolic(ev) or isinstance(ev, (int, float, bool, torch.Size)):
            continue  # a size: evaluated from its symbolic expression, its producers do not matter
        if n.op == "placeholder":
            if not _is_buffer_placeholder(n):
                return False
            continue
        if n.op == "get_attr":
            continue
        if is_inplace(n) or getattr(n.target, "__name__", str(n.target)) in _RANDOM:
            return False
        stack.extend(n.all_input_nodes)
    return True


def _hints(values: list[Any]) -> dict[sympy.Symbol, Any]:
    for v in values:
        if is_symbolic(v):
            return env_hints(v.node.shape_env)
        if isinstance(v, torch.Tensor):
            env = getattr(getattr(v, "fake_mode", None), "shape_env", None)
            if env is not None:
                return env_hints(env)
    return {}


def _keep_of(value: torch.Tensor, kind: TermKind) -> torch.Tensor | None:
    """The bool keep-mask a constant term stands for, or None if it is a genuine bias (not just 0 / -inf)."""
    if kind is TermKind.KEEP:
        return value.bool()
    if kind is TermKind.DROP:
        return ~value.bool()
    value = value.double()
    masked = value <= NEG_THRESHOLD
    if not torch.all((value == 0) | masked):
        return None
    return ~masked


def pattern_2d(keep: torch.Tensor, q_len: int, kv_len: int) -> tuple[Pattern, int | None]:
    """Classify a keep-mask broadcast over leading dims against bottom-right aligned causal / window masks."""
    if keep.dim() < 2:
        keep = keep.reshape((1,) * (2 - keep.dim()) + tuple(keep.shape))
    try:
        keep = torch.broadcast_to(keep, (*keep.shape[:-2], q_len, kv_len))
    except RuntimeError:
        return Pattern.GENERIC, None
    flat = keep.reshape(-1, q_len, kv_len)
    if not torch.equal(flat, flat[:1].expand_as(flat)):
        return Pattern.GENERIC, None
    keep2 = flat[0]
    if bool(keep2.all()):
        return Pattern.ALL, None
    i = torch.arange(q_len, device=keep2.device).unsqueeze(1)
    j = torch.arange(kv_len, device=keep2.device).unsqueeze(0)
    offset = kv_len - q_len
    causal = j <= i + offset
    if torch.equal(keep2, causal):
        return Pattern.CAUSAL, None
    window = int(keep2[-1].sum())
    if 0 < window < kv_len and torch.equal(keep2, causal & (j > i + offset - window)):
        return Pattern.WINDOW, window
    return Pattern.GENERIC, None


def evaluation_points(node: fx.Node, q_len: Any, kv_len: Any) -> list[dict[sympy.Symbol, Any]]:
    """Size-symbol assignments a shape-only term is checked at: the traced sizes, and under dynamic shapes the
    same sizes + PERTURB (a pattern must hold at both to be trusted for every size)."""
    assign = _hints([q_len, kv_len, example(node)])
    points = [assign]
    sizes = {s: v for s, v in assign.items() if isinstance(v, sympy.Integer)}
    if any(is_symbolic(x) for x in (q_len, kv_len)) and sizes:
        points.append({**assign, **{s: v + PERTURB for s, v in sizes.items()}})
    return points


def classify_term(gm: fx.GraphModule, term: MaskTerm, q_len: Any, kv_len: Any) -> tuple[Pattern, int | None]:
    """Pattern of one mask term: a shape-only term is evaluated (twice under dynamic shapes), others are GENERIC.

    ``q_len``/``kv_len`` are the scores' last two sizes (ints or SymInts).
    """
    if not is_shape_only(term.node):
        return Pattern.GENERIC, None
    results = set()
    for point in evaluation_points(term.node, q_len, kv_len):
        evaluator = Evaluator(gm, point)
        try:
            with unset_fake_temporarily(), torch.no_grad():
                value = evaluator(term.node)
                nq, nk = (evaluator.sym(x) if is_symbolic(x) else int(x) for x in (q_len, kv_len))
        except NotConstant:
            return Pattern.GENERIC, None
        except Exception:  # a mask we cannot evaluate is kept as a tensor, never an error
            return Pattern.GENERIC, None
        if not isinstance(value, torch.Tensor):
            return Pattern.GENERIC, None
        try:
            value = in_site_frame(value, term.heads)
        except ValueError:
            return Pattern.GENERIC, None
        keep = _keep_of(value.cpu(), term.kind)
        if keep is None:
            return Pattern.GENERIC, None
        results.add(pattern_2d(keep, nq, nk))
    return results.pop() if len(results) == 1 else (Pattern.GENERIC, None)


# Ops that leave a bool mask's values as they are (a broadcast, a device move, a bool cast).
_SAME_VALUES = ("expand", "to", "bool", "contiguous")
_AND = (operator.and_, torch.logical_and, torch.bitwise_and)
_AND_METHODS = ("__and__", "logical_and", "bitwise_and")


def _value_preserving(node: fx.Node) -> fx.Node | None:
    """The input of a bool-preserving op (expand, .to(device / bool), .bool()), else None."""
    if node.op != "call_method" or node.target not in _SAME_VALUES or not node.args:
        return None
    src = node.args[0]
    if not isinstance(src, fx.Node) or getattr(example(src), "dtype", None) != torch.bool:
        return None
    return src if getattr(example(node), "dtype", None) == torch.bool else None


def _and_operands(node: fx.Node) -> list[fx.Node] | None:
    is_and = (node.op == "call_function" and node.target in _AND) or \
        (node.op == "call_method" and node.target in _AND_METHODS)
    if not is_and or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    return [a for a in node.args if isinstance(a, fx.Node)]


def swamps_scores(fill: float, dtype: torch.dtype | None) -> bool:
    """Whether an additive ``fill`` (finite) absorbs the scores it is added to, so that a row whose every key
    carries it is a uniform softmax in eager: at or below SWAMPING_FILL, or at or below half the most negative
    value of the bias dtype (fp16's finfo.min, whose fp16 sum with a score under 16 rounds back to itself)."""
    floor = torch.finfo(dtype).min / 2 if dtype is not None and dtype.is_floating_point else SWAMPING_FILL
    return fill <= max(SWAMPING_FILL, floor)


def keep_source(gm: fx.GraphModule, term: MaskTerm, score_dtype: torch.dtype | None = None
                ) -> tuple[fx.Node, float] | None:
    """The bool keep-mask a term stands for and the fill of its masked keys: a KEEP term itself, or ``c`` of a
    BIAS ``where(c, zero, fill)`` (transformers' eager mask from masking_utils) whose ``zero`` is 0 and ``fill``
    -inf or a value that swamps the scores (:func:`swamps_scores`: finfo.min); each a number, or a small
    shape-only tensor (``torch.zeros(())``, ``torch.tensor(0.0)``, ``torch.full((), -inf)``, a lifted constant)
    whose values are checked by evaluating it. None otherwise: a milder fill (-1e4 added to float32 scores) leaves
    a row whose every key it masks a softmax of the scores themselves in eager, which only the bias reproduces.
    ``score_dtype``: the dtype of the scores the bias is added to (the sum's dtype decides what swamps; the term's
    own ``sum_dtype`` wins where the matcher saw the add). The fill is read as the where stores it (finfo(fp32).min
    in an fp16 where is -inf)."""
    if term.kind is TermKind.KEEP:
        return term.node, term.fill
    node = term.node
    if term.kind is TermKind.BIAS and node.op == "call_function" and node.target is torch.where \
            and len(node.args) == 3 and isinstance(node.args[0], fx.Node):
        cond, zero, fill = node.args
        if isinstance(cond, fx.Node) and getattr(example(cond), "dtype", None) == torch.bool \
                and _constant_all(gm, zero, lambda t: t == 0) \
                and (fills := _constant_values(gm, fill)) is not None and bool((fills <= NEG_THRESHOLD).all()):
            bias_dtype = getattr(example(node), "dtype", None)
            if bias_dtype is not None and bias_dtype.is_floating_point:
                fills = fills.to(bias_dtype).double()  # as stored: a fill the dtype cannot hold is -inf
            highest = float(fills.max())
            if math.isinf(highest):
                return cond, highest
            sum_dtype = term.sum_dtype or (torch.promote_types(bias_dtype, score_dtype) if bias_dtype and score_dtype
                                           else bias_dtype)
            if swamps_scores(highest, sum_dtype):
                return cond, highest
    return None


_SMALL_CONSTANT = 64  # elements: a where() operand standing for one number, broadcast


def _constant_all(gm: fx.GraphModule, value: Any, test: Any) -> bool:
    """Whether ``value`` (see :func:`_constant_values`) passes ``test`` (a tensor -> bool tensor) everywhere."""
    got = _constant_values(gm, value)
    return got is not None and bool(test(got).all())


def _constant_values(gm: fx.GraphModule, value: Any) -> torch.Tensor | None:
    """The float64 values of ``value``: a number, or a shape-only node evaluating to a tensor of 1 to
    _SMALL_CONSTANT elements. None for anything else: nothing else is read as a constant."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float64)
    if not isinstance(value, fx.Node):
        return None
    if _is_zeros(value):
        return torch.zeros((), dtype=torch.float64)
    meta = tensor_meta(value)
    if meta is None or is_symbolic(meta.numel()) or int(meta.numel()) > _SMALL_CONSTANT or not is_shape_only(value):
        return None
    try:
        with unset_fake_temporarily(), torch.no_grad():
            got = torch.as_tensor(Evaluator(gm, {})(value)).detach().cpu().double()
    except Exception:  # not evaluable here: not a constant we can vouch for
        return None
    return got if got.numel() > 0 else None


def _is_zeros(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (torch.zeros, torch.zeros_like)


def masking_fill(gm: fx.GraphModule, term: MaskTerm, score_dtype: torch.dtype | None = None) -> float:
    """The score a mask term gives a masked key: its own ``fill`` for KEEP / DROP, the fill of a BIAS
    ``where(c, 0, fill)`` (:func:`keep_source`), else -inf (a constant bias of other forms is read as -inf)."""
    if term.kind is not TermKind.BIAS:
        return term.fill
    source = keep_source(gm, term, score_dtype)
    return source[1] if source is not None else float("-inf")


def factor_keep_term(gm: fx.GraphModule, term: MaskTerm, q_len: Any, kv_len: Any,
                     score_dtype: torch.dtype | None = None) -> tuple[Pattern, int | None, list[MaskTerm]] | None:
    """Split a keep-mask built as ``a & b & ...`` (transformers' masking_utils: causal, sliding window and padding
    functions and-ed, then expanded) into its shape-only part, classified as one pattern, and the tensor factors
    the kernel must read (padding (B, 1, 1, Nk) gathered from the user's attention_mask), as KEEP terms.

    None when the term is not such a conjunction, has no data-dependent factor, or its shape-only part is not
    causal / window / all (then the term stays a tensor as it is).
    """
    source = keep_source(gm, term, score_dtype)
    if source is None:
        return None
    root, fill = source
    leaves: list[fx.Node] = []
    work = [root]
    while work:
        node = work.pop()
        if len(leaves) > 16:
            return None
        if (src := _value_preserving(node)) is not None:
            work.append(src)
        elif (ops := _and_operands(node)) is not None:
            work.extend(ops)
        else:
            leaves.append(node)
    constant = [leaf for leaf in leaves if is_shape_only(leaf)]
    data = [leaf for leaf in leaves if not is_shape_only(leaf)]
    if not data or len(leaves) < 2:
        return None
    results = set()
    for point in evaluation_points(root, q_len, kv_len):
        evaluator = Evaluator(gm, point)
        try:
            with unset_fake_temporarily(), torch.no_grad():
                keep = torch.ones((), dtype=torch.bool)
                for leaf in constant:
                    keep = keep & torch.as_tensor(evaluator(leaf)).bool().cpu()
                nq, nk = (evaluator.sym(x) if is_symbolic(x) else int(x) for x in (q_len, kv_len))
        except Exception:  # a factor we cannot evaluate: the term stays as it is
            return None
        results.add(pattern_2d(keep, nq, nk))
    if len(results) != 1:
        return None
    pattern, window = results.pop()
    if pattern is Pattern.GENERIC:
        return None
    return pattern, window, [MaskTerm(leaf, TermKind.KEEP, heads=term.heads, fill=fill) for leaf in data]
