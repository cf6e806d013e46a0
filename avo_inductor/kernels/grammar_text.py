"""Kernel source as text, before the grammar: size, encoding, control characters and line lengths, a parse that
never raises, and depth and node count measured without recursion. Parser bombs end here as Violations."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

MAX_SOURCE_BYTES = 256 * 1024  # the rendered flash_ws90 module (the largest) is ~80 KB
MAX_LINE_CHARS = 1000  # the templates' longest line is 128
MAX_AST_DEPTH = 64  # the rendered templates reach 17
MAX_AST_NODES = 100_000  # the rendered flash_ws90 module has ~15.5k
# PEP 263: an import decodes the file by this declaration while ast.parse(str) ignores it (utf-7 smuggling).
_CODING_COOKIE = re.compile(r"^[ \t\f]*#.*?coding[:=]", re.MULTILINE)


@dataclass(frozen=True)
class Violation:
    """One reason a source is refused; ``line`` 0 when the whole text is at fault."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def text_problems(source: object) -> list[Violation]:
    """Checks on the raw text, before any parsing: type, size, encoding, control characters, line lengths."""
    if not isinstance(source, str):
        return [Violation(0, f"kernel source must be text, got {type(source).__name__}")]
    try:
        size = len(source.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return [Violation(0, f"source is not valid UTF-8 text (lone surrogate at offset {exc.start})")]
    if size > MAX_SOURCE_BYTES:
        return [Violation(0, f"source is {size} bytes, larger than {MAX_SOURCE_BYTES}")]
    # Only newline, tab and printable text: no NUL, CR, form feed, C1 controls, BOM or Unicode line separators,
    # whose handling differs between ast.parse(str), the import of the file and inspect.getsource.
    bad = re.search(r"[^\n\t\x20-\x7e\xa0-\U0010ffff]|[\ufeff\u2028\u2029]", source)
    if bad:
        line = source.count("\n", 0, bad.start()) + 1
        return [Violation(line, f"control character {bad.group()!r} in source")]
    for number, text in enumerate(source.split("\n")[:2], 1):
        if _CODING_COOKIE.match(text):
            return [Violation(number, "encoding declarations are not allowed (the import would decode differently)")]
    for number, text in enumerate(source.split("\n"), 1):
        if len(text) > MAX_LINE_CHARS:
            return [Violation(number, f"line of {len(text)} characters (at most {MAX_LINE_CHARS})")]
    return []


def parse(source: str) -> ast.Module | Violation:
    """ast.parse, with every parser failure (deep nesting included) turned into a Violation."""
    try:
        return ast.parse(source, mode="exec")
    except SyntaxError as exc:  # IndentationError, "too many nested parentheses", null bytes
        return Violation(exc.lineno or 0, f"syntax error: {exc.msg}")
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return Violation(0, f"source cannot be parsed safely: {type(exc).__name__}: {str(exc)[:200]}")


def shape_problem(tree: ast.AST) -> Violation | None:
    """Depth and node count, measured without recursion (a recursive checker may then recurse MAX_AST_DEPTH deep)."""
    stack = [(tree, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_AST_DEPTH:
            return Violation(getattr(node, "lineno", 0), f"nesting deeper than {MAX_AST_DEPTH} syntax levels")
        if nodes > MAX_AST_NODES:
            return Violation(0, f"more than {MAX_AST_NODES} syntax nodes")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return None


def parse_checked(source: object) -> ast.Module | list[Violation]:
    """The module's syntax tree, or why the text is refused before any grammar rule applies."""
    early = text_problems(source)
    if early or not isinstance(source, str):  # text_problems refuses every non-str, so early is set then
        return early
    tree = parse(source)
    if isinstance(tree, Violation):
        return [tree]
    shape = shape_problem(tree)
    return [shape] if shape is not None else tree
