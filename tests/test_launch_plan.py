"""Launch plans (kernels/launch_plan.py): eager forwards reuse one plan per call signature and stay correct when
the signature changes (strides, lengths, masks, scalars); pre-allocated outputs and traced calls are never cached;
the LRU stays bounded; a held compiled kernel gets every argument in the kernel's parameter order; a rebased
descriptor is the validated one over new memory. Numerics against the float64 reference, outputs checked for NaN."""
from __future__ import annotations

import pytest
import torch

from avo_inductor.kernels import launch, launch_plan
from avo_inductor.kernels.reference import attention_reference, make_inputs, tolerance
from avo_inductor.spec import AttentionSpec, MaskKind

from _kernel_cases import call_args, load


@pytest.fixture(autouse=True)
def _fresh_plans():
    launch_plan.PLANS.clear()
    yield
    launch_plan.PLANS.clear()


def _check(out: torch.Tensor, spec: AttentionSpec, inp, q=None, k=None, v=None) -> None:
    ref = attention_reference((q if q is not None else inp.q).double(), (k if k is not None else inp.k).double(),
                              (v if v is not None else inp.v).double(), mask=inp.mask, **call_args(spec))
    atol, rtol = tolerance(spec.dtype)
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("n,d,mask,causal", [(17, 16, MaskKind.NONE, False), (113, 24, MaskKind.BIAS, True),
                                             (1, 16, MaskKind.ALIBI, False), (40, 16, MaskKind.PADDING, True)])
def test_eager_calls_reuse_one_plan_per_signature(dtype, n, d, mask, causal):
    spec = AttentionSpec(2, 4, 2, n, n + 3, d, dtype=dtype, causal=causal, mask=mask)
    kernel = load(spec)
    inp = make_inputs(spec)
    first, lse = launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, inp.v, inp.mask, **call_args(spec))
    assert len(launch_plan.PLANS) == 1
    fresh = make_inputs(spec, seed=7)  # new memory and values, same signature: the plan is reused
    again, _ = launch.forward(kernel.functions, kernel.launch, fresh.q, fresh.k, fresh.v, fresh.mask,
                              **call_args(spec))
    assert len(launch_plan.PLANS) == 1
    _check(first, spec, inp)
    _check(again, spec, fresh)
    assert lse.shape == (2, 4, n) and not lse.isnan().any()


def test_a_new_stride_length_or_scalar_gets_its_own_plan():
    spec = AttentionSpec(1, 2, 2, 33, 33, 16, dtype="float32")
    kernel = load(spec)
    inp = make_inputs(spec)
    run = lambda q, k, v, **kw: launch.forward(kernel.functions, kernel.launch, q, k, v, None,  # noqa: E731
                                               **{**call_args(spec), **kw})[0]
    run(inp.q, inp.k, inp.v)
    strided = inp.q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (B, N, H, D) memory
    _check(run(strided, inp.k, inp.v), spec, inp)
    assert len(launch_plan.PLANS) == 2
    causal = AttentionSpec(1, 2, 2, 33, 33, 16, dtype="float32", causal=True)
    _check(run(inp.q, inp.k, inp.v, causal=True), causal, inp)
    shorter = AttentionSpec(1, 2, 2, 20, 33, 16, dtype="float32")
    _check(run(inp.q[:, :, :20], inp.k, inp.v), shorter, inp, q=inp.q[:, :, :20])
    assert len(launch_plan.PLANS) == 4


def test_a_call_that_fails_the_checks_never_hits_a_plan():
    """A plan hit skips forward's input checks: a k of another dtype, or a 3-d q, with everything else as in a
    cached call must still be refused with the checks' message, not launched on the cached plan."""
    spec = AttentionSpec(1, 2, 2, 17, 17, 16, dtype="float16")
    kernel = load(spec)
    inp = make_inputs(spec)
    run = lambda q, k, v: launch.forward(kernel.functions, kernel.launch, q, k, v, None,  # noqa: E731
                                         **call_args(spec))
    run(inp.q, inp.k, inp.v)
    with pytest.raises(ValueError, match="must share one of"):
        run(inp.q, inp.k.to(torch.bfloat16), inp.v)
    with pytest.raises(ValueError, match="must be 4-D"):
        run(inp.q[0], inp.k, inp.v)
    assert len(launch_plan.PLANS) == 1


def test_preallocated_outputs_are_written_but_not_cached():
    spec = AttentionSpec(1, 2, 2, 17, 17, 16, dtype="float32")
    kernel = load(spec)
    inp = make_inputs(spec)
    out = torch.full((1, 2, 17, 16), float("nan"))
    lse = torch.full((1, 2, 17), float("nan"))
    result, _ = launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, inp.v, None, out=out, lse=lse,
                               **call_args(spec))
    assert result is out and len(launch_plan.PLANS) == 0
    _check(out, spec, inp)


def test_the_cache_is_a_bounded_lru():
    cache = launch_plan.PlanCache(limit=2)
    plans = [object(), object(), object()]
    cache.put(("a",), plans[0])
    cache.put(("b",), plans[1])
    assert cache.get(("a",)) is plans[0]  # "a" is now the most recent
    cache.put(("c",), plans[2])
    assert cache.get(("b",)) is None and cache.get(("a",)) is plans[0] and len(cache) == 2


class _FakeCompiled:
    """Stands in for triton's CompiledKernel: records the grid and the positional arguments of each launch."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple]] = []

    def __getitem__(self, grid):
        return lambda *args: self.calls.append((grid, args))


def test_a_held_kernel_gets_every_argument_in_parameter_order(monkeypatch):
    import triton
    import triton.compiler.compiler as compiler

    @triton.jit
    def kern(X, n, Y, scale, BLOCK: triton.language.constexpr, FLAG: triton.language.constexpr = 3):
        pass

    monkeypatch.setattr(compiler, "CompiledKernel", _FakeCompiled)
    compiled = _FakeCompiled()
    planned = launch_plan.PlannedLaunch(kern, (4, 2), dict(n=5, scale=0.5, BLOCK=16, num_warps=4),
                                        dict(X="q", Y="out"))
    first = []
    planned.launch({"q": "q0", "out": "o0"}, lambda fn, grid, **kw: first.append(kw) or compiled, eager=True)
    assert first == [dict(n=5, scale=0.5, BLOCK=16, num_warps=4, X="q0", Y="o0")]
    planned.launch({"q": "q1", "out": "o1"}, lambda *a, **kw: pytest.fail("the held kernel must launch"), True)
    assert compiled.calls == [((4, 2, 1), ("q1", 5, "o1", 0.5, 16, 3))]
    assert planned._args == [None, 5, None, 0.5, 16, 3]  # the first call's tensors are not kept


def test_a_cached_plan_keeps_no_tensor_of_its_calls_alive():
    import gc
    import weakref

    spec = AttentionSpec(1, 2, 2, 17, 17, 16, dtype="float32")
    kernel = load(spec)
    inp = make_inputs(spec)
    out, lse = launch.forward(kernel.functions, kernel.launch, inp.q, inp.k, inp.v, None, **call_args(spec))
    refs = [weakref.ref(t) for t in (inp.q, inp.k, inp.v, out, lse)]
    del inp, out, lse
    gc.collect()
    assert len(launch_plan.PLANS) == 1 and all(r() is None for r in refs)


def test_traced_or_interpreted_launches_keep_the_jit_path():
    planned = launch_plan.PlannedLaunch(object(), (1, 1), {}, {})
    seen = []
    for eager in (False, True):  # traced: nothing kept; eager but no CompiledKernel (interpreter): nothing kept
        planned.launch({}, lambda fn, grid, **kw: seen.append(eager) or None, eager=eager)
    planned.launch({}, lambda fn, grid, **kw: seen.append("again"), eager=True)
    assert seen == [False, True, "again"]


def test_a_rebased_descriptor_is_the_validated_one_over_new_memory():
    hopper = pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    spec = launch_plan.DescriptorSpec("k", (1, 1, 64, 64), launch._ws90_layout((1, 1, 64, 64), torch.bfloat16))
    a, b = (torch.randn(2, 3, 128, 64, dtype=torch.bfloat16) for _ in range(2))
    template = launch._ws90_descriptor(a, spec)
    assert isinstance(template, hopper.TensorDescriptor)
    moved = launch_plan._rebased(template, b)
    assert type(moved) is type(template) and moved.base is b and template.base is a
    assert launch_plan._rebased(template, None).base is None  # what a cached plan keeps
    assert (moved.shape, moved.strides, moved.block_shape, moved.layout) == \
        (template.shape, template.strides, template.block_shape, template.layout)
