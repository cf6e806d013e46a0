"""Verify a KernelRecord before use: allowlist, compile/import, correctness against the float64 reference.

Shapes: small ragged ones (lengths 1, 17, 33; q_len != kv_len) plus the record's own lengths at batch 1 and at most
two kv heads (lengths also capped on the CPU interpreter). Not the whole target: verification runs on first use,
inside the user's process, whose GPU memory belongs to the model, and a (4, 32, 4096, 4096) float64 check needs
tens of GB (the search's cascade checked the full target shape before the record was promoted). Every run uses
fresh random inputs, NaN-poisoned outputs, and checks that inputs are unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..artifact import KernelRecord
from ..spec import AttentionSpec
from .launch import backward, forward, spec_call_args
from .loader import LoadedKernel, check_record, load_record
from .reference import attention_reference, make_inputs, reference_grads, tolerance

RAGGED_LENGTHS = ((1, 17), (17, 33), (33, 17))
_CPU_MAX_Q, _CPU_MAX_KV = 48, 96


@dataclass(frozen=True)
class VerificationReport:
    """ok: every check passed. problems: one line per failure. max_rel_err: max |err| / max |ref| seen."""

    ok: bool
    problems: tuple[str, ...] = ()
    max_rel_err: float = 0.0


def verification_specs(spec: AttentionSpec, device: torch.device) -> list[AttentionSpec]:
    """Small ragged variants of ``spec`` (GQA ratio, head dims, dtype and masks kept) plus ``spec``'s own lengths at
    batch 1 and at most two kv heads (their GQA groups whole), lengths capped on CPU where the interpreter costs
    ~1 s per 16x16 tile step."""
    group = spec.gqa_group
    small = dict(batch=1, kv_heads=1, q_heads=min(group, 4) if group > 1 else 1)
    specs = [dataclasses.replace(spec, q_len=nq, kv_len=nk, dynamic=(), **small) for nq, nk in RAGGED_LENGTHS]
    if device.type == "cuda":
        kv_heads = min(spec.kv_heads, 2)
        specs.append(dataclasses.replace(spec, batch=1, kv_heads=kv_heads, q_heads=kv_heads * group, dynamic=()))
    else:
        specs.append(dataclasses.replace(spec, batch=1, q_heads=small["q_heads"] * 2, kv_heads=2, dynamic=(),
                                         q_len=min(spec.q_len, _CPU_MAX_Q), kv_len=min(spec.kv_len, _CPU_MAX_KV)))
    return specs


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, bool, float]:
    """(max_rel_err, within tolerance, max_abs_err); NaN anywhere is a failure."""
    if torch.isnan(got).any():
        return float("inf"), False, float("inf")
    err = (got.double() - ref).abs()
    scale = max(ref.abs().max().item(), 1e-6)
    return err.max().item() / scale, True, err.max().item()


def check_case(loaded: LoadedKernel, spec: AttentionSpec, device: torch.device, grads: bool) -> tuple[list[str], float]:
    """Run one spec through the kernel; returns (problems, max_rel_err)."""
    inp = make_inputs(spec, device)
    before = [t.clone() for t in (inp.q, inp.k, inp.v, inp.mask) if t is not None]
    args = spec_call_args(spec)
    b, hq, nq = spec.batch, spec.q_heads, spec.q_len
    out = torch.full((b, hq, nq, spec.v_head_dim), float("nan"), dtype=spec.torch_dtype, device=device)
    lse = torch.full((b, hq, nq), float("nan"), dtype=torch.float32, device=device)
    out, lse = forward(loaded.functions, loaded.launch, inp.q, inp.k, inp.v, inp.mask, out=out, lse=lse, **args)
    ref = attention_reference(inp.q, inp.k, inp.v, mask=inp.mask, **args)
    problems: list[str] = []
    atol, rtol = tolerance(spec.torch_dtype)
    rel, finite, _ = _rel_err(out, ref)
    if not finite or not torch.allclose(out.double(), ref, atol=atol, rtol=rtol):
        problems.append(f"{spec.short()}: forward mismatch (max rel err {rel:.3g}, nan={not finite})")
    worst = rel
    if grads and loaded.has_backward:
        do = torch.randn_like(out)
        bufs = {n: torch.full_like(t, float("nan")) for n, t in (("dq", inp.q), ("dk", inp.k), ("dv", inp.v))}
        got = backward(loaded.functions, loaded.launch, do, inp.q, inp.k, inp.v, out, lse, inp.mask, **bufs, **args)
        refs = reference_grads(inp.q, inp.k, inp.v, do, mask=inp.mask, **args)
        gatol, grtol = tolerance(spec.torch_dtype, grad=True)
        for name, g, r in zip(("dq", "dk", "dv"), got, refs):
            grel, gfinite, _ = _rel_err(g, r)
            worst = max(worst, grel)
            if not gfinite or not torch.allclose(g.double(), r, atol=gatol, rtol=grtol):
                problems.append(f"{spec.short()}: {name} mismatch (max rel err {grel:.3g}, nan={not gfinite})")
    after = [t for t in (inp.q, inp.k, inp.v, inp.mask) if t is not None]
    if any(not torch.equal(x, y) for x, y in zip(before, after)):
        problems.append(f"{spec.short()}: kernel modified its inputs")
    return problems, worst


def verify_record(record: KernelRecord, device: torch.device | str | None = None) -> VerificationReport:
    """Allowlist, load and check ``record`` on ``device`` (default: CUDA if available, else the CPU interpreter)."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        record = check_record(record)  # the static gate by trust tier (loader.check_record)
    except ValueError as exc:
        return VerificationReport(False, (f"static: {exc}",), float("inf"))
    try:
        loaded = load_record(record)
    except (ValueError, RuntimeError) as exc:
        return VerificationReport(False, (f"load: {exc}",), float("inf"))
    problems: list[str] = []
    worst = 0.0
    # Every kernel with a Triton backward gets it checked: an inference-tuned record also serves training sites.
    grads = bool(loaded.has_backward)
    for spec in verification_specs(record.spec, dev):
        try:
            case_problems, rel = check_case(loaded, spec, dev, grads)
        except Exception as exc:  # a kernel that fails to compile or crashes is a verification failure, not a crash
            case_problems, rel = [f"{spec.short()}: {type(exc).__name__}: {str(exc)[:300]}"], float("inf")
        problems += case_problems
        worst = max(worst, rel)
    return VerificationReport(not problems, tuple(problems), worst)
