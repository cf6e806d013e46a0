"""Escape attempts against the kernel-source grammar, as data: (class, source) pairs, every one must be refused.

Written as an attacker who knows Python and Triton internals: each source is a complete kernel module (BASE, which
the grammar accepts, plus one payload), so a refusal is the payload's. Classes name the route tried.
"""
from __future__ import annotations

BASE = '''"""escape attempt"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def attn_fwd(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < N, other=0.0) * LOG2E, mask=offs < N)
'''
ENTRY = ("attn_fwd",)


def top(text: str) -> str:
    """BASE with ``text`` at module level."""
    return BASE + "\n\n" + text.strip("\n") + "\n"


def body(*lines: str) -> str:
    """BASE plus a jit function whose body is ``lines`` (each one statement, indented by four)."""
    inner = "\n".join("    " + line for line in lines)
    return top(f"@triton.jit\ndef evil(X, Y, N):\n{inner}\n")


def sig(signature: str, decorator: str = "@triton.jit") -> str:
    """BASE plus a function with the given decorator and signature and an inert body."""
    return top(f"{decorator}\ndef evil{signature}:\n    pass\n")


_ATTRIBUTE_CHAINS = [
    body("x = triton.runtime.jit.os.system('id')"),
    body("tl.core.builtins.eval('1')"),
    body("b = tl.math.core.builtins"),
    body("s = tl.standard.core.builtins"),
    body("s = tl.semantic.builtins"),
    body("x = triton.compiler.compiler.os.system('id')"),
    body("m = tl.math", "x = m.exp2(1.0)"),
    body("x = X.handle.data"),
    body("x = attn_fwd.fn"),
    body("x = attn_fwd.src"),
    body("x = tl.float32.to_ir"),
    body("x = tl.load.fn"),
    body("x = tl.tensor"),
    body("x = tl.random.philox"),
    top("from triton.experimental.gluon import language as gl\n\n\n@triton.jit\ndef evil(X):\n    x = gl._core.builtins\n"),
    body("x = math.sys"),
    body("x = tl.constexpr(X).value"),
    body("x = X.to(tl.float32).handle"),
    body("x = X.T.handle.data"),
    body("x = tl.tensor_descriptor"),
    body("d = tl.make_tensor_descriptor(X, shape=[N], strides=[1], block_shape=[16])", "x = d.base"),
    body("x = attn_fwd[(1,)]"),
    body("x = max(X, N, key=attn_fwd)"),
    body("x = tl.load(X).type.scalar"),
]

_DUNDER = [
    body("x = X.__class__.__mro__[1].__subclasses__()"),
    body("x = ().__class__.__bases__[0].__subclasses__()"),
    body("x = __builtins__"),
    body("x = tl.load.__globals__"),
    body("x = attn_fwd.__dict__"),
    body("x = tl.arange.__wrapped__"),
    body("x = __name__"),
    body("x = __loader__"),
    body("x = tl.load.__self__"),
    body("x = X.dtype.__class__"),
    top("@triton.jit\ndef __getattr__(name):\n    pass\n"),
    sig("(X, __builtins__)"),
    body("tl.store(X, 1.0, __mask=1)"),
    body("__x = 1"),
]

_DECORATORS = [
    sig("(X)", "@triton.jit(do_not_specialize=[os.system('x')])"),
    sig("(X)", "@triton.jit(repr=lambda *a: 0)"),
    sig("(X)", "@triton.autotune(configs=[], key=[])\n@triton.jit"),
    sig("(X)", "@triton.heuristics({'B': lambda a: __import__('os').system('id')})\n@triton.jit"),
    sig("(X)", "@triton.jit\n@triton.jit"),
    sig("(X)", "@(lambda f: f)"),
    sig("(X)", "@jit"),
    sig("(X)", "@tl.constexpr"),
    sig("(X)", "@triton.jit()"),
    top("def helper(x):\n    return x\n"),
    sig("(X)", "@triton.runtime.jit.jit"),
]

_DEFAULTS = [
    sig("(X, Y=open('/etc/passwd'))"),
    sig("(X, Y=__import__('os').getcwd())"),
    sig("(X, memo=[])"),
    sig("(X, memo={})"),
    sig("(X, Y=tl.core)"),
    sig("(X, Y=(lambda: 0))"),
    sig("(X, Y=print('x'))"),
    sig("(X, Y=1 + 1)"),
]

_ANNOTATIONS = [
    sig("(X: __import__('os').system('id'))"),
    sig("(X: triton.runtime.driver)"),
    sig("(X) -> exec('import os')"),
    sig("(X: \"os.system('id')\")"),
    body("y: open('/x') = 1"),
    body("y: int = 3"),
    body("y: tl.constexpr"),
    sig("(X: tl.constexpr.__class__)"),
]

_MODULE_STATEMENTS = [
    top("print('hi')"),
    top("if True:\n    import os"),
    top("X_FILE = open('/tmp/avo_escape', 'w')"),
    top("lower = 1"),
    top("A = B = 1"),
    top("A, B = 1, 2"),
    top("LOG2E += 1"),
    top("X: int = 1"),
    top("for i in range(3):\n    pass"),
    top("while False:\n    pass"),
    top("try:\n    pass\nexcept Exception:\n    pass"),
    top("with open('/etc/passwd') as f:\n    pass"),
    top("del triton"),
    top("assert True"),
    top("A = tl.constexpr(__import__('os').getpid())"),
    top("BIG = 10 ** 10 ** 10"),
    top("BIG = 1 << 100000"),
    top("BIG = 99999999999 * 99999999999 * 99999999999"),
    top("A = tl.full([1], 0, tl.int32)"),
    top("A = triton.cdiv(4, 2)"),
    top("A = (lambda: 1)()"),
    top("A = math.factorial(5)"),
    top("A = 'os'"),
    top("A = tl.constexpr(1, 2)"),
    top("A = LOG2E.value"),
    top("LOG2E = tl.constexpr(2.0)"),
]

_IMPORTS = [
    top("import os"),
    top("import subprocess"),
    top("import torch"),
    top("import sys"),
    top("import ctypes"),
    top("import builtins"),
    top("import importlib"),
    top("from os import system"),
    top("import triton.runtime"),
    top("from triton import runtime"),
    top("from triton.language import core"),
    top("import triton.language as tl2"),
    top("import triton.language.extra.cuda.libdevice as tl"),
    top("import os as tl"),
    top("import math as tl"),
    top("import triton as tl"),
    top("from . import evil"),
    top("from .evil import x"),
    top("from triton.experimental.gluon.language.nvidia.hopper import tma as gl"),
    top("from triton.experimental import gluon as triton"),
    top("from triton.experimental import gluon, other"),
    top("from triton.experimental.gluon.language.nvidia import blackwell"),
    top("from __future__ import annotations"),
    top("from triton import jit"),
    body("import os"),
    body("x = __import__('os')"),
    body("x = importlib.import_module('os')"),
]

_BUILTIN_NAMES = [body(line) for line in (
    "x = getattr(X, 'data_ptr')", "x = eval('1')", "exec('import os')", "x = open('/etc/passwd')",
    "x = type(X)", "x = vars(X)", "x = globals()", "x = locals()", "breakpoint()", "x = compile('1', 'f', 'eval')",
    "setattr(X, 'a', 1)", "x = input()", "print(X)", "x = object()", "x = dir(X)", "x = id(X)",
    "x = globals()['attn_fwd']", "x = super()", "x = memoryview(X)", "x = isinstance(X, int)",
    "x = hasattr(X, 'a')", "x = list(X)",
)]

_STRING_TRICKS = [
    body("x = f'{X.__class__}'"),
    body("x = f\"{open('/etc/passwd').read()}\""),
    body("x = '%s' % X"),
    body("x = '{0.__class__}'.format(X)"),
    body("x = '{}'.format"),
    body("s = 'os'"),
    body("tl.load(X, cache_modifier='{0.__globals__}'.format(tl.load))"),
    body("x = b'payload'"),
    body("x = 'a' + 'b'"),
    body("tl.device_assert(X > 0, '" + "x" * 300 + "')"),
    body("x = float('1e999')"),
    body("x = ''.join"),
]

_COMPREHENSIONS = [
    body("x = [i for i in range(3)]"),
    body("x = {i for i in range(3)}"),
    body("x = {i: i for i in range(3)}"),
    body("x = sum(i for i in range(3))"),
    body("f = lambda: 0"),
    body("x = tl.reduce(X, 0, lambda a, b: a + b)"),
    body("yield X"),
    body("yield from range(3)"),
    body("def inner():", "    return 1"),
    top("@triton.jit\nasync def evil(X):\n    await X\n"),
]

_WALRUS_STARRED = [
    body("x = (y := X)"),
    body("tl.store(*X)"),
    body("tl.store(X, **N)"),
    body("a, *b = (1, 2, 3)"),
    body("x = [*X]"),
    body("x = (*X,)"),
]

_CONTROL_FLOW = [
    body("try:", "    pass", "except Exception:", "    pass"),
    body("with X:", "    pass"),
    body("class K:", "    pass"),
    body("raise ValueError('x')"),
    body("del X"),
    body("global LOG2E"),
    body("nonlocal X"),
    body("match X:", "    case 1:", "        pass"),
    body("for i in X:", "    pass"),
    body("for i in range(3):", "    pass", "else:", "    pass"),
    body("while N:", "    pass", "else:", "    pass"),
    body("X.a = 1"),
    body("X[0] = 1"),
    body("assert X, X.__class__"),
    body("x = 1 in X"),
]

_SHADOWING = [
    body("tl = X", "tl.core.builtins"),
    sig("(X, tl)"),
    sig("(X, triton)"),
    body("range = X"),
    body("float = X"),
    body("for tl in range(3):", "    pass"),
    top("@triton.jit\ndef tl(X):\n    pass\n"),
    top("@triton.jit\ndef float(X):\n    pass\n"),
    sig("(X, attn_fwd)"),
    sig("(X, LOG2E)"),
    body("LOG2E = 2.0"),
    top("@triton.jit\ndef attn_fwd(X):\n    pass\n"),
    body("gl = X"),
    body("math = X"),
]

_LIBDEVICE_ASM = [
    body("x = tl.inline_asm_elementwise('mov.u32 $0, 0;', '=r', [], dtype=tl.int32, is_pure=True, pack=1)"),
    body("x = tl.extra.cuda.libdevice.exp(X)"),
    top("from triton.language.extra import libdevice"),
    top("from triton.language.extra.cuda import libdevice"),
    body("x = tl.math.libdevice"),
    top("from triton.experimental.gluon import language as gl\n\n\n@gluon.jit\ndef evil(X):\n"
        "    x = gl.inline_asm_elementwise('mov.u32 $0, 0;', '=r', [], dtype=gl.int32, is_pure=True, pack=1)\n"),
    body("tl.device_print('x', X)"),
    body("tl.static_print(X)"),
    body("x = tl.map_elementwise(attn_fwd, X)"),
]

_HOST_SYNC_STATE = [
    body("s = triton.runtime.driver.active.get_current_stream()"),
    body("torch.cuda.synchronize()"),
    body("s = torch.cuda.Stream()"),
    body("t = time.perf_counter()"),
    body("t = triton.testing.do_bench(attn_fwd)"),
    body("p = X.data_ptr()"),
    body("s = X.untyped_storage()"),
    body("s = X.storage()"),
    body("x = X.item()"),
    body("x = X.tolist()"),
    body("x = X.numpy()"),
    body("t = threading.Thread(target=attn_fwd)"),
    top("CACHE = []"),
    top("CACHE = {}"),
    top("SEEN = set()"),
    top("MEMO = tl.constexpr([])"),
    body("CACHE.append(X)"),
    body("LOG2E += 1"),
    body("x = X.copy_(Y)"),
]

# Parser bombs and text tricks: each must be a clean refusal (a Violation), never a traceback.
_NESTED_IFS = "".join(" " * i + "if N:\n" for i in range(90)) + " " * 90 + "pass\n"
_PARSER_BOMBS = [
    "(" * 100_000,
    "x = (\n" + "(\n" * 100_000,
    top("X_DEEP = " + "[" * 150 + "]" * 150),
    body("x = (1" + "\n + 1" * 40_000 + ")"),
    body("x = (" + "-\n" * 5000 + "1)"),
    body("x = (" + "not\n" * 5000 + "N)"),
    top("@triton.jit\ndef evil(N):\n" + "".join(" " * (i + 1) + "if N:\n" for i in range(5000))),
    top("@triton.jit\ndef evil(N):\n" + "".join(" " * (i + 1) + "if N:\n" for i in range(150)) + " " * 151 + "pass\n"),
    top("@triton.jit\ndef evil(N):\n" + "".join(" " + line for line in _NESTED_IFS.splitlines(True))),
    top("#" * (300 * 1024)),
    body("x = 1" + " + 1" * 2000),
    body("x = (", *("N," * 498 for _ in range(240)), ")"),
    body("x = " + "X[" * 70 + "0" + "]" * 70),
    body("x = " + "tl.where(\n" * 80 + "N" + ", 1, 2)\n" * 80),
    "def broken(:\n",
]

_ENCODING = [
    "# -*- coding: utf-7 -*-\n" + BASE + "#+AAo-import os+AAo-os.system('id')\n",
    '"""doc"""\n# vim: set fileencoding=utf-7 :\n' + BASE.split("\n", 1)[1],
    BASE + "\n# null byte\x00\n",
    BASE + "\n# invalid UTF-8 " + b"\xff\xfe".decode("utf-8", "surrogateescape") + "\n",
    BASE + "\nX_S = 1\r\nimport os\r\n",
    "\ufeff" + BASE,
    BASE + "\n# form feed\x0c\n",
    BASE + "\n# escape\x1b[2J\n",
    BASE + "\n# next line\x85import os\n",
    BASE + "\n# line separator\u2028import os\n",
]

CORPUS: list[tuple[str, str]] = [
    *(("attribute_chain", s) for s in _ATTRIBUTE_CHAINS),
    *(("dunder", s) for s in _DUNDER),
    *(("decorator", s) for s in _DECORATORS),
    *(("default", s) for s in _DEFAULTS),
    *(("annotation", s) for s in _ANNOTATIONS),
    *(("module_statement", s) for s in _MODULE_STATEMENTS),
    *(("import", s) for s in _IMPORTS),
    *(("builtin_name", s) for s in _BUILTIN_NAMES),
    *(("string_trick", s) for s in _STRING_TRICKS),
    *(("comprehension_lambda", s) for s in _COMPREHENSIONS),
    *(("walrus_starred", s) for s in _WALRUS_STARRED),
    *(("try_with_class", s) for s in _CONTROL_FLOW),
    *(("shadowing", s) for s in _SHADOWING),
    *(("libdevice_asm", s) for s in _LIBDEVICE_ASM),
    *(("host_sync_state", s) for s in _HOST_SYNC_STATE),
    *(("parser_bomb", s) for s in _PARSER_BOMBS),
    *(("encoding", s) for s in _ENCODING),
]
