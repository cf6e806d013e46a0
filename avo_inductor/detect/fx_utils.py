"""Small helpers over the torch-level FX graph Dynamo hands a backend.

Nodes there are ``call_function`` on torch functions / ``operator`` builtins and ``call_method`` on tensors, so
"is this a transpose" has several spellings; these helpers hide that, read ``example_value`` meta (FakeTensors,
possibly with SymInt sizes) and turn Dynamo's ``nn_module_stack`` into a module's qualified path.
"""
from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeGuard

import sympy
import torch
from torch import fx

Target = Callable[..., Any]


def is_op(node: Any, functions: Iterable[Target] = (), methods: Iterable[str] = ()) -> TypeGuard[fx.Node]:
    """True if ``node`` calls one of ``functions`` (call_function) or one of ``methods`` (call_method)."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function":
        return any(node.target is f for f in functions)
    if node.op == "call_method":
        return node.target in tuple(methods)
    return False


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, passed positionally (``index``, counting ``self`` for methods) or by keyword."""
    if name in node.kwargs:
        return node.kwargs[name]
    if index < len(node.args):
        return node.args[index]
    return default


def input_node(node: fx.Node, index: int = 0) -> fx.Node | None:
    """Positional argument ``index`` of a call when it is a graph node (a traced tensor), None for a constant."""
    value = node.args[index]
    return value if isinstance(value, fx.Node) else None


def example(node: Any) -> Any:
    """The traced example value of a node (FakeTensor, SymInt, ...) or the constant itself for non-nodes."""
    if isinstance(node, fx.Node):
        return node.meta.get("example_value", node.meta.get("val"))
    return node


def tensor_meta(node: Any) -> torch.Tensor | None:
    """The node's example value when it is a tensor, else None."""
    value = example(node)
    return value if isinstance(value, torch.Tensor) else None


def require_tensor_meta(node: fx.Node) -> torch.Tensor:
    """``tensor_meta`` of a node the caller relies on being a traced tensor (a matched q/k/v, a mask term).

    Raises ValueError naming the node when it has none (a node built without an example value).
    """
    meta = tensor_meta(node)
    if meta is None:
        raise ValueError(f"node {node.name} has no tensor metadata")
    return meta


def is_symbolic(value: Any) -> bool:
    return isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool))


def hint(value: Any) -> Any:
    """Concrete value of an int/float or of a SymInt/SymFloat (its hint: the value seen when tracing)."""
    if isinstance(value, torch.SymInt):
        return int(value.node.hint) if value.node.hint is not None else int(sympy_hint(value.node.expr, value))
    if isinstance(value, torch.SymFloat):
        return float(value.node.hint) if value.node.hint is not None else float(sympy_hint(value.node.expr, value))
    if isinstance(value, torch.SymBool):
        return bool(value.node.hint)
    return value


def sympy_hint(expr: sympy.Expr, value: Any) -> Any:
    """Evaluate ``expr`` at the shape environment's hints (fallback when a SymNode has no cached hint)."""
    return expr.xreplace(env_hints(value.node.shape_env))


def env_hints(env: Any) -> dict[sympy.Symbol, Any]:
    """Symbol -> traced value (``backed_var_to_val`` on torch >= 2.13, ``var_to_val`` before)."""
    return dict(env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val)


def sym_expr(value: Any) -> Any:
    """A sympy expression for a SymInt (its symbolic form) or the int itself: equal exprs are provably equal."""
    if isinstance(value, torch.SymInt):
        return value.node.expr
    return value


def shape_of(node: Any) -> tuple[Any, ...] | None:
    """Shape of a tensor node's example value (entries may be SymInts), or None if not a tensor."""
    meta = tensor_meta(node)
    return tuple(meta.shape) if meta is not None else None


def constant_number(value: Any) -> float | None:
    """A Python number argument (int/float, not bool), or the hint of a SymFloat/SymInt node; else None.

    SymFloat scales come from float attributes of modules that Dynamo does not specialise under
    ``dynamic=True`` (``self.scaling``); they are read at compile time like any other module constant.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, fx.Node):
        ev = example(value)
        if isinstance(ev, (torch.SymFloat, torch.SymInt)):
            return float(hint(ev))
        if isinstance(ev, (int, float)) and not isinstance(ev, bool):
            return float(ev)
    return None


def normalize_dim(dim: Any, rank: int) -> int | None:
    """A concrete dim index in [0, rank), or None if ``dim`` is not a plain int."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        return None
    return dim + rank if dim < 0 else dim


def is_last_two_swap(node: fx.Node) -> bool:
    """``x.transpose(-2, -1)`` / ``torch.transpose`` / ``permute`` that swaps only the last two dims."""
    src = node.args[0] if node.args else None
    shape = shape_of(src)
    if shape is None:
        return False
    rank = len(shape)
    if is_op(node, (torch.transpose,), ("transpose",)):
        d0 = normalize_dim(arg(node, 1, "dim0"), rank)
        d1 = normalize_dim(arg(node, 2, "dim1"), rank)
        return {d0, d1} == {rank - 2, rank - 1}
    if is_op(node, (torch.permute,), ("permute",)):
        dims = node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        dims = tuple(normalize_dim(d, rank) for d in dims)
        return dims == (*range(rank - 2), rank - 1, rank - 2)
    return False


def single_user(node: fx.Node) -> fx.Node | None:
    """The only user of ``node``, or None when it has zero or several."""
    users = list(node.users)
    return users[0] if len(users) == 1 else None


_ROOT = re.compile(r"^L\[['\"][^'\"]*['\"]\](\[\d+\])?")


def module_path(node: fx.Node) -> str:
    """Qualified path of the innermost module a node was traced in (``"h.0.attn"``), "" for the root.

    Dynamo writes paths like ``L['self'].h[0].attn`` or ``L['s']._modules['blocks']['0']``; the root local is
    dropped and item access is turned into dotted names so paths match ``model.named_modules()``.
    """
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    raw = list(stack.values())[-1][0]
    path = _ROOT.sub("", str(raw))
    path = path.replace("._modules", "").replace("_modules", "")
    path = re.sub(r"\[['\"]?([^'\"\]]+)['\"]?\]", r".\1", path)
    return path.strip(".")


def is_inplace(node: fx.Node) -> bool:
    """In-place tensor methods (``masked_fill_``) and ``operator.i*`` mutate their input: never erase or fold them."""
    if node.op == "call_method" and str(node.target).endswith("_") and not str(node.target).startswith("__"):
        return True
    inplace_ops = (operator.iadd, operator.imul, operator.isub, operator.itruediv)
    return node.op == "call_function" and node.target in inplace_ops


def erase_dead(gm: fx.GraphModule, roots: Sequence[fx.Node]) -> int:
    """Erase nodes of ``roots`` (and their producers, transitively) that no longer have users.

    Only pure call nodes are erased; placeholders, in-place and impure ops are kept, as are nodes used elsewhere
    (a causal mask shared by every layer stays until the last layer's site is rewritten).
    """
    erased = 0
    work = list(roots)
    seen: set[fx.Node] = set()
    while work:
        node = work.pop()
        if node in seen or node.graph is not gm.graph:
            continue
        if node.op not in ("call_function", "call_method", "get_attr") or node.users:
            continue
        if is_inplace(node) or node.is_impure():
            continue
        seen.add(node)
        inputs = list(node.all_input_nodes)
        gm.graph.erase_node(node)
        erased += 1
        work.extend(inputs)
    return erased
