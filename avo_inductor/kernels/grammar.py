"""Kernel-source grammar: the first gate for every kernel source (bundles, the store, search candidates).

A kernel module is accepted only if the grammar below derives it; everything else is refused:
  module  := docstring | IMPORT | CONST | JITDEF            (nothing else runs at import)
  IMPORT  := exactly the forms in IMPORT_FORMS (triton, triton.language as tl, math, Gluon's modules)
  CONST   := UPPER_NAME = cexpr;  cexpr := int/float/bool literal | earlier CONST | math.<constant>
             | tl.constexpr(cexpr) | gl.constexpr(cexpr) | arithmetic of cexprs (evaluated here, bounded)
  JITDEF  := @triton.jit / @gluon.jit def name(plain params [: tl.constexpr | gl.constexpr] [= literal]): BODY
  BODY    := assign, augassign, constexpr annassign, if, for over range / tl.range / tl.static_range /
             gl.static_range, while, return, pass, break, continue, assert, call statements, docstrings
  expr    := params, locals, module constants and jit functions, literals, arithmetic, comparisons, boolean
             ops, ternaries, subscripts, tuples/lists, calls of listed callables, the listed namespace
             attributes (NAMESPACES) and the listed value attributes (VALUE_ATTRIBUTES)
Why a positive list and not banned names: what Python can reach from an allowed object is unbounded (triton's
own submodules re-export os, sys and builtins; decorators, defaults and annotations run at import; under the
interpreter a kernel body is host Python), so a list of bad names is always one name short. Here a new trick
has to be derivable from the grammar, which can only name Triton's device API. Nothing is executed: the text is
size-, line- and encoding-checked, parsed and its depth measured iteratively first (grammar_text.py: any parser
failure is a refusal); the names themselves are data in grammar_vocab.py.
"""
from __future__ import annotations

import ast
import math

from .grammar_text import MAX_SOURCE_BYTES, Violation, parse_checked
from .grammar_vocab import (
    BUILTIN_CALLS,
    CONST_NAME,
    CONSTEXPR_ANNOTATIONS,
    DECORATORS,
    DIRECT_CALLS,
    FLOAT_STRINGS,
    IMPORT_FORMS,
    LOOP_ITERATORS,
    MAX_STRING_CHARS,
    NAMESPACES,
    RESERVED,
    VALUE_ATTRIBUTES,
)

__all__ = ["MAX_SOURCE_BYTES", "Violation", "assert_allowed", "check_source"]

_MAX_CONST_INT = 2 ** 64  # module-level constant arithmetic (evaluated by the import) stays below this
_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift,
            ast.BitAnd, ast.BitOr, ast.BitXor)
_UNARY_OPS = (ast.UAdd, ast.USub, ast.Not, ast.Invert)
_CMP_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot)
_MAX_LITERAL_EXPONENT = 64  # `x ** n` and `x << n` with a literal n: no huge host integers at compile time

Number = int | float  # bool included


class _Refused(Exception):
    """Raised inside the checker to stop at the first problem of a statement."""

    def __init__(self, node: ast.AST | None, message: str) -> None:
        super().__init__(message)
        self.line = getattr(node, "lineno", 0) if node is not None else 0
        self.message = message


def _dotted(node: ast.expr) -> tuple[str, ...] | None:
    """``a.b.c`` -> ("a", "b", "c"); None when the chain does not start at a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return tuple(reversed(parts))


def _is_dunder(name: str) -> bool:
    return name.startswith("__")


class _Module:
    """The module-level names a function body may use, collected before bodies are checked."""

    def __init__(self) -> None:
        self.imports: set[str] = set()
        self.constants: dict[str, Number] = {}
        self.functions: set[str] = set()

    @property
    def names(self) -> set[str]:
        return set(self.constants) | self.functions


class _Function:
    """One jit function's scope: its parameters and every name its body assigns."""

    def __init__(self, module: _Module, params: set[str], assigned: set[str]) -> None:
        self.module = module
        self.values = params | assigned | module.names


def _bind_check(node: ast.AST, name: str, module: _Module, what: str) -> None:
    """A name a module, function or statement binds: never dunder, never a reserved or module-level name."""
    if _is_dunder(name):
        raise _Refused(node, f"{what} {name!r}: dunder names are not allowed")
    if name in RESERVED:
        raise _Refused(node, f"{what} {name!r} would shadow the module or builtin of that name")
    if name in module.names:
        raise _Refused(node, f"{what} {name!r} would shadow the module-level name of that name")


# ---- module-level constants: evaluated here, with bounds, as the import will -------------------------------

def _const_value(node: ast.expr, module: _Module) -> Number:
    if isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
        return _bounded(node, node.value)
    if isinstance(node, ast.Name) and node.id in module.constants:
        return module.constants[node.id]
    path = _dotted(node) if isinstance(node, ast.Attribute) else None
    if path is not None and len(path) == 2 and path[0] == "math" and path[1] in ("pi", "e", "tau", "inf"):
        return float(getattr(math, path[1]))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _dotted(node.func) in (
            ("tl", "constexpr"), ("gl", "constexpr")):
        if len(node.args) != 1 or node.keywords:
            raise _Refused(node, "constexpr(...) takes exactly one constant argument")
        return _const_value(node.args[0], module)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY_OPS):
        value = _const_value(node.operand, module)
        if isinstance(node.op, ast.Invert) and not isinstance(value, int):
            raise _Refused(node, "~ of a non-integer constant")
        ops = {ast.UAdd: lambda v: +v, ast.USub: lambda v: -v, ast.Not: lambda v: not v, ast.Invert: lambda v: ~v}
        return _bounded(node, ops[type(node.op)](value))
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BIN_OPS):
        left, right = _const_value(node.left, module), _const_value(node.right, module)
        if isinstance(node.op, (ast.Pow, ast.LShift, ast.RShift)) and not (
                isinstance(right, int) and 0 <= right <= _MAX_LITERAL_EXPONENT):
            raise _Refused(node, f"exponent / shift {right!r} outside [0, {_MAX_LITERAL_EXPONENT}]")
        try:
            value = _BINARY[type(node.op)](left, right)
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise _Refused(node, f"constant arithmetic fails: {type(exc).__name__}: {exc}") from None
        return _bounded(node, value)
    raise _Refused(node, "module-level constants must be literals, earlier constants, tl.constexpr(constant) "
                         f"or arithmetic of those, not {type(node).__name__}")


_BINARY = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b, ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
    ast.BitAnd: lambda a, b: a & b, ast.BitOr: lambda a, b: a | b, ast.BitXor: lambda a, b: a ^ b,
}


def _bounded(node: ast.AST, value: object) -> Number:
    if isinstance(value, (bool, float)):
        return value
    if isinstance(value, int) and abs(value) < _MAX_CONST_INT:
        return value
    raise _Refused(node, f"constant {str(value)[:40]!r} outside the allowed range (|int| < 2**64, real numbers)")


# ---- function bodies ------------------------------------------------------------------------------------

def _check_namespace_path(node: ast.expr, path: tuple[str, ...]) -> bool:
    """True when ``path`` (root is a namespace alias) names a listed attribute through listed prefixes only."""
    for cut in range(1, len(path)):
        if path[:cut] not in NAMESPACES:
            return False
    return path[-1] in NAMESPACES.get(path[:-1], frozenset())


def _attribute(node: ast.Attribute, scope: _Function) -> None:
    if _is_dunder(node.attr):
        raise _Refused(node, f"attribute {node.attr!r}: dunder attributes are not allowed")
    path = _dotted(node)
    if path is not None and (path[0],) in NAMESPACES and _check_namespace_path(node, path):
        return
    if node.attr not in VALUE_ATTRIBUTES:
        shown = ".".join(path) if path is not None else f"<{type(node.value).__name__}>.{node.attr}"
        raise _Refused(node, f"attribute {node.attr!r} not allowed ({shown!r} is not in the kernel grammar)")
    if isinstance(node.value, (ast.Constant, ast.List, ast.Tuple)):
        raise _Refused(node, f"attribute {node.attr!r} of a literal")
    _expr(node.value, scope)


def _call(node: ast.Call, scope: _Function) -> None:
    func = node.func
    if isinstance(func, ast.Name):
        if func.id not in scope.module.functions and func.id not in BUILTIN_CALLS and func.id not in DIRECT_CALLS:
            raise _Refused(node, f"name {func.id!r} not allowed as a callee (only module jit functions, "
                                 f"{sorted(BUILTIN_CALLS)}, the listed tl/gl functions and value methods)")
        if func.id in DIRECT_CALLS and func.id not in scope.module.imports:
            raise _Refused(node, f"{func.id!r} is called but not imported")
    elif isinstance(func, ast.Attribute):
        _attribute(func, scope)
    else:
        raise _Refused(node, f"call of a {type(func).__name__} (only named functions may be called)")
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise _Refused(arg, "starred arguments are not allowed")
        _expr(arg, scope, call_argument=True)
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _Refused(keyword.value, "**keyword unpacking is not allowed")
        if _is_dunder(keyword.arg):
            raise _Refused(keyword.value, f"keyword {keyword.arg!r}: dunder names are not allowed")
        _expr(keyword.value, scope, call_argument=True)
    if isinstance(func, ast.Name) and func.id in BUILTIN_CALLS and node.keywords:
        raise _Refused(node, f"{func.id}(...) takes no keyword arguments here")
    if isinstance(func, ast.Name) and func.id == "float":
        if len(node.args) != 1 or node.keywords:
            raise _Refused(node, "float(...) takes exactly one argument")
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.strip() not in FLOAT_STRINGS:
            raise _Refused(node, f"float({arg.value[:40]!r}): only float('inf'), float('-inf'), float('nan')")


def _literal_exponent_ok(node: ast.BinOp) -> bool:
    right = node.right
    if isinstance(right, ast.Constant) and isinstance(right.value, (int, float)):
        return 0 <= right.value <= _MAX_LITERAL_EXPONENT
    return True


def _expr(node: ast.expr, scope: _Function, call_argument: bool = False) -> None:
    """Accept ``node`` or raise _Refused; ``call_argument``: a string literal may stand here."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or type(value) in (bool, int, float):
            return
        if isinstance(value, str) and call_argument and len(value) <= MAX_STRING_CHARS:
            return
        kind = "string literal outside a call argument" if isinstance(value, str) else type(value).__name__
        raise _Refused(node, f"literal {str(value)[:40]!r} not allowed ({kind})")
    if isinstance(node, ast.Name):
        if node.id in scope.values:
            return
        if node.id in RESERVED:
            raise _Refused(node, f"{node.id!r} may only be used as a listed attribute path or a direct call")
        raise _Refused(node, f"name {node.id!r} not allowed (not a parameter, local, module constant or jit "
                             "function)")
    if isinstance(node, ast.Attribute):
        _attribute(node, scope)
    elif isinstance(node, ast.Call):
        _call(node, scope)
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BIN_OPS):
            raise _Refused(node, f"operator {type(node.op).__name__} not allowed")
        if isinstance(node.op, (ast.Pow, ast.LShift)) and not _literal_exponent_ok(node):
            raise _Refused(node, f"literal exponent / shift outside [0, {_MAX_LITERAL_EXPONENT}]")
        _expr(node.left, scope)
        _expr(node.right, scope)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, _UNARY_OPS):
            raise _Refused(node, f"operator {type(node.op).__name__} not allowed")
        _expr(node.operand, scope)
    elif isinstance(node, ast.BoolOp):
        for operand in node.values:
            _expr(operand, scope)
    elif isinstance(node, ast.Compare):
        bad = [type(op).__name__ for op in node.ops if not isinstance(op, _CMP_OPS)]
        if bad:
            raise _Refused(node, f"comparison {bad[0]} not allowed")
        for operand in (node.left, *node.comparators):
            _expr(operand, scope)
    elif isinstance(node, ast.IfExp):
        for operand in (node.test, node.body, node.orelse):
            _expr(operand, scope)
    elif isinstance(node, ast.Subscript):
        if isinstance(node.value, ast.Name) and node.value.id in scope.module.functions:
            raise _Refused(node, f"{node.value.id}[...]: kernels are launched by the launcher, not by kernels")
        _expr(node.value, scope)
        _index(node.slice, scope)
    elif isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            if isinstance(element, ast.Starred):
                raise _Refused(element, "starred elements are not allowed")
            _expr(element, scope)
    else:
        raise _Refused(node, f"{type(node).__name__} expressions are not allowed in kernel source")


def _index(node: ast.expr, scope: _Function) -> None:
    if isinstance(node, ast.Slice):
        for part in (node.lower, node.upper, node.step):
            if part is not None:
                _expr(part, scope)
    elif isinstance(node, ast.Tuple):
        for element in node.elts:
            _index(element, scope)
    else:
        _expr(node, scope)


def _targets(node: ast.expr) -> list[ast.Name]:
    """Names an assignment or loop target binds: a name or a (nested) tuple/list of names, nothing else."""
    if isinstance(node, ast.Name):
        return [node]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [name for element in node.elts for name in _targets(element)]
    raise _Refused(node, f"assignment target {type(node).__name__} not allowed (names and tuples of names only)")


def _is_path(node: ast.expr | None, allowed: frozenset[str]) -> bool:
    path = _dotted(node) if isinstance(node, (ast.Attribute, ast.Name)) else None
    return path is not None and ".".join(path) in allowed


def _stmt(node: ast.stmt, scope: _Function) -> None:
    if isinstance(node, ast.Expr):
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring or an inert string statement
        if not isinstance(node.value, ast.Call):
            _expr(node.value, scope)  # names the inner problem first, if there is one
            raise _Refused(node, "expression statements must be calls")
        _call(node.value, scope)
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            _targets(target)
        _expr(node.value, scope)
    elif isinstance(node, ast.AugAssign):
        if not isinstance(node.target, ast.Name) or not isinstance(node.op, _BIN_OPS):
            raise _Refused(node, "augmented assignment must be NAME op= expression")
        _expr(node.value, scope)
    elif isinstance(node, ast.AnnAssign):
        if not isinstance(node.target, ast.Name) or node.value is None or not _is_path(
                node.annotation, CONSTEXPR_ANNOTATIONS):
            raise _Refused(node, "annotated assignment must be NAME: tl.constexpr = expression")
        _expr(node.value, scope)
    elif isinstance(node, (ast.If, ast.While)):
        if isinstance(node, ast.While) and node.orelse:
            raise _Refused(node, "while/else is not allowed")
        _expr(node.test, scope)
        _block(node.body + node.orelse, scope)
    elif isinstance(node, ast.For):
        if node.orelse or not isinstance(node.iter, ast.Call) or not _is_path(node.iter.func, LOOP_ITERATORS):
            raise _Refused(node, f"for loops must iterate over one of {sorted(LOOP_ITERATORS)} (no else)")
        _targets(node.target)
        _call(node.iter, scope)
        _block(node.body, scope)
    elif isinstance(node, ast.Return):
        if node.value is not None:
            _expr(node.value, scope)
    elif isinstance(node, ast.Assert):
        _expr(node.test, scope)
        if node.msg is not None and not (isinstance(node.msg, ast.Constant) and isinstance(node.msg.value, str)):
            raise _Refused(node, "assert messages must be string literals")
    elif not isinstance(node, (ast.Pass, ast.Break, ast.Continue)):
        raise _Refused(node, f"{type(node).__name__} statements are not allowed in kernel functions")


def _block(body: list[ast.stmt], scope: _Function) -> None:
    for stmt in body:
        _stmt(stmt, scope)


def _assigned_names(fn: ast.FunctionDef) -> list[ast.Name]:
    """Every name the body binds (Python makes them local to the whole function)."""
    names: list[ast.Name] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.append(node)
    return names


def _signature(fn: ast.FunctionDef, module: _Module) -> set[str]:
    """Plain parameters with constexpr annotations and literal defaults; returns the parameter names."""
    args = fn.args
    if args.posonlyargs or args.vararg or args.kwonlyargs or args.kwarg:
        raise _Refused(fn, f"function {fn.name!r}: only plain parameters (no /, *args, keyword-only, **kwargs)")
    if fn.returns is not None or getattr(fn, "type_params", None) or fn.type_comment:
        raise _Refused(fn, f"function {fn.name!r}: no return annotation, type parameters or type comments")
    params: set[str] = set()
    for arg in args.args:
        _bind_check(arg, arg.arg, module, "parameter")
        if arg.annotation is not None and not _is_path(arg.annotation, CONSTEXPR_ANNOTATIONS):
            raise _Refused(arg, f"parameter {arg.arg!r}: the only annotations are {sorted(CONSTEXPR_ANNOTATIONS)}")
        if arg.type_comment:
            raise _Refused(arg, f"parameter {arg.arg!r}: no type comments")
        params.add(arg.arg)
    for default in args.defaults:
        value = default.operand if isinstance(default, ast.UnaryOp) and isinstance(
            default.op, ast.USub) else default
        ok = isinstance(value, ast.Constant) and (
            value.value is None or type(value.value) in (bool, int, float)
            or (isinstance(value.value, str) and len(value.value) <= MAX_STRING_CHARS and value is default))
        if not ok:
            raise _Refused(default, f"function {fn.name!r}: default values must be literals")
    return params


def _function(fn: ast.FunctionDef, module: _Module) -> None:
    params = _signature(fn, module)
    assigned: set[str] = set()
    for name in _assigned_names(fn):
        if name.id not in params:
            _bind_check(name, name.id, module, "local")
        assigned.add(name.id)
    _block(fn.body, _Function(module, params, assigned))


# ---- module level ---------------------------------------------------------------------------------------

def _import(node: ast.Import | ast.ImportFrom, module: _Module) -> None:
    for alias in node.names:
        if isinstance(node, ast.Import):
            key: tuple[str, str, str | None] = ("import", alias.name, alias.asname)
            shown = f"import of {alias.name!r}" + (f" as {alias.asname!r}" if alias.asname else "")
        else:
            key = (f"from {node.module}", alias.name, alias.asname)
            shown = f"import of {alias.name!r} from {node.module!r}" + (f" as {alias.asname!r}" if alias.asname else "")
            if node.level:
                raise _Refused(node, f"relative import from {node.module!r} not allowed")
        if key not in IMPORT_FORMS:
            hint = " (only gluon may be imported from triton.experimental)" if key[0] == "from triton.experimental" \
                else ""
            raise _Refused(node, f"{shown} not allowed{hint}")
        module.imports.add(IMPORT_FORMS[key])


def _decorator_ok(fn: ast.FunctionDef) -> bool:
    return len(fn.decorator_list) == 1 and _is_path(fn.decorator_list[0], DECORATORS)


def _collect(tree: ast.Module, module: _Module, problems: list[Violation]) -> list[ast.FunctionDef]:
    """First pass over the top level: imports, constants (evaluated), jit function names. Returns the functions."""
    functions: list[ast.FunctionDef] = []
    for stmt in tree.body:
        try:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(
                    stmt.value.value, str):
                continue  # docstring
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                _import(stmt, module)
            elif isinstance(stmt, ast.Assign):
                if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name) or not CONST_NAME.match(
                        stmt.targets[0].id):
                    raise _Refused(stmt, "module-level assignments must be one UPPER_CASE constant name")
                name = stmt.targets[0].id
                _bind_check(stmt, name, module, "constant")
                module.constants[name] = _const_value(stmt.value, module)
            elif isinstance(stmt, ast.FunctionDef):
                if not _decorator_ok(stmt):
                    raise _Refused(stmt, f"function {stmt.name!r} must be decorated with exactly "
                                         f"@triton.jit or @gluon.jit (no arguments)")
                _bind_check(stmt, stmt.name, module, "function")
                module.functions.add(stmt.name)
                functions.append(stmt)
            else:
                raise _Refused(stmt, f"top-level {type(stmt).__name__} not allowed (only a docstring, imports, "
                                     "UPPER_CASE constants and jit functions)")
        except _Refused as exc:
            problems.append(Violation(exc.line, exc.message))
    return functions


def check_source(source: str, required_functions: tuple[str, ...] = ()) -> list[Violation]:
    """Every reason ``source`` is not a kernel module of the grammar (empty list = accepted). Never executes it.

    ``required_functions`` must be top-level jit functions (the launcher's entry points).
    """
    tree = parse_checked(source)
    if isinstance(tree, list):
        return tree
    module = _Module()
    problems: list[Violation] = []
    try:
        functions = _collect(tree, module, problems)
        for fn in functions:
            try:
                _function(fn, module)
            except _Refused as exc:
                problems.append(Violation(exc.line, exc.message))
    except (RecursionError, MemoryError) as exc:  # unreachable below MAX_AST_DEPTH; a refusal all the same
        return [Violation(0, f"source cannot be checked safely: {type(exc).__name__}")]
    for name in required_functions:
        if name not in module.functions:
            problems.append(Violation(0, f"entry point {name!r} is not a top-level @triton.jit function"))
    return problems


def assert_allowed(source: str, required_functions: tuple[str, ...] = ()) -> None:
    """Raise ValueError listing the violations (at most 10), if any."""
    problems = check_source(source, required_functions)
    if problems:
        listed = "; ".join(str(p) for p in problems[:10])
        raise ValueError(f"kernel source rejected by the kernel grammar (static allowlist), "
                         f"{len(problems)} problem(s): {listed}")
