"""exp2_poly (flash_v1 forward): part of the softmax's exp2 from a polynomial on the FMA units.

The template's own _exp2_poly / _exp2_tile (run through small probe kernels appended to a rendered module) against
float64 2^x, masked and underflowing arguments exactly 0, the columns each setting routes to the polynomial; the
forward with the knob on under the checker's rule (3x plain torch at the dtype, float64 reference, NaN-poisoned
outputs, LSE); what render refuses (fp32, base e, flash_ws90); the search proposing it and a record carrying it.
"""
from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from _kernel_cases import CPU, call_args, fresh, load, run_forward, snapshot, unchanged

from avo_inductor.artifact import KernelGenome, KernelRecord
from avo_inductor.check.tolerance import compare, compare_lse
from avo_inductor.kernels.reference import attention_reference, reference_lse
from avo_inductor.kernels.render import check_renderable, default_genome, render, template_digest
from avo_inductor.parsing import load_json
from avo_inductor.search.operators import StructuredOperator, mutate, renderable, spec_space
from avo_inductor.search.types import Candidate
from avo_inductor.spec import AttentionSpec, HardwareKey, SoftwareKey

# The interpreter evaluates log(0) / -inf - -inf in masked-out lanes that tl.where then discards.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
H100 = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
# The fit's measured maximum (benchmarks/probes/exp2_poly_fit.py: 1.014e-4 with the interpreter's separately
# rounded Horner steps), with a little room; bf16's unit roundoff is 2^-8 = 3.9e-3, fp16's 2^-11 = 4.9e-4.
POLY_REL_ERR = 1.05e-4

PROBES = '''

@triton.jit
def probe_exp2_poly(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < N, other=0.0)
    tl.store(Y + offs, _exp2_poly(x), mask=offs < N)


@triton.jit
def probe_exp2_tile(X, Y, BM: tl.constexpr, BN: tl.constexpr):
    offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    tl.store(Y + offs, _exp2_tile(tl.load(X + offs)))
'''


def _template_module(tmp_path: Path, poly: int) -> ModuleType:
    """The rendered flash_v1 module (exp2_poly=poly) with the probe kernels appended, imported from a file."""
    spec = AttentionSpec(2, 2, 2, 17, 17, 16, dtype="bfloat16")
    source = render(default_genome(spec, CPU).replace(exp2_poly=poly), spec).source + PROBES
    path = tmp_path / f"exp2_poly_probe_{poly}.py"
    path.write_text(source, encoding="utf-8")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    module_spec.loader.exec_module(module)
    return module


def test_polynomial_exp2_against_float64(tmp_path: Path) -> None:
    module = _template_module(tmp_path, 100)
    ints = torch.arange(-126, 1, dtype=torch.float32)
    normal = torch.cat([torch.rand(200_000, dtype=torch.float64).mul(-126.0).float(), torch.rand(50_000).neg(),
                        ints, ints[:-1] + 0.5, torch.nextafter(ints + 0.5, torch.zeros(())),  # ties of round(x)
                        torch.nextafter(ints[:-1] + 0.5, torch.full((), -200.0)), torch.tensor([-0.0])])
    underflow = torch.tensor([-127.0, -127.5, -128.0, -1e4, -3.4028234663852886e38, float("-inf")])
    edge = torch.rand(1000).add(126.0).neg().clamp(max=-126.001)  # (-127, -126): 2^x is subnormal there
    x = torch.cat([normal, underflow, edge]).contiguous()
    y = torch.full_like(x, float("nan"))
    module.probe_exp2_poly[(-(-x.numel() // 4096),)](x, y, x.numel(), BLOCK=4096)
    got, want = y[:normal.numel()].double(), torch.exp2(normal.double())
    rel = ((got - want) / want).abs()
    assert rel.max() <= POLY_REL_ERR, f"max relative error {rel.max():.3g} at x = {normal[rel.argmax()]}"
    assert rel.max() > 1e-6  # the polynomial ran, not an exact exp2
    tail = y[normal.numel():]
    assert torch.equal(tail[:underflow.numel()], torch.zeros_like(underflow))  # masked scores exactly 0
    assert ((tail[underflow.numel():] >= 0) & (tail[underflow.numel():] < 2.0 ** -126)).all()


@pytest.mark.parametrize("poly", [0, 25, 50, 100])
def test_tile_routes_the_documented_columns_to_the_polynomial(tmp_path: Path, poly: int) -> None:
    """ex2 columns equal float32 exp2 bit for bit (the interpreter's tl.math.exp2 is numpy's), polynomial
    columns miss it almost everywhere: which is which must be exactly the documented split."""
    bm, bn = 16, 32
    module = _template_module(tmp_path, poly)
    x = torch.rand(bm, bn).mul(-20.0)
    x[3, :] = float("-inf")  # a masked row: 0 from either unit
    y = torch.full_like(x, float("nan"))
    module.probe_exp2_tile[(1,)](x, y, BM=bm, BN=bn)
    want = torch.from_numpy(np.exp2(x.numpy()))
    assert torch.equal(y[3], torch.zeros(bn))
    assert (((y.double() - want.double()) / want.double().clamp_min(1e-30)).abs() <= POLY_REL_ERR).all()
    col = torch.arange(bn)
    by_poly = {0: col < 0, 25: (col % 2 == 1) & (col < bn // 2), 50: col % 2 == 1, 100: col >= 0}[poly]
    exact = (y == want).float().mean(0)  # per column: share of rows where the result is numpy's exp2
    assert torch.equal(exact[~by_poly], torch.ones(int((~by_poly).sum())))
    assert (exact[by_poly] < 0.5).all()


# (dtype, mask, causal, window, hq, hkv, nq, nk, d, knobs): ragged lengths, batch 2, 2 kv heads
CASES = [
    ("bfloat16", "none", False, None, 4, 2, 17, 47, 16, {"exp2_poly": 50}),
    ("float16", "none", True, None, 2, 2, 47, 17, 24, {"exp2_poly": 100}),  # q_len > kv_len: rows with no key
    ("bfloat16", "none", True, 9, 4, 2, 33, 47, 16, {"exp2_poly": 25}),  # sliding window
    ("float16", "padding", False, None, 2, 2, 17, 47, 24, {"exp2_poly": 50}),
    ("bfloat16", "padding", True, None, 4, 2, 1, 47, 16, {"exp2_poly": 100, "kv_splits": 2}),  # decode split-K
    ("float16", "none", True, None, 4, 2, 47, 47, 16, {"exp2_poly": 50, "lazy_rescale": True}),  # arguments up to 8
]


@pytest.mark.parametrize("dtype,mask,causal,window,hq,hkv,nq,nk,d,knobs", CASES)
def test_forward_with_polynomial_exp2_passes_the_checker(dtype, mask, causal, window, hq, hkv, nq, nk, d, knobs):
    spec = AttentionSpec(2, hq, hkv, nq, nk, d, dtype=dtype, causal=causal, window=window, mask=mask)
    kernel = load(spec, **knobs)
    assert f"EXP2_POLY = tl.constexpr({knobs['exp2_poly']})" in kernel.path.read_text()
    inp = fresh(spec)
    before = snapshot(inp)
    out, lse = run_forward(kernel, spec, inp)  # into NaN-poisoned buffers
    assert unchanged(inp, before) and out.dtype == spec.torch_dtype
    kw = dict(mask=inp.mask, **call_args(spec))
    ref = attention_reference(inp.q, inp.k, inp.v, **kw)
    at_dtype = attention_reference(inp.q, inp.k, inp.v, compute_dtype=spec.torch_dtype, **kw)
    compare("output", out, ref, at_dtype, spec.torch_dtype)  # raises CheckFailure past 3x torch's error
    compare_lse(lse, reference_lse(inp.q, inp.k, **kw), reference_lse(inp.q, inp.k, compute_dtype=spec.torch_dtype,
                                                                      **kw))


@pytest.mark.parametrize("genome,dtype,match", [
    (KernelGenome(exp2_poly=50), "float32", "exp2_poly=50 needs 16-bit inputs"),
    (KernelGenome(exp2_poly=100, exp2=False), "bfloat16", "exp2=True"),
    (KernelGenome(exp2_poly=25, template="flash_ws90", block_m=64, block_n=128), "bfloat16", "exp2_poly"),
])
def test_render_refuses_what_the_polynomial_cannot_serve(genome, dtype, match):
    spec = AttentionSpec(2, 2, 2, 256, 256, 64, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        check_renderable(genome, spec)


def test_search_proposes_it_for_16_bit_specs_only():
    bf16 = AttentionSpec(8, 16, 16, 2048, 2048, 64, dtype="bfloat16", causal=True)
    fp32 = AttentionSpec(8, 16, 16, 2048, 2048, 64, dtype="float32", causal=True)
    assert spec_space(bf16, H100)["exp2_poly"] == (0, 25, 50, 100)
    assert "exp2_poly" not in spec_space(fp32, H100) and "exp2_poly" not in spec_space(bf16, H100, "flash_ws90")
    base = default_genome(bf16, H100)
    assert base.exp2_poly == 0  # off by default until a GPU measures it
    rng = random.Random(7)
    children = [mutate(base, bf16, rng, 2, H100) for _ in range(200)]
    assert {c.exp2_poly for c in children} >= {25, 50}
    parent = Candidate(id="p0", spec=bf16, genome=base)
    proposed = StructuredOperator(hardware=H100).propose([(parent, None)] * 2, 40, seed=3)
    assert any(c.genome is not None and c.genome.exp2_poly for c in proposed)
    assert all(c.genome is not None and renderable(c.genome, bf16) for c in proposed)
    fp32_children = [mutate(default_genome(fp32, H100), fp32, rng, 2, H100) for _ in range(50)]
    assert all(c.exp2_poly == 0 for c in fp32_children)


def test_record_with_the_knob_round_trips():
    spec = AttentionSpec(8, 16, 16, 2048, 2048, 64, dtype="bfloat16", causal=True)
    genome = default_genome(spec, H100).replace(exp2_poly=50)
    kernel = render(genome, spec)
    assert "EXP2_POLY = tl.constexpr(50)" in kernel.source
    record = KernelRecord(spec=spec, hardware=H100, software=SoftwareKey("3.6.0", "2.11.0"), source=None,
                          entry_point=kernel.entry_point, bwd_entry_point=kernel.bwd_entry_point,
                          launch=kernel.launch_dict, genome=genome.to_dict(), tier="template",
                          template_digest=template_digest("flash_v1"), created_at=1_700_000_000.0)
    again = KernelRecord.from_dict(load_json(json.dumps(record.to_dict()), "record"))
    assert again == record and again.genome is not None and again.genome["exp2_poly"] == 50
    assert KernelGenome.from_dict(again.genome) == genome
    with pytest.raises(ValueError, match="exp2_poly"):
        KernelGenome.from_dict({**genome.to_dict(), "exp2_poly": 30})
