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
