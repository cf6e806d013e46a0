"""The mask operand is validated against q/k/v (shape with broadcast rules, dtype, device) before a kernel reads
it: a wrong-sized mask is a ValueError naming the operand, never an out-of-bounds read. Unit checks on metadata,
then the op end to end (a plan-cache hit must not skip the check)."""
from __future__ import annotations

import pytest
import torch
from _kernel_cases import call_args, load

from avo_inductor.kernels import launch
from avo_inductor.kernels.operands import check_mask_operand
from avo_inductor.kernels.reference import alibi_slopes, attention_reference, tolerance
from avo_inductor.spec import AttentionSpec

# (B, Hq, Hkv, Nq, Nk): ragged, batch >= 2, >= 2 kv heads, one GQA shape.
SHAPES = [(2, 4, 2, 17, 33), (3, 2, 2, 1, 47)]


def _qkv(b: int, hq: int, hkv: int, nq: int, nk: int, d: int = 16, dtype: torch.dtype = torch.float32,
         device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.randn(b, hq, nq, d, dtype=dtype, device=device), torch.randn(b, hkv, nk, d, dtype=dtype, device=device),
            torch.randn(b, hkv, nk, d, dtype=dtype, device=device))


def _valid(kind: str, b: int, hq: int, nq: int, nk: int) -> list[torch.Tensor]:
    """Every valid operand shape of ``kind``, broadcast forms included."""
    if kind == "bias":
        return [torch.randn(*s) for s in [(b, hq, nq, nk), (1, hq, nq, nk), (b, 1, nq, nk), (b, 1, 1, nk),
                                          (nq, nk), (nk,), (1, 1, 1, 1), (hq, 1, nk)]] + \
               [torch.randn(b, hq, nq, nk, dtype=dt) for dt in (torch.float16, torch.bfloat16, torch.float64)]
    if kind == "bool":
        return [torch.rand(*s) > 0.2 for s in [(b, hq, nq, nk), (b, 1, nq, nk), (1, 1, nq, nk), (nq, nk), (nk,),
                                               (b, hq, 1, nk)]]
    if kind == "padding":
        return [torch.rand(b, nk) > 0.2, (torch.rand(nk, b) > 0.2).t()]  # non-contiguous views too
    return [alibi_slopes(hq), alibi_slopes(hq).reshape(1, hq), alibi_slopes(hq).to(torch.float16)]


def _invalid(kind: str, b: int, hq: int, nq: int, nk: int) -> list[tuple[torch.Tensor | None, str]]:
    """(operand, a word the error must contain) for wrong batch, length, heads, dtype, rank and device."""
    wrong_b, wrong_h, wrong_q, wrong_k = b + 1, hq + 1, nq + 1, nk - 1
    if kind in ("bias", "bool"):
        make = (lambda *s: torch.randn(*s)) if kind == "bias" else (lambda *s: torch.rand(*s) > 0.5)
        other = (lambda *s: torch.rand(*s) > 0.5) if kind == "bias" else (lambda *s: torch.randn(*s))
        return [(make(wrong_b, hq, nq, nk), "shape"), (make(b, wrong_h, nq, nk), "shape"),
                (make(b, hq, wrong_q, nk), "shape"), (make(b, hq, nq, wrong_k), "shape"),
                (make(b, hq, nq, nk + 7), "shape"), (make(1, b, hq, nq, nk), "shape"),
                (other(b, hq, nq, nk), "dtype"), (torch.randint(0, 2, (b, hq, nq, nk)), "dtype"),
                (make(b, hq, nq, nk).to("meta"), "device"), (None, "needs a mask")]
    if kind == "padding":
        return [(torch.rand(b, nk - 8) > 0.5, "shape"), (torch.rand(1, nk) > 0.5, "shape"),
                (torch.rand(wrong_b, nk) > 0.5, "shape"), (torch.rand(b, 1, 1, nk) > 0.5, "shape"),
                (torch.rand(b, nk + 1) > 0.5, "shape"), (torch.randn(b, nk), "dtype"),
                (torch.ones(b, nk, dtype=torch.uint8), "dtype"), ((torch.rand(b, nk) > 0.5).to("meta"), "device"),
                (None, "needs a mask")]
    return [(alibi_slopes(wrong_h), "shape"), (alibi_slopes(hq)[:-1], "shape"), (alibi_slopes(2 * hq).reshape(2, hq), "shape"),
            (torch.ones(hq, dtype=torch.int32), "dtype"), (torch.ones(hq, dtype=torch.bool), "dtype"),
            (alibi_slopes(hq).to("meta"), "device"), (None, "needs a mask")]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["bias", "bool", "padding", "alibi"])
def test_valid_operands_pass(kind: str, shape: tuple[int, ...]) -> None:
    b, hq, _, nq, nk = shape
    q, k, v = _qkv(*shape)
    for mask in _valid(kind, b, hq, nq, nk):
        check_mask_operand(kind, mask, q, k, v)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["bias", "bool", "padding", "alibi"])
def test_invalid_operands_raise_naming_operand_and_shapes(kind: str, shape: tuple[int, ...]) -> None:
    b, hq, _, nq, nk = shape
    q, k, v = _qkv(*shape)
    for mask, needle in _invalid(kind, b, hq, nq, nk):
        with pytest.raises(ValueError, match=needle) as info:
            check_mask_operand(kind, mask, q, k, v)
        text = str(info.value)
        assert kind in text or "slopes" in text
        if needle == "shape":  # the offending shape and the expected one are both in the message
            assert str(tuple(mask.shape)) in text and ("expected" in text)


def test_mask_kind_none_refuses_a_mask_and_unknown_kinds_are_refused() -> None:
    q, k, v = _qkv(*SHAPES[0])
    check_mask_operand("none", None, q, k, v)
    with pytest.raises(ValueError, match="takes no mask"):
        check_mask_operand("none", torch.randn(2, 4, 17, 33), q, k, v)
    with pytest.raises(ValueError, match="mask_kind"):
        check_mask_operand("causal", None, q, k, v)


def test_check_needs_no_sync_and_works_on_meta_tensors() -> None:
    """Metadata only: q/k/v and mask on the meta device (no data at all) are checked the same way."""
    q, k, v = _qkv(*SHAPES[0], device="meta")
    check_mask_operand("padding", torch.ones(2, 33, dtype=torch.bool, device="meta"), q, k, v)
    with pytest.raises(ValueError, match=r"\(2, 32\)"):
        check_mask_operand("padding", torch.ones(2, 32, dtype=torch.bool, device="meta"), q, k, v)


# ---- end to end through the launcher (interpreter) -----------------------------------------------------------

@pytest.mark.parametrize("kind,bad", [
    ("padding", lambda b, hq, nq, nk: torch.rand(b, nk - 8) > 0.5),   # (B, 32) for 40 keys: read past the end
    ("padding", lambda b, hq, nq, nk: torch.rand(1, nk) > 0.5),       # batch 1 for batch 3
    ("bias", lambda b, hq, nq, nk: torch.randn(b, hq, nq, nk - 1)),
    ("alibi", lambda b, hq, nq, nk: alibi_slopes(hq + 2)),
])
def test_launcher_refuses_wrong_mask_even_after_a_plan_hit(kind: str, bad) -> None:
    """A valid call caches an eager launch plan; a later call with a wrong mask must not reuse it unchecked."""
    spec = AttentionSpec(3, 2, 2, 17, 40, 16, mask=kind)
    kernel = load(spec)
    q, k, v = _qkv(3, 2, 2, 17, 40)
    good = _valid(kind, 3, 2, 17, 40)[0]
    out, _ = launch.forward(kernel.functions, kernel.launch, q, k, v, good, **call_args(spec))
    ref = attention_reference(q, k, v, mask_kind=kind, mask=good)
    atol, rtol = tolerance("float32")
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    with pytest.raises(ValueError, match="shape"):
        launch.forward(kernel.functions, kernel.launch, q, k, v, bad(3, 2, 17, 40), **call_args(spec))


def test_launcher_accepts_a_broadcast_bias_and_matches_the_reference() -> None:
    spec = AttentionSpec(2, 4, 2, 17, 33, 16, mask="bias")
    kernel = load(spec)
    q, k, v = _qkv(2, 4, 2, 17, 33)
    bias = torch.randn(2, 1, 1, 33)  # per-key bias shared by heads and queries
    out, lse = launch.forward(kernel.functions, kernel.launch, q, k, v, bias, **call_args(spec))
    ref = attention_reference(q, k, v, mask_kind="bias", mask=bias)
    atol, rtol = tolerance("float32")
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    assert torch.isfinite(lse).all()
