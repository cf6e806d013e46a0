"""The one spec text form: canonical round trip (random specs), the aliases the old parsers took, and refusals
that name the offending token."""
from __future__ import annotations

import dataclasses
import math
import random

import pytest

from avo_inductor.cache.admin import parse_spec_text as admin_parse
from avo_inductor.spec import (
    DTYPES,
    AttentionSpec,
    MaskKind,
    parse_spec_text,
    spec_text,
)


def _random_spec(rng: random.Random) -> AttentionSpec:
    kv_heads = rng.choice([1, 2, 3, 8])
    head_dim = rng.choice([16, 24, 64, 128, 256])
    return AttentionSpec(
        batch=rng.randint(1, 64), q_heads=kv_heads * rng.choice([1, 2, 4, 7]), kv_heads=kv_heads,
        q_len=rng.choice([1, 7, 17, 113, 4096, 100_000]), kv_len=rng.choice([1, 33, 47, 1000, 32768]),
        head_dim=head_dim, v_head_dim=rng.choice([head_dim, 16, 40]), dtype=rng.choice(DTYPES),
        scale=rng.choice([None, 1 / math.sqrt(head_dim), rng.uniform(1e-3, 3.0)]),
        causal=rng.random() < 0.5, window=rng.choice([None, 1, 256, 4095]), mask=rng.choice(list(MaskKind)),
        dropout_p=rng.choice([0.0, 0.1, rng.uniform(0.0, 0.99)]), needs_grad=rng.random() < 0.5,
        dynamic=rng.choice([(), ("q_len",), ("batch", "q_len", "kv_len")]),
    )


@pytest.mark.parametrize("seed", range(5))
def test_random_specs_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        spec = _random_spec(rng)
        text = spec.to_text()
        assert AttentionSpec.from_text(text) == spec, text
        assert spec.short() == text == spec_text(spec)
        assert "\n" not in text and text == " ".join(text.split())


@pytest.mark.parametrize(("spec", "text"), [
    (AttentionSpec(2, 32, 8, 1000, 1000, 128), "2,32,8,1000,1000,128 bfloat16 full"),
    (AttentionSpec(2, 32, 8, 1000, 1000, 128, causal=True, window=256, mask="padding", needs_grad=True),
     "2,32,8,1000,1000,128 bfloat16 causal/win256+padding train"),
    (AttentionSpec(1, 8, 8, 1, 4096, 64, 32, "float16"), "1,8,8,1,4096,64,32 float16 full"),
    (AttentionSpec(4, 16, 2, 17, 33, 24, dtype="float32", window=5, mask="alibi", dropout_p=0.25, scale=0.5,
                   dynamic=("q_len", "kv_len")),
     "4,16,2,17,33,24 float32 full/win5+alibi dropout=0.25 scale=0.5 dynamic=q_len,kv_len"),
], ids=["plain", "masked-train", "decode-dv", "everything"])
def test_canonical_text(spec: AttentionSpec, text: str) -> None:
    assert spec.to_text() == text
    assert parse_spec_text(text) == spec


@pytest.mark.parametrize(("text", "expected"), [
    # the benchmarks' comma rows: a window there always meant a causal sliding window
    ("4,32,8,4096,128,causal", AttentionSpec(4, 32, 8, 4096, 4096, 128, causal=True)),
    ("4,32,8,4096,128,window1024,train",
     AttentionSpec(4, 32, 8, 4096, 4096, 128, causal=True, window=1024, needs_grad=True)),
    ("1,32,8,1,4096,128,none", AttentionSpec(1, 32, 8, 1, 4096, 128)),
    ("8,16,16,2048,64,alibi", AttentionSpec(8, 16, 16, 2048, 2048, 64, mask="alibi")),
    # the cache CLI's form: short dtype names, words joined by "+"
    ("2,32,8,1000,1000,128 bf16 causal+win256+padding+train",
     AttentionSpec(2, 32, 8, 1000, 1000, 128, causal=True, window=256, mask="padding", needs_grad=True)),
    ("1,8,8,1,4096,64,32 fp16 full", AttentionSpec(1, 8, 8, 1, 4096, 64, 32, "float16")),
    # the old short() print: D/DV, "/" between mask words; any order, "window=W", "p=P", "infer"
    ("2,4,2,17,33,16/24 float32 causal/win3", AttentionSpec(2, 4, 2, 17, 33, 16, 24, "float32", causal=True,
                                                             window=3)),
    ("2,4,2,17,33,16 infer bias half p=0.5 window=9 full",
     AttentionSpec(2, 4, 2, 17, 33, 16, dtype="float16", mask="bias", dropout_p=0.5, window=9)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_aliases(text: str, expected: AttentionSpec) -> None:
    assert parse_spec_text(text) == expected
    assert admin_parse(text) == expected  # the cache CLI reads specs with the same parser


def test_defaults_from_the_caller() -> None:
    """A CLI's --dtype / --train fill what the text leaves out; what the text says wins."""
    assert parse_spec_text("2,4,2,17,16,causal", dtype="float16").dtype == "float16"
    assert parse_spec_text("2,4,2,17,16 bf16 causal", dtype="float16").dtype == "bfloat16"
    assert parse_spec_text("2,4,2,17,16,causal", needs_grad=True).needs_grad
    assert parse_spec_text("2,4,2,17,16,causal,train").needs_grad


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty spec"),
    ("   ", "empty spec"),
    ("1,2,3", "5, 6 or 7 dimensions"),
    ("1,2,2,4,4,8,8,8", "5, 6 or 7 dimensions"),
    ("1,2,x,4,5,6", "'x'"),
    ("1,2,2,4,4,8 bf16 sideways", "'sideways'"),
    ("1,2,2,4,4,8 causal full", "'full' contradicts 'causal'"),
    ("1,2,2,4,4,8 bf16 fp32", "'fp32' contradicts 'bf16'"),
    ("1,2,2,4,4,8 bias+alibi", "'alibi' contradicts 'bias'"),
    ("1,2,2,4,0,8", "kv_len must be >= 1"),
    ("1,2,2,-4,4,8", "q_len must be >= 1"),
    ("1,2,2,4,4,99999999999999999999999", "head_dim"),
    ("1,2,2,4,4,8 win0", "window"),
    ("1,2,2,4,4,8 scale=nan", "'scale=nan'"),
    ("1,2,2,4,4,8 scale=-1", "scale"),
    ("1,2,2,4,4,8 dropout=1.5", "dropout_p"),
    ("1,2,2,4,4,8 dropout=1e999", "'dropout=1e999'"),
    ("1,2,2,4,4,8 dynamic=q_len,heads", "'heads'"),
    ("1,3,2,4,4,8", "multiple of kv_heads"),
    ("1,2,2,4,4,8 int8", "'int8'"),
    ("1,2,2,4,4,8/", "v_head_dim"),
    ("1,2,2,4,8/4", "D/DV needs"),
    ("1,2,2,4,4,8 " + "causal " * 100, "longer than"),
], ids=repr)
def test_refusals_name_the_bad_token(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_spec_text(text)
    assert needle in str(info.value), str(info.value)


def test_replace_keeps_round_trip() -> None:
    """A window without causal stays distinguishable from a causal window ("full/winW")."""
    base = AttentionSpec(2, 4, 2, 17, 33, 16, causal=True, window=8)
    flag_off = dataclasses.replace(base, causal=False)
    assert flag_off.to_text() != base.to_text()
    assert parse_spec_text(flag_off.to_text()) == flag_off
