"""Static allowlist for kernel source: the first gate for every kernel from a bundle, the store or the search.

Kernel modules may import only triton, triton.language, math and Gluon's language modules (Hopper's included),
define only ``@triton.jit`` / ``@gluon.jit`` functions and constants, and use no I/O, no torch, no host-side
state. The check is syntactic (AST) and never executes code.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

ALLOWED_IMPORTS = frozenset({"triton", "triton.language", "math", "triton.experimental",
                             "triton.experimental.gluon", "triton.experimental.gluon.language",
                             "triton.experimental.gluon.language.nvidia.hopper"})
ALLOWED_DECORATORS = frozenset({"triton.jit", "jit", "triton.heuristics", "triton.autotune", "gluon.jit"})
BANNED_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "getattr", "setattr",
    "delattr", "input", "print", "breakpoint", "memoryview", "object", "type", "super", "classmethod",
    "staticmethod", "property", "torch", "os", "sys", "subprocess", "socket", "threading", "ctypes",
    "importlib", "builtins", "pickle", "marshal", "shutil", "pathlib", "signal", "time",
})
BANNED_ATTRIBUTES = frozenset({
    "data_ptr", "storage", "untyped_storage", "__dict__", "__class__", "__globals__", "__code__", "__subclasses__",
    "__builtins__", "__getattribute__", "__reduce__", "cuda", "Stream", "Event", "synchronize", "inline_asm_elementwise",
})
MAX_SOURCE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Violation:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def check_source(source: str, required_functions: tuple[str, ...] = ()) -> list[Violation]:
    """Return every allowlist violation in ``source`` (empty list = allowed).

    ``required_functions`` must exist as top-level ``@triton.jit`` functions (e.g. the record's entry points).
    """
    if len(source.encode("utf-8", errors="replace")) > MAX_SOURCE_BYTES:
        return [Violation(0, f"source larger than {MAX_SOURCE_BYTES} bytes")]
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [Violation(exc.lineno or 0, f"syntax error: {exc.msg}")]
    problems: list[Violation] = []
    jit_functions: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.name not in ALLOWED_IMPORTS:
                    problems.append(Violation(stmt.lineno, f"import of {alias.name!r} not allowed"))
        elif isinstance(stmt, ast.ImportFrom):
            if stmt.module not in ALLOWED_IMPORTS or stmt.level:
                problems.append(Violation(stmt.lineno, f"import from {stmt.module!r} not allowed"))
            elif stmt.module == "triton.experimental" and any(a.name != "gluon" for a in stmt.names):
                problems.append(Violation(stmt.lineno, "only gluon may be imported from triton.experimental"))
        elif isinstance(stmt, ast.FunctionDef):
            names = [_decorator_name(d) for d in stmt.decorator_list]
            if not names or any(n not in ALLOWED_DECORATORS for n in names):
                problems.append(Violation(stmt.lineno, f"function {stmt.name!r} must be decorated with @triton.jit only"))
            else:
                jit_functions.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            # module-level constants only: NAME = literal / tl.constexpr(literal) / arithmetic of those
            if not all(isinstance(t, ast.Name) and t.id.isupper() for t in stmt.targets):
                problems.append(Violation(stmt.lineno, "module-level assignments must be UPPER_CASE constants"))
            for sub in ast.walk(stmt.value):
                if isinstance(sub, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp, ast.Lambda)):
                    problems.append(Violation(stmt.lineno, "module-level mutable state or lambdas not allowed"))
                    break
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # docstring
        else:
            problems.append(Violation(getattr(stmt, "lineno", 0), f"top-level {type(stmt).__name__} not allowed"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in BANNED_NAMES:
            problems.append(Violation(node.lineno, f"name {node.id!r} not allowed"))
        elif isinstance(node, ast.Attribute) and (node.attr in BANNED_ATTRIBUTES or node.attr.startswith("__")):
            problems.append(Violation(node.lineno, f"attribute {node.attr!r} not allowed"))
        elif isinstance(node, (ast.Global, ast.Nonlocal, ast.ClassDef, ast.AsyncFunctionDef, ast.Await,
                               ast.Yield, ast.YieldFrom, ast.Try, ast.With, ast.AsyncWith, ast.Delete)):
            problems.append(Violation(getattr(node, "lineno", 0), f"{type(node).__name__} not allowed in kernel source"))
    for name in required_functions:
        if name not in jit_functions:
            problems.append(Violation(0, f"entry point {name!r} is not a top-level @triton.jit function"))
    return problems


def assert_allowed(source: str, required_functions: tuple[str, ...] = ()) -> None:
    """Raise ValueError listing the violations, if any."""
    problems = check_source(source, required_functions)
    if problems:
        listed = "; ".join(str(p) for p in problems[:10])
        raise ValueError(f"kernel source rejected by the static allowlist ({len(problems)} problem(s)): {listed}")
