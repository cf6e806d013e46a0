"""avo_inductor.kernel_for: the kernel for a spec from the store (verified on first use) or the template, registered
with the avo op, and numerically right when called through it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from cache_helpers import OLD_SW, make_record

import avo_inductor
from avo_inductor.backend.api import KernelHandle, KernelNotFound, kernel_for
from avo_inductor.cache.store import KernelStore
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.reference import attention_reference, make_inputs, tolerance
from avo_inductor.kernels.render import default_genome
from avo_inductor.spec import AttentionSpec, HardwareKey

CPU = HardwareKey.current("cpu")
SPECS = [
    AttentionSpec(2, 4, 2, 17, 33, 16, dtype="float32"),
    AttentionSpec(2, 2, 2, 47, 47, 24, dtype="float16", causal=True),
    AttentionSpec(3, 4, 2, 1, 33, 16, dtype="bfloat16", mask="padding"),
    AttentionSpec(2, 4, 2, 17, 17, 16, dtype="float32", causal=True, window=5, mask="bias"),
]


def _store(tmp_path: Path) -> KernelStore:
    return KernelStore(tmp_path / "store", shipped=False)


def _check_numerics(handle: KernelHandle, spec: AttentionSpec) -> None:
    """The handle, called through torch.ops.avo.attention, against the float64 reference on fresh inputs."""
    x = make_inputs(spec, "cpu")
    before = [t.clone() for t in (x.q, x.k, x.v)]
    out = handle(x.q, x.k, x.v, x.mask)
    ref = attention_reference(x.q, x.k, x.v, scale=spec.effective_scale, causal=spec.causal, window=spec.window,
                              mask_kind=spec.mask.value, mask=x.mask)
    atol, rtol = tolerance(spec.dtype)
    assert out.dtype == x.q.dtype and out.shape == (spec.batch, spec.q_heads, spec.q_len, spec.v_head_dim)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref.double(), atol=atol, rtol=rtol)
    assert all(torch.equal(a, b) for a, b in zip(before, (x.q, x.k, x.v)))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.to_text())
def test_baseline_is_registered_and_right(spec: AttentionSpec, tmp_path: Path) -> None:
    handle = kernel_for(spec, source="baseline", store=_store(tmp_path), device="cpu")
    assert handle.source == "baseline" and handle.layer == "template" and handle.record.spec == spec
    assert handle.kernel_id == handle.record.kernel_id
    _check_numerics(handle, spec)


def test_store_record_is_served_and_right(tmp_path: Path) -> None:
    spec = SPECS[0]
    store = _store(tmp_path)
    record = baseline_record(spec, CPU, genome=default_genome(spec, CPU).replace(num_stages=2))
    store.put(record)
    handle = kernel_for(spec, source="store", store=store, device="cpu")
    assert (handle.source, handle.layer, handle.kernel_id) == ("store", "local", record.kernel_id)
    assert handle.record == record
    assert kernel_for(spec, source="auto", store=store, device="cpu").kernel_id == record.kernel_id
    # a different exact shape in the same bucket is served by the same record, with the asked-for semantics
    nearby = dataclasses.replace(spec, q_len=20, kv_len=40)
    assert nearby.cache_key() == spec.cache_key()
    near = kernel_for(nearby, source="store", store=store, device="cpu")
    assert near.kernel_id == record.kernel_id and near.spec == nearby
    _check_numerics(near, nearby)


def test_inference_spec_is_served_by_a_training_record(tmp_path: Path) -> None:
    """The graph pass's own lookup decides: an inference site takes the same shape's training record."""
    spec = SPECS[0]
    trained = dataclasses.replace(spec, needs_grad=True)
    store = _store(tmp_path)
    store.put(baseline_record(trained, CPU))
    handle = kernel_for(spec, source="store", store=store, device="cpu")
    assert handle.source == "store" and handle.record.spec == trained and handle.spec == spec
    _check_numerics(handle, spec)


def test_miss(tmp_path: Path) -> None:
    spec = SPECS[1]
    store = _store(tmp_path)
    with pytest.raises(KernelNotFound, match="no record for 2,2,2,47,47,24 float16 causal"):
        kernel_for(spec, source="store", store=store, device="cpu")
    handle = kernel_for(spec, source="auto", store=store, device="cpu")
    assert handle.source == "baseline" and "no record" in handle.note and "template" in handle.describe()


def test_record_failing_first_use_verification_is_never_served(tmp_path: Path) -> None:
    """A record tuned on other software is verified before use; one that cannot run the launcher ABI fails."""
    broken = make_record(64, software=OLD_SW, batch=2)
    store = _store(tmp_path)
    key = store.put(broken)
    assert store.get(key).needs_reverify
    with pytest.raises(KernelNotFound, match=f"{broken.kernel_id} failed verification"):
        kernel_for(broken.spec, source="store", store=store, hardware=broken.hardware, device="cpu")
    fallback = kernel_for(broken.spec, source="auto", store=store, hardware=broken.hardware, device="cpu")
    assert fallback.source == "baseline" and fallback.kernel_id != broken.kernel_id
    assert store.get(key).needs_reverify  # a failure is not marked verified


def test_record_from_other_software_is_verified_once_then_served(tmp_path: Path) -> None:
    spec = SPECS[0]
    store = _store(tmp_path)
    record = dataclasses.replace(baseline_record(spec, CPU), software=OLD_SW)
    key = store.put(record)
    assert store.get(key).needs_reverify
    handle = kernel_for(spec, source="store", store=store, device="cpu")
    assert handle.source == "store" and handle.kernel_id == record.kernel_id
    assert not store.get(key).needs_reverify
    _check_numerics(handle, spec)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"source": "cache"}, "'cache'"),
    ({"source": "store", "template": "flash_v1"}, "'flash_v1'"),
    ({"source": "baseline", "template": "flash_v1", "genome": "g"}, "not both"),
])
def test_bad_arguments(kwargs: dict, needle: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=needle):
        kernel_for(SPECS[0], store=_store(tmp_path), device="cpu", **kwargs)


def test_exported_lazily_from_the_package() -> None:
    assert avo_inductor.kernel_for is kernel_for and avo_inductor.KernelHandle is KernelHandle
    assert {"kernel_for", "KernelHandle"} <= set(avo_inductor.__all__)
