"""Correctness checks the sandboxed worker runs on a candidate (see ANTICHEAT.md for the cheat each one catches).

Per shape: fresh random inputs (never zeros) copied before and compared after the call (a kernel must not write its inputs);
run 1 into a NaN-poisoned output (every element must be written, which is also the ghost-replay check: a no-op
kernel leaves NaN); run 2 into an output and scratch pre-filled with other junk (must agree with run 1: reading
uninitialized memory shows up here); run 3 with new inputs into run 1's buffer (a stale or cached result shows up
unchanged). The candidate runs first; the float64 reference is computed afterwards, and every element is compared.
A padding mask over two or more batches keeps every key of its last row (``check_inputs``): random prefixes rarely
reach the last keys, where split-K and span-skipping kernels go wrong.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch

from ..kernels import fallback, launch
from ..kernels.reference import attention_reference, make_inputs, tolerance
from ..spec import AttentionSpec, MaskKind

_SCRATCH_JUNK = (float("nan"), 1.0e4)  # run 1 / run 2 pre-fill of allocator memory and the output buffer
_OUT_JUNK = 1.0e3


class CheckFailure(Exception):
    """A correctness check failed; the message is fed back to the variation operator."""


@dataclass(frozen=True)
class ShapeStats:
    spec: AttentionSpec
    max_abs_err: float
    rel_err: float


def scaled(spec: AttentionSpec, q_len: int, kv_len: int, *, batch: int = 1, max_kv_heads: int = 1,
           max_group: int = 4) -> AttentionSpec:
    """``spec`` with new lengths and fewer heads, keeping head dims, dtype, GQA, mask kind, causal and window."""
    kv_heads = min(spec.kv_heads, max_kv_heads)
    group = min(spec.gqa_group, max_group)
    return dataclasses.replace(spec, batch=batch, q_heads=kv_heads * group, kv_heads=kv_heads, q_len=q_len,
                               kv_len=kv_len, dynamic=())


def small_shapes(spec: AttentionSpec, on_cpu: bool, *, held_out: bool = False, quick: bool = False) -> list[AttentionSpec]:
    """Ragged lengths, none a multiple of a tile, q_len != kv_len both ways; the held-out set is used only at promotion.

    On CPU the interpreter costs ~30-50 ms per tile iteration, so lengths stay under ~120 and heads at one group.
    Decode specs (q_len <= 16) keep short query lengths, which is what their kernels are tuned for.
    """
    decode = spec.is_decode
    if held_out:
        pairs = [(3, 50), (spec.q_len if decode else 47, 29), (5, 97)] if on_cpu else \
                [(3, 250), (spec.q_len if decode else 200, 77), (7, 2047), (1, 4099)]
        batches = (2, 1, 1, 2)
    else:
        pairs = [(1, 17), (min(spec.q_len, 16) if decode else 17, 113), (1 if decode else 33, 17)] if on_cpu else \
                [(1, 17), (min(spec.q_len, 16) if decode else 113, 113), (17, 1000), (1 if decode else 129, 67)]
        batches = (1, 1, 2, 2)
    if quick:
        pairs = pairs[:2]
    kv_cap = 1 if on_cpu else 2
    return [scaled(spec, q, k, batch=batches[i], max_kv_heads=kv_cap) for i, (q, k) in enumerate(pairs)]


def target_shape(spec: AttentionSpec, on_cpu: bool) -> AttentionSpec:
    """The spec itself on GPU; on CPU scaled so the longer length is <= 48, keeping the q/kv length ratio."""
    if not on_cpu:
        return dataclasses.replace(spec, dynamic=())
    factor = max(1.0, max(spec.q_len, spec.kv_len) / 48)
    return scaled(spec, max(1, round(spec.q_len / factor)), max(1, round(spec.kv_len / factor)), batch=1,
                  max_kv_heads=1, max_group=2)


def snapshot(tensors: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """Copies of the inputs, on their own device, for ``modified`` to compare against after the kernel ran (a
    sha256 of the bytes needed a host copy and a CPU pass over all of them: 4.3 GB for a (4, 32, 4096, 4096) bf16
    bias, twice per check)."""
    return {name: t.detach().clone() for name, t in tensors.items() if t is not None}


def modified(tensors: dict[str, torch.Tensor | None], before: dict[str, torch.Tensor]) -> list[str]:
    """Names of the inputs whose values differ from ``before`` (the inputs are random normals: no NaN to miscompare)."""
    out = []
    for name, old in before.items():
        now = tensors[name]
        if now is None or not torch.equal(now.detach(), old):
            out.append(name)
    return out


def _dirty_allocator(device: torch.device, nbytes: int, value: float) -> None:
    """Hand the allocator a freed block full of ``value``, so scratch the launcher allocates with torch.empty
    (split-kv partials) starts as junk that differs between runs."""
    junk = torch.full((max(1, nbytes // 4),), value, dtype=torch.float32, device=device)
    del junk


def run_forward(loaded: Any, spec: AttentionSpec, inputs: Any, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Launch the candidate's forward through the trusted launcher into harness-allocated ``out``/``lse``."""
    launch.forward(loaded.functions, loaded.launch, inputs.q, inputs.k, inputs.v, inputs.mask,
                   **launch.spec_call_args(spec), out=out, lse=lse)


def run_training_step(loaded: Any, spec: AttentionSpec, inputs: Any, out: torch.Tensor, lse: torch.Tensor,
                      do: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Forward into ``out``/``lse``, then the candidate's Triton backward (the recompute fallback, as the op would
    use, for kernels without one): what a training step costs with this kernel."""
    run_forward(loaded, spec, inputs, out, lse)
    args = launch.spec_call_args(spec)
    if loaded.has_backward:
        return launch.backward(loaded.functions, loaded.launch, do, inputs.q, inputs.k, inputs.v, out, lse,
                               inputs.mask, **args)
    return fallback.recompute_backward(do, inputs.q, inputs.k, inputs.v, inputs.mask, **{
        **args, "scale": spec.effective_scale})[:3]


def _alloc(spec: AttentionSpec, device: torch.device, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.full((spec.batch, spec.q_heads, spec.q_len, spec.v_head_dim), fill, dtype=spec.torch_dtype, device=device)
    lse = torch.full((spec.batch, spec.q_heads, spec.q_len), fill, dtype=torch.float32, device=device)
    return out, lse


def _scratch_bytes(spec: AttentionSpec, loaded: Any) -> int:
    splits = int(getattr(loaded.launch, "kv_splits", 1))
    return 4 * spec.batch * spec.q_heads * splits * spec.q_len * (spec.v_head_dim + 1)


def compare(out: torch.Tensor, ref: torch.Tensor, spec: AttentionSpec, what: str) -> tuple[float, float]:
    """Every element within atol + rtol*|ref|; returns (max_abs_err, relative Frobenius error) or raises."""
    shape = (f"shape B{spec.batch} Hq{spec.q_heads} Hkv{spec.kv_heads} Nq{spec.q_len} Nk{spec.kv_len} "
             f"D{spec.head_dim}/{spec.v_head_dim}")
    if out.dtype != spec.torch_dtype or tuple(out.shape) != tuple(ref.shape):
        raise CheckFailure(f"{what}: output is {out.dtype} {tuple(out.shape)}, expected {spec.torch_dtype} {tuple(ref.shape)}")
    o = out.detach().to(torch.float64)
    bad = ~torch.isfinite(o)
    if bad.any():
        nan = int(torch.isnan(o).sum())
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise CheckFailure(f"{what}: {int(bad.sum())} of {o.numel()} output elements are not finite ({nan} NaN: "
                           f"never written from the NaN poison, or computed NaN), first at (b,h,i,d)={idx}; {shape}")
    atol, rtol = tolerance(spec.torch_dtype)
    err = (o - ref).abs()
    over = err > atol + rtol * ref.abs()
    max_abs = float(err.max()) if err.numel() else 0.0
    rel = float(torch.linalg.vector_norm(o - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
    if over.any():
        idx = tuple(int(i) for i in over.nonzero()[0])
        rows = sorted({int(i) for i in over.nonzero()[:, 2].tolist()})
        raise CheckFailure(f"{what}: {int(over.sum())} of {o.numel()} elements outside atol={atol} rtol={rtol} "
                           f"(max abs err {max_abs:.3g}, first at (b,h,i,d)={idx}, query rows {rows[:8]}"
                           f"{'…' if len(rows) > 8 else ''}); {shape}")
    return max_abs, rel


def _reference(spec: AttentionSpec, inputs: Any) -> torch.Tensor:
    return attention_reference(inputs.q, inputs.k, inputs.v, scale=spec.scale, causal=spec.causal,
                               window=spec.window, mask_kind=spec.mask.value, mask=inputs.mask)


def check_inputs(spec: AttentionSpec, device: torch.device, rng: random.Random) -> Any:
    """Fresh random inputs for one run; a padding mask over two or more batches keeps every key of its last row.

    Random prefix lengths rarely reach the last keys, yet that is where split-K and span-skipping kernels go
    wrong: flash_v1 once re-ran the previous split's keys in a split starting past the last key, which only a
    row kept through the final split exposes (about one random draw in ten at 70 keys and 4 splits).
    """
    x = make_inputs(spec, device, seed=rng.getrandbits(62))
    if spec.mask is MaskKind.PADDING and spec.batch >= 2 and x.mask is not None:
        x.mask[-1] = True
    return x


def check_shape(loaded: Any, spec: AttentionSpec, device: torch.device, rng: random.Random,
                full: bool = True) -> ShapeStats:
    """The three-run check described in the module docstring (``full`` False: run 1 only, for big targets)."""
    x = check_inputs(spec, device, rng)
    tensors = {"q": x.q, "k": x.k, "v": x.v, "mask": x.mask}
    before = snapshot(tensors)
    scratch = _scratch_bytes(spec, loaded)
    out1, lse1 = _alloc(spec, device, float("nan"))
    _dirty_allocator(device, scratch, _SCRATCH_JUNK[0])
    run_forward(loaded, spec, x, out1, lse1)
    changed = modified(tensors, before)
    del before
    if changed:
        raise CheckFailure(f"the kernel modified its inputs {changed} (inputs must stay unchanged)")
    if bool(torch.isnan(lse1).any()):
        raise CheckFailure(f"LSE has {int(torch.isnan(lse1).sum())} NaN elements: not written for every row")
    if not full:  # the float64 reference is sliced by attention_reference where it would not fit in memory
        return ShapeStats(spec, *compare(out1, _reference(spec, x), spec, "run 1 (target size)"))
    first = out1.clone()
    out2, lse2 = _alloc(spec, device, _OUT_JUNK)
    _dirty_allocator(device, scratch, _SCRATCH_JUNK[1])
    run_forward(loaded, spec, x, out2, lse2)
    y = check_inputs(spec, device, rng)
    run_forward(loaded, spec, y, out1, lse1)  # reused buffer, still holding run 1's answer
    ref_x = _reference(spec, x)  # computed only after the candidate ran
    stats = compare(first, ref_x, spec, "run 1")
    try:
        compare(out2, ref_x, spec, "run 2 (other scratch pre-fill)")
    except CheckFailure as exc:
        agree = (out2.double() - first.double()).abs()
        raise CheckFailure(f"two runs on the same inputs disagree (max diff {float(agree.max()):.3g}): the kernel "
                           f"reads memory it did not write (scratch / uninitialized output). {exc}") from None
    ref_y = _reference(spec, y)
    try:
        compare(out1, ref_y, spec, "run 3 (fresh inputs, reused buffer)")
    except CheckFailure as exc:
        if torch.equal(out1, first):
            raise CheckFailure("output did not change when the inputs changed: stale or cached result") from None
        raise exc
    return ShapeStats(spec, *stats)
