"""Settings from the environment / configure(), and the keys: spec validation, bucketing, round trips."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from avo_inductor import configure, get_settings
from avo_inductor.artifact import KernelMetrics, KernelRecord
from avo_inductor.kernels.genome import GENOME_SPACE, KernelGenome
from avo_inductor.settings import settings_from_env
from avo_inductor.spec import AttentionSpec, HardwareKey, MaskKind, SoftwareKey, seq_bucket, store_key


def test_env_parsing_and_defaults(tmp_path: Path) -> None:
    env = {"AVO_CACHE_DIR": str(tmp_path), "AVO_CACHE_PATH": os.pathsep.join(["/a", "/b"]), "AVO_ON_MISS": "Error",
           "AVO_STRICT": "yes", "AVO_LOG": "0"}
    s = settings_from_env(env)
    assert s.cache_dir == tmp_path and s.cache_path == (Path("/a"), Path("/b"))
    assert s.on_miss == "error" and s.strict and not s.log
    assert settings_from_env({}).on_miss == "fallback"


@pytest.mark.parametrize("name,value,needle", [
    ("AVO_ON_MISS", "sometimes", "fallback, search, error"),
    ("AVO_STRICT", "maybe", "AVO_STRICT"),
    ("AVO_AGENT_MAX_TOKENS", "lots", "AVO_AGENT_MAX_TOKENS"),
])
def test_bad_env_value_names_variable_and_choices(name: str, value: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        settings_from_env({name: value})
    assert value in str(info.value)


def test_configure_overrides_and_rejects_unknown(tmp_path: Path) -> None:
    s = configure(on_miss="error", cache_dir=str(tmp_path))
    assert get_settings() is s and s.cache_dir == tmp_path
    with pytest.raises(ValueError, match="unknown avo setting"):
        configure(on_mis="error")
    with pytest.raises(ValueError, match="on_miss"):
        configure(on_miss="bogus")
    assert "***" in str(configure(anthropic_api_key="sk-secret").to_dict()["anthropic_api_key"])


_BOOL_FIELDS = {"strict": "AVO_STRICT", "log": "AVO_LOG", "use_shipped": "AVO_USE_SHIPPED",
                "require_signed": "AVO_REQUIRE_SIGNED"}


@pytest.mark.parametrize("field", sorted(_BOOL_FIELDS))
@pytest.mark.parametrize("text,expected", [("no", False), ("0", False), ("false", False), ("OFF", False),
                                           ("yes", True), ("1", True), ("True", True), (" on ", True)])
def test_bool_strings_parse_alike_in_configure_and_env(field: str, text: str, expected: bool) -> None:
    """configure(strict="no") used to keep the truthy string "no"; both paths now give the same bool."""
    assert getattr(configure(**{field: text}), field) is expected
    assert getattr(settings_from_env({_BOOL_FIELDS[field]: text}), field) is expected


@pytest.mark.parametrize("field", sorted(_BOOL_FIELDS))
@pytest.mark.parametrize("bad", ["maybe", "2", 2, 0.5, None, [], "nein"])
def test_bad_bools_refused_in_configure_and_env(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=field):
        configure(**{field: bad})
    if isinstance(bad, str):
        with pytest.raises(ValueError, match=_BOOL_FIELDS[field]):
            settings_from_env({_BOOL_FIELDS[field]: bad})


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "-1", "1e999", "", "ten", float("nan"),
                                 float("inf"), -0.01, True])
def test_dollar_cap_must_be_finite_and_non_negative(bad: object) -> None:
    """AVO_AGENT_MAX_DOLLARS=nan used to disable the dollar cap (every `spent >= nan` is False)."""
    with pytest.raises(ValueError, match="agent_max_dollars"):
        configure(agent_max_dollars=bad)
    if isinstance(bad, str) and bad:
        with pytest.raises(ValueError, match="AVO_AGENT_MAX_DOLLARS"):
            settings_from_env({"AVO_AGENT_MAX_DOLLARS": bad})


@pytest.mark.parametrize("bad", ["0", "-5", "1.5", "1e9", "lots", str(10**400), 0, -1, 2.0, True, 10**400])
def test_token_cap_bounded_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="agent_max_tokens"):
        configure(agent_max_tokens=bad)
    if isinstance(bad, str):
        with pytest.raises(ValueError, match="AVO_AGENT_MAX_TOKENS"):
            settings_from_env({"AVO_AGENT_MAX_TOKENS": bad})


def test_numbers_as_text_parse_alike(tmp_path: Path) -> None:
    s = configure(agent_max_dollars="2.5", agent_max_tokens="1000", cache_path=os.pathsep.join(["/x", "/y"]))
    e = settings_from_env({"AVO_AGENT_MAX_DOLLARS": "2.5", "AVO_AGENT_MAX_TOKENS": "1000",
                           "AVO_CACHE_PATH": os.pathsep.join(["/x", "/y"])})
    assert (s.agent_max_dollars, s.agent_max_tokens, s.cache_path) == (2.5, 1000, (Path("/x"), Path("/y")))
    assert (e.agent_max_dollars, e.agent_max_tokens, e.cache_path) == (s.agent_max_dollars, s.agent_max_tokens,
                                                                       s.cache_path)


@pytest.mark.parametrize("field,bad", [("cache_dir", 5), ("cache_dir", ""), ("cache_path", 5), ("cache_path", [1]),
                                       ("trusted_keys", 5), ("trusted_keys", [b"ab"]), ("agent_model", ""),
                                       ("on_miss", None), ("anthropic_api_key", 123)])
def test_wrong_types_are_value_errors_naming_the_setting(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=field):
        configure(**{field: bad})


def test_nan_budget_never_reads_as_budget_left() -> None:
    """Defence in depth: a NaN slipped past validation (e.g. a NaN spend) reads as spent, not as money left."""
    from avo_inductor.search.budget import Budget

    with pytest.raises(ValueError, match="max_dollars"):
        Budget(max_tokens=100, max_dollars=float("nan"))
    with pytest.raises(ValueError, match="max_tokens"):
        Budget(max_tokens=0, max_dollars=1.0)
    b = Budget(max_tokens=100, max_dollars=1.0)
    assert b.exhausted() == ""
    b.dollars_used = float("nan")
    assert "dollar" in b.exhausted() and b.refuse_next("claude-sonnet-4-6", 10)
    b = Budget(max_tokens=100, max_dollars=1.0)
    b.set_deadline(float("nan"))
    assert "wall-clock" in b.out_of_time()


@pytest.mark.parametrize("n,bucket", [(1, 1), (16, 16), (17, 32), (113, 128), (1000, 1024), (4096, 4096)])
def test_seq_bucket(n: int, bucket: int) -> None:
    assert seq_bucket(n) == bucket


def test_dynamic_lengths_share_a_key() -> None:
    a = AttentionSpec(2, 8, 2, 1000, 1000, 64, causal=True)
    b = AttentionSpec(2, 8, 2, 1020, 1020, 64, causal=True, dynamic=("q_len", "kv_len"))
    assert a.cache_key() == b.cache_key()
    assert a.cache_key() != AttentionSpec(2, 8, 2, 1000, 1000, 64).cache_key()
    assert AttentionSpec(2, 8, 2, 17, 17, 64, scale=1 / math.sqrt(64)).cache_key() == \
        AttentionSpec(2, 8, 2, 17, 17, 64).cache_key()


@pytest.mark.parametrize("kwargs,needle", [
    ({"q_heads": 6, "kv_heads": 4}, "multiple"),
    ({"head_dim": 0}, "head_dim"),
    ({"dtype": "int8"}, "dtype"),
    ({"dropout_p": 1.0}, "dropout"),
    ({"window": 0}, "window"),
    ({"scale": float("nan")}, "scale"),
])
def test_spec_validation(kwargs: dict, needle: str) -> None:
    base = dict(batch=1, q_heads=8, kv_heads=2, q_len=17, kv_len=17, head_dim=64)
    with pytest.raises(ValueError, match=needle):
        AttentionSpec(**{**base, **kwargs})


def test_spec_roundtrip_and_flops() -> None:
    spec = AttentionSpec(4, 32, 8, 4096, 4096, 128, 96, "float16", 0.1, True, 1024, MaskKind.BIAS, 0.0, True, ("q_len",))
    assert AttentionSpec.from_dict(spec.to_dict()) == spec
    dense = AttentionSpec(4, 32, 32, 4096, 4096, 128)
    assert dense.flops() == pytest.approx(4 * 4 * 32 * 4096 * 4096 * 128)
    with pytest.raises(ValueError, match="unknown"):
        AttentionSpec.from_dict({**spec.to_dict(), "bogus": 1})


def test_hardware_software_keys() -> None:
    hw = HardwareKey("nvidia", "NVIDIA H100 80GB HBM3", (9, 0), 132)
    assert hw.slug == "nvidia-nvidia-h100-80gb-hbm3-sm90-132"
    assert HardwareKey.from_dict(hw.to_dict()) == hw
    assert HardwareKey.current("cpu").vendor == "cpu"
    sw = SoftwareKey.current()
    assert SoftwareKey.from_dict(sw.to_dict()) == sw and "+" not in sw.torch
    assert store_key(AttentionSpec(1, 2, 2, 3, 3, 16), hw).startswith(hw.slug + "/")


def test_genome_validation_and_space() -> None:
    g = KernelGenome()
    assert KernelGenome.from_dict(g.to_dict()) == g
    for name, values in GENOME_SPACE.items():
        for value in values:
            g.replace(**{name: value})  # every value in the search space is a valid genome
    with pytest.raises(ValueError, match="block_m"):
        KernelGenome(block_m=48)
    with pytest.raises(ValueError, match="kv_splits"):
        KernelGenome(kv_splits=3)


def test_record_sha_and_roundtrip() -> None:
    spec = AttentionSpec(1, 2, 2, 17, 17, 16)
    record = KernelRecord(spec, HardwareKey.current("cpu"), SoftwareKey.current(), "import triton\n", "attn_fwd",
                          {"grid": "fwd"}, metrics=KernelMetrics(median_ms=1.0, speedup=1.2))
    again = KernelRecord.from_dict(record.to_dict())
    assert again == record and again.kernel_id == record.kernel_id
    with pytest.raises(ValueError, match="sha256 mismatch"):
        KernelRecord.from_dict({**record.to_dict(), "source": "import triton  # tampered\n"})
    with pytest.raises(ValueError, match="newer"):
        KernelRecord.from_dict({**record.to_dict(), "format": 99})
    with pytest.raises(ValueError, match="malformed"):
        KernelRecord.from_dict({"spec": spec.to_dict()})
