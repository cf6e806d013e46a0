"""The static allowlist: the first gate for every kernel source (bundles, store, search candidates)."""
from __future__ import annotations

import pytest

from avo_inductor.kernels.allowlist import assert_allowed, check_source

GOOD = '''"""ok"""
import math
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def attn_fwd(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, tl.load(X + offs) * LOG2E)
'''


def test_good_source_passes() -> None:
    assert check_source(GOOD, ("attn_fwd",)) == []


@pytest.mark.parametrize("snippet,needle", [
    ("import os\n", "import of 'os'"),
    ("from torch import nn\n", "import from 'torch'"),
    ("CACHE = {}\n", "mutable state"),
    ("cache = 1\n", "UPPER_CASE"),
    ("class A:\n    pass\n", "ClassDef"),
    ("def helper(x):\n    return x\n", "decorated with @triton.jit"),
    ("@triton.jit\ndef f(X):\n    open('/etc/passwd')\n", "'open'"),
    ("@triton.jit\ndef f(X):\n    X.data_ptr()\n", "data_ptr"),
    ("@triton.jit\ndef f(X):\n    X.__class__\n", "__class__"),
    ("@triton.jit\ndef f(X):\n    global G\n", "Global"),
    ("@triton.jit\ndef f(X):\n    torch.cuda.synchronize()\n", "'torch'"),
    ("if True:\n    import os\n", "top-level If"),
    ("def broken(:\n", "syntax error"),
])
def test_violations_are_reported(snippet: str, needle: str) -> None:
    problems = check_source(GOOD + "\n" + snippet)
    assert problems and any(needle in str(p) for p in problems), problems
    with pytest.raises(ValueError, match="static allowlist"):
        assert_allowed(GOOD + "\n" + snippet)


def test_missing_entry_point_and_size_cap() -> None:
    assert any("entry point 'attn_bwd'" in str(p) for p in check_source(GOOD, ("attn_fwd", "attn_bwd")))
    assert check_source("#" * (300 * 1024))
