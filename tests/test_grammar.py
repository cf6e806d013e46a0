"""The kernel-source grammar: everything the templates, the structured operators and realistic agent edits produce
passes; every escape attempt of tests/escape_corpus.py is refused, cleanly, and never executed."""
from __future__ import annotations

import collections
import subprocess
import sys
import types
from pathlib import Path

import pytest
from escape_corpus import BASE, CORPUS, ENTRY

from avo_inductor.kernels import grammar_text, grammar_vocab
from avo_inductor.kernels.genome import GENOME_SPACE
from avo_inductor.kernels.grammar import Violation, assert_allowed, check_source
from avo_inductor.kernels.loader import load_source, required_functions, static_violations
from avo_inductor.kernels.render import default_genome, render
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind

CPU = HardwareKey("cpu", "triton-interpreter", (0, 0), 0)
H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
MIN_PER_CLASS = 6
ENTRIES = ("attn_fwd", "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq")

GOOD = '''"""ok"""
import math
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
TILE = tl.constexpr(2 * 8 + 16)
HALF_PI = math.pi / 2
MASK = (1 << 16) - 1


@triton.jit
def _scale(x, s, EXACT: tl.constexpr = False):
    """a docstring"""
    return x * s if EXACT else x * (s + 0.0)


@triton.jit
def attn_fwd(X, Y, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(2):
        acc += tl.load(X + offs, mask=offs < N, other=0.0).to(tl.float32)
    k = 0
    while k < 2:
        k += 1
    lo, hi = 0, N
    NONE: tl.constexpr = BLOCK >= 16 and not False
    m = tl.where(offs[:, None] < hi, float("-inf"), tl.math.exp2(acc[None, :] * LOG2E))
    tl.static_assert(BLOCK % 16 == 0, "tile")
    tl.store(Y + offs, _scale(tl.max(m, 1), HALF_PI), mask=offs < N)
'''


def _spec(**kw) -> AttentionSpec:
    base = {"batch": 2, "q_heads": 4, "kv_heads": 2, "q_len": 47, "kv_len": 33, "head_dim": 16, "dtype": "float16"}
    return AttentionSpec(**{**base, **kw})


def _launch(rk) -> dict:
    """The launch config as the loader takes it, from a RenderedKernel (a dict) or a KernelSource (launch_dict)."""
    return dict(getattr(rk, "launch_dict", rk.launch))


def test_good_source_passes() -> None:
    assert check_source(GOOD, ("attn_fwd", "_scale")) == []
    assert check_source(BASE, ENTRY) == []


# ---- everything the project itself produces passes --------------------------------------------------------

SPECS = [
    _spec(), _spec(causal=True, needs_grad=True), _spec(window=8, causal=True), _spec(mask=MaskKind.BIAS),
    _spec(mask=MaskKind.BOOL, causal=True), _spec(mask=MaskKind.PADDING), _spec(mask=MaskKind.ALIBI, causal=True),
    _spec(q_heads=8, kv_heads=2, q_len=1, kv_len=8192, head_dim=64, dtype="bfloat16"),  # GQA decode, split-K
    _spec(q_heads=4, kv_heads=1, q_len=3, kv_len=4096, head_dim=128, dtype="bfloat16", mask=MaskKind.BIAS),
    _spec(head_dim=24, v_head_dim=16, dtype="float32", needs_grad=True),
    _spec(q_len=2048, kv_len=2048, head_dim=128, dtype="bfloat16", mask=MaskKind.ALIBI, needs_grad=True),
]


@pytest.mark.parametrize("hardware", [CPU, H100], ids=["cpu", "h100"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.cache_key()[:40] if hasattr(s, "cache_key") else str(s))
def test_default_genomes_render_to_accepted_source(spec: AttentionSpec, hardware: HardwareKey) -> None:
    genome = default_genome(spec, hardware)
    rk = render(genome, spec)
    assert check_source(rk.source, (rk.entry_point,) + ENTRIES[1:]) == []
    if spec.q_len == 1 and hardware is H100:
        assert _launch(rk)["kv_splits"] > 1 and check_source(rk.source, ("attn_fwd_reduce",)) == []
        fused = render(genome.replace(split_combine=True), spec)
        assert required_functions(fused.entry_point, None, _launch(fused)) == ("attn_fwd", "attn_fwd_split_combine")
        assert static_violations(fused.source, fused.entry_point, fused.bwd_entry_point, _launch(fused)) == []


def _variants(spec: AttentionSpec, hardware: HardwareKey):
    """The default genome with each knob moved to each of its values, one knob at a time (renderable ones)."""
    base = default_genome(spec, hardware)
    for knob, values in GENOME_SPACE.items():
        for value in values:
            try:
                genome = base.replace(**{knob: value})
                yield f"{knob}={value}", render(genome, spec)
            except ValueError:
                continue  # a combination the template cannot honour is refused by render, not rendered


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[6], SPECS[7]], ids=["causal", "alibi", "gqa-decode"])
def test_every_single_knob_variant_renders_to_accepted_source(spec: AttentionSpec) -> None:
    rendered = dict(_variants(spec, H100))
    assert len(rendered) > 40, sorted(rendered)
    by_text = {rk.source: (name, rk.entry_point) for name, rk in rendered.items()}  # launch-only knobs: same text
    problems = {name: check_source(text, (entry,))[:2] for text, (name, entry) in by_text.items()}
    assert len(by_text) > 10 and not {name: found for name, found in problems.items() if found}


@pytest.mark.parametrize("head_dim,mask,causal,persistent", [
    (128, MaskKind.NONE, True, False), (64, MaskKind.BIAS, False, True), (128, MaskKind.ALIBI, False, False),
    (64, MaskKind.NONE, False, True)])
def test_ws90_modules_render_to_accepted_source(head_dim: int, mask: MaskKind, causal: bool, persistent: bool) -> None:
    spec = _spec(q_len=1024, kv_len=1024, head_dim=head_dim, dtype="bfloat16", mask=mask, causal=causal,
                 needs_grad=True)
    genome = default_genome(spec, H100, "flash_ws90").replace(persistent=persistent)
    rk = render(genome, spec)
    assert rk.entry_point == "attn_fwd_ws90" and "@gluon.jit" in rk.source
    assert check_source(rk.source, (rk.entry_point,) + ENTRIES[1:]) == []


def _flash_v1() -> str:
    return render(default_genome(SPECS[1], CPU), SPECS[1]).source


# Edits the agent operator makes (search/agent.py applies SEARCH/REPLACE diffs to a rendered module): a loop's
# iterator or bounds, a constant, tile math, a new helper with the full statement set.
AGENT_EDITS = {
    "constant": [("KEEP_SCAN = tl.constexpr(1024)", "KEEP_SCAN = tl.constexpr(512)  # halve the scan step")],
    "new_constants": [("LN2 = tl.constexpr(", ("LOG2E_HALF = LOG2E / 2\nSCALE_EPS = tl.constexpr(1e-6 * 2)\n"
                                               "LN2 = tl.constexpr("))],
    "loop_iterator": [("for start in range(lo, hi, KEEP_SCAN):",
                       "for start in tl.range(lo, hi, KEEP_SCAN, num_stages=1):")],
    "static_loop": [("for start in range(lo, hi, KEEP_SCAN):", ("for start in tl.static_range(0, 0):\n"
                     "        pass\n    for start in range(lo, hi, KEEP_SCAN):"))],
    "tile_math": [("lo = lo // BLOCK_N * BLOCK_N", "lo = (lo // BLOCK_N) * BLOCK_N + 0 * (BLOCK_N >> 1)")],
    "dot_precision": [('input_precision="ieee"', 'input_precision="tf32x3"')],
    "helper": [("@triton.jit\ndef _dot(", '''@triton.jit
def _online_update(m_i, l_i, s, BLOCK_N: tl.constexpr, USE_MAX: tl.constexpr = True):
    """Row max and sum update of one block (edit by the agent)."""
    m_new: tl.constexpr = 0
    m_blk = tl.max(s, 1) if USE_MAX else tl.min(s, 1)
    m_cur = tl.maximum(m_i, m_blk)
    alpha = tl.math.exp2(m_i - m_cur)
    p = tl.math.exp2(s - m_cur[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    n = 0
    while n < BLOCK_N // 16:
        n += 1
        if n == 3:
            break
        elif n > 4:
            continue
        else:
            pass
    assert BLOCK_N >= 16, "tile too small"
    tl.device_assert(l_i >= 0, "negative row sum")
    tl.static_assert(BLOCK_N % 16 == 0)
    (a, b), c = (m_cur, l_i), -alpha
    return a, b, p.to(tl.float16), c.T if c.shape[0] > 0 else c, min(n, 2), max(n, 1), int(n), len((a, b))


@triton.jit
def _dot(''')],
}


@pytest.mark.parametrize("name", sorted(AGENT_EDITS))
def test_realistic_agent_edits_pass(name: str) -> None:
    source = _flash_v1()
    for old, new in AGENT_EDITS[name]:
        assert old in source, f"anchor of edit {name!r} not in the rendered module: {old!r}"
        source = source.replace(old, new, 1)
    assert check_source(source, ENTRIES) == []


def test_an_accepted_edit_still_imports(isolated_avo: Path) -> None:
    """The grammar admits what Python and Triton accept: the 'helper' edit loads through the loader."""
    spec = SPECS[1]
    rk = render(default_genome(spec, CPU), spec)
    source = rk.source
    for old, new in AGENT_EDITS["helper"] + AGENT_EDITS["new_constants"]:
        source = source.replace(old, new, 1)
    kernel = load_source(source, rk.entry_point, rk.bwd_entry_point, _launch(rk))
    assert kernel.functions.has_backward


# ---- the escape corpus ------------------------------------------------------------------------------------

def test_corpus_covers_every_class_with_enough_attempts() -> None:
    counts = collections.Counter(cls for cls, _ in CORPUS)
    print("escape attempts per class:", dict(sorted(counts.items())), "total", len(CORPUS))
    assert len(CORPUS) >= 200 and len(counts) >= 17
    assert min(counts.values()) >= MIN_PER_CLASS, counts
    assert len({src for _, src in CORPUS}) == len(CORPUS), "duplicate attempts"


def _ids() -> list[str]:
    seen: collections.Counter[str] = collections.Counter()
    out = []
    for cls, _ in CORPUS:
        seen[cls] += 1
        out.append(f"{cls}-{seen[cls]}")
    return out


@pytest.mark.parametrize("cls,source", CORPUS, ids=_ids())
def test_escape_attempt_is_refused(cls: str, source: str) -> None:
    problems = check_source(source, ENTRY)  # must return, never raise (RecursionError, MemoryError, ...)
    assert problems and all(isinstance(p, Violation) for p in problems), cls
    with pytest.raises(ValueError, match="static allowlist"):
        assert_allowed(source, ENTRY)


# ---- a refused source never runs ----------------------------------------------------------------------------

def _payloads(marker: Path) -> dict[str, str]:
    """Sources whose import would create ``marker``-derived files: module level, decorator argument, default,
    annotation (each is evaluated when Python imports the module)."""
    def touch(tag: str) -> str:
        return f"open({str(marker) + '-' + tag!r}, 'w')"
    return {
        "module": BASE + f"\nTOUCH = {touch('module')}\n",
        "decorator": BASE + f"\n\n@triton.jit(do_not_specialize=[{touch('decorator')}])\ndef evil(X):\n    pass\n",
        "default": BASE + f"\n\n@triton.jit\ndef evil(X, Y={touch('default')}):\n    pass\n",
        "annotation": BASE + f"\n\n@triton.jit\ndef evil(X: {touch('annotation')}):\n    pass\n",
    }


def test_payloads_are_live_when_imported_by_plain_python(tmp_path: Path) -> None:
    """Control: the payloads below do create their files when a plain import runs them."""
    marker = tmp_path / "live"
    for tag, source in _payloads(marker).items():
        (tmp_path / f"mod_{tag}.py").write_text(source)
    code = ("import importlib.util, sys, glob\n"
            "for path in sorted(glob.glob(sys.argv[1] + '/mod_*.py')):\n"
            "    spec = importlib.util.spec_from_file_location('m', path)\n"
            "    try:\n        spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "    except Exception:\n        pass\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=300,
                   env={"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"})
    assert sorted(p.name for p in tmp_path.glob("live-*")) == [f"live-{t}" for t in sorted(_payloads(marker))]


@pytest.mark.parametrize("tag", ["module", "decorator", "default", "annotation"])
def test_refused_source_is_never_imported(tmp_path: Path, tag: str) -> None:
    spec = SPECS[0]
    launch = _launch(render(default_genome(spec, CPU), spec))
    marker = tmp_path / "pwned"
    with pytest.raises(ValueError, match="allowlist"):
        load_source(_payloads(marker)[tag], "attn_fwd", None, launch)
    assert not list(tmp_path.glob("pwned*"))


# ---- the lists themselves ----------------------------------------------------------------------------------

def _namespace_objects() -> dict[tuple[str, ...], object]:
    import math

    import triton.language as tl
    roots: dict[str, object] = {"tl": tl, "math": math}
    try:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
        roots.update(gl=gl, mbarrier=mbarrier, tma=tma)
    except ImportError:
        pass
    out: dict[tuple[str, ...], object] = {}
    for path in grammar_vocab.NAMESPACES:
        if path[0] in roots:
            obj = roots[path[0]]
            for part in path[1:]:
                obj = getattr(obj, part)
            out[path] = obj
    return out


def test_listed_names_exist_and_none_is_a_module() -> None:
    """Every listed namespace attribute exists in this Triton (tma's Triton-3.6 name and math's aside) and none is
    a module; no value attribute of a listed object is a module or a Python builtin either."""
    import builtins

    optional = {("tma", "async_copy_global_to_shared"), ("tl", "PropagateNan")}
    builtin_ids = {id(v) for v in vars(builtins).values()}
    for path, obj in _namespace_objects().items():
        for name in grammar_vocab.NAMESPACES[path]:
            if not hasattr(obj, name):
                assert (path[-1], name) in optional or path == ("math",), (path, name)
                continue
            value = getattr(obj, name)
            assert not isinstance(value, types.ModuleType), (path, name)
            for attr in grammar_vocab.VALUE_ATTRIBUTES:
                sub = getattr(value, attr, None)
                assert not isinstance(sub, types.ModuleType) and id(sub) not in builtin_ids - {id(None)}, \
                    (path, name, attr)


def test_no_listed_name_is_dunder_or_a_banned_capability() -> None:
    listed = set(grammar_vocab.VALUE_ATTRIBUTES).union(*grammar_vocab.NAMESPACES.values())
    assert not [n for n in listed if n.startswith("_")]
    assert not listed & {"inline_asm_elementwise", "device_print", "static_print", "extra", "core", "semantic",
                         "standard", "libdevice", "data_ptr", "storage", "untyped_storage", "cuda", "synchronize"}


# ---- limits and messages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("A = 2 ** 63", None), ("A = 2 ** 64", "allowed range"), ("A = 1 << 65", "outside [0, 64]"),
    ("A = 1 / 0", "ZeroDivisionError"), ("A = 1e308 * 10.0", None), ("A = tl.constexpr(-(3 // 2) % 5)", None),
    ("A = ~1.5", "non-integer"), ("A = math.pi * 2", None), ("A = 1e300 ** 2", "OverflowError"), ("A = 2 ** 400", "outside [0, 64]"),
])
def test_module_constants_are_evaluated_with_bounds(text: str, needle: str | None) -> None:
    problems = check_source(BASE.replace("import triton\n", "import math\nimport triton\n") + "\n" + text + "\n")
    if needle is None:
        assert problems == []
    else:
        assert problems and needle in problems[0].message, problems


@pytest.mark.parametrize("snippet,needle", [
    ("import os\n", "import of 'os' not allowed"),
    ("from torch import nn\n", "import of 'nn' from 'torch'"),
    ("CACHE = {}\n", "module-level"),
    ("cache = 1\n", "UPPER_CASE"),
    ("class A:\n    pass\n", "ClassDef"),
    ("def helper(x):\n    return x\n", "@triton.jit"),
    ("@triton.jit\ndef f(X):\n    open('/etc/passwd')\n", "'open'"),
    ("@triton.jit\ndef f(X):\n    X.data_ptr()\n", "'data_ptr' not allowed"),
    ("@triton.jit\ndef f(X):\n    X.__class__\n", "__class__"),
    ("@triton.jit\ndef f(X):\n    global G\n", "Global"),
    ("@triton.jit\ndef f(X):\n    torch.cuda.synchronize()\n", "synchronize"),
    ("if True:\n    import os\n", "top-level If"),
    ("def broken(:\n", "syntax error"),
])
def test_violations_name_the_problem(snippet: str, needle: str) -> None:
    problems = check_source(BASE + "\n" + snippet)
    assert problems and any(needle in str(p) for p in problems), problems


def test_missing_entry_point_size_cap_and_non_text() -> None:
    assert any("entry point 'attn_bwd'" in str(p) for p in check_source(BASE, ("attn_fwd", "attn_bwd")))
    assert "larger than" in check_source("#" * (grammar_text.MAX_SOURCE_BYTES + 1))[0].message
    assert "must be text" in check_source(BASE.encode())[0].message  # type: ignore[arg-type]


def test_every_problem_of_a_module_is_listed() -> None:
    source = BASE + "\nimport os\nlower = 1\n\n@triton.jit\ndef f(X):\n    eval('1')\n"
    lines = [p.line for p in check_source(source, ("attn_fwd", "missing"))]
    assert len(lines) == 4 and lines[-1] == 0


@pytest.mark.parametrize("name", ["tl", "gl", "math", "triton", "gluon", "mbarrier", "range", "float"])
def test_reserved_names_are_never_values(name: str) -> None:
    source = BASE + f"\n\n@triton.jit\ndef f(X):\n    y = (X, {name})\n"
    assert any("may only be used" in p.message for p in check_source(source)), check_source(source)
