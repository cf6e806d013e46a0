"""Class records: a record tuned at one shape serves a neighbouring shape of its class after verification there.

Records are the untuned template kernel (kernels/baseline.py) with measured-looking metrics: the CPU interpreter
cannot time a GPU kernel, and what is under test is which record the store and the graph pass choose, that the
chosen kernel is verified at the site's own ragged lengths before it runs, and that the outcome is remembered.
Kernels use 64-wide tiles so the interpreter's verification stays a few seconds.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cache_helpers import make_record
from torch._dynamo.utils import counters

import avo_inductor
from avo_inductor.artifact import KernelMetrics, KernelRecord
from avo_inductor.backend import graph_pass
from avo_inductor.cache import classes
from avo_inductor.cache.store import KernelStore
from avo_inductor.kernels.baseline import baseline_record
from avo_inductor.kernels.render import default_genome
from avo_inductor.kernels.tiers import as_source_record
from avo_inductor.spec import AttentionSpec, HardwareKey, store_key

CPU = HardwareKey.current("cpu")
TUNED = AttentionSpec(2, 2, 2, 64, 64, 16, dtype="float32", causal=True)
GOOD = KernelMetrics(median_ms=1.0, speedup=0.9, baseline="flex", baseline_ms=0.9, speedup_vs_fallback=1.5,
                     fallback_ms=1.5)


def _record(spec: AttentionSpec = TUNED, metrics: KernelMetrics = GOOD) -> KernelRecord:
    genome = default_genome(spec, CPU).replace(block_m=64, block_n=64)
    return baseline_record(spec, CPU, genome=genome).with_changes(metrics=metrics)


def _wrong_record() -> KernelRecord:
    """A class record whose forward is wrong: its scores are scaled by 1.01 (a source record, edited)."""
    good = as_source_record(_record())
    anchor = "qk_scale = tl.cast(sm_scale, tl.float32)"
    assert anchor in good.source
    return good.with_changes(source=good.source.replace(anchor, "qk_scale = tl.cast(sm_scale * 1.01, tl.float32)",
                                                        1), sha256="")


def _store() -> KernelStore:
    return KernelStore.from_settings()


class HandWritten(nn.Module):
    """Causal attention written by hand (rewritten to the avo op on a hit, to SDPA on a miss)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        s = (q @ k.transpose(-2, -1)) * 0.25
        s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
        return torch.softmax(s, dim=-1) @ v


class Causal(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _qkv(n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(2, 2, n, 16, generator=g) for _ in range(3))


def test_a_neighbour_serves_a_ragged_shape_after_verification(seeded: torch.Generator) -> None:
    """Tuned at 64: a hand-written site at 17 (bucket 32) runs its kernel, verified at the site's own lengths;
    explain() names the class hit and the exact shape is queued for tuning. AVO_ON_MISS=error accepts a verified
    class hit as a tuned kernel. (113, the other ragged length, is the failing test's site.)"""
    record = _record()
    _store().put(record)
    avo_inductor.configure(on_miss="error")
    args = _qkv(17, seeded)
    model = HandWritten()
    counters.clear()
    out = torch.compile(model, backend="avo")(*args)
    torch.testing.assert_close(out, model(*args), atol=1e-4, rtol=1e-4)
    assert (counters["avo"]["class_hit"], counters["avo"]["class_verified"]) == (1, 1)
    assert (counters["avo"]["miss"], counters["avo"]["class_rejected"]) == (0, 0)
    (site,) = avo_inductor.explain(model, *args, quiet=True)
    assert (site.action, site.kernel_id, site.tuned_at, site.spec.q_len) == ("avo", record.kernel_id, TUNED, 17)
    assert f"avo/hit (class, tuned at {TUNED.to_text()})" in site.summary()
    assert "1.50x the fallback where tuned" in site.reason
    assert [p.key for p in _store().pending()] == [store_key(site.spec, CPU)]


@pytest.mark.parametrize(("why", "tuned", "metrics", "served"), [
    ("neighbour", TUNED, GOOD, True),
    ("far shape", dataclasses.replace(TUNED, q_len=256, kv_len=256), GOOD, False),
    ("other mask kind", dataclasses.replace(TUNED, mask="bias"), GOOD, False),
    ("other dtype", dataclasses.replace(TUNED, dtype="float16"), GOOD, False),
    ("decode record", dataclasses.replace(TUNED, q_len=8, kv_len=32), GOOD, False),
    ("window", dataclasses.replace(TUNED, window=8), GOOD, False),
    ("margin too small", TUNED, dataclasses.replace(GOOD, speedup_vs_fallback=1.05), False),
    ("no figure at all", TUNED, dataclasses.replace(GOOD, speedup_vs_fallback=None, speedup=None), False),
    # promoted before the fallback was timed: the speedup over the best built-in bounds the fallback's from below
    ("built-in figure only", TUNED, dataclasses.replace(GOOD, speedup_vs_fallback=None, speedup=1.4), True),
    ("small built-in figure", TUNED, dataclasses.replace(GOOD, speedup_vs_fallback=None, speedup=1.05), False),
])
def test_which_records_a_site_may_take(why: str, tuned: AttentionSpec, metrics: KernelMetrics, served: bool,
                                       seeded: torch.Generator) -> None:
    """A prefill site at 17 (bucket 32), as explain() sees it (no kernel runs): only a same-class record within
    4x in length, with a margin over the fallback of at least 1.10x where it was tuned, is offered."""
    record = _record(tuned, metrics)
    _store().put(record)
    (site,) = avo_inductor.explain(Causal(), *_qkv(17, seeded), quiet=True)
    if served:
        assert (site.status, site.kernel_id, site.tuned_at) == ("hit", record.kernel_id, tuned), why
        assert "verified at this shape at first compile" in site.reason
    else:
        assert (site.status, site.kernel_id, site.tuned_at) == ("miss", None, None), why


def test_a_record_failing_at_the_site_is_not_used_nor_verified_again(seeded: torch.Generator) -> None:
    """A class record whose forward is wrong (scores scaled by 1.01) fails verification at the site's shape: the
    site keeps SDPA and is queued, and the failure is remembered in the store, so neither the next compile nor a
    new process checks it again."""
    bad = _wrong_record()
    _store().put(bad)
    args = _qkv(113, seeded)
    model = Causal()
    counters.clear()
    with pytest.warns(RuntimeWarning, match=f"{bad.kernel_id} failed verification at 2,2,2,113,113,16"):
        out = torch.compile(model, backend="avo")(*args)
    torch.testing.assert_close(out, model(*args), atol=1e-5, rtol=1e-5)
    assert (counters["avo"]["class_rejected"], counters["avo"]["hit"], counters["avo"]["miss"]) == (1, 0, 1)
    assert [p.spec.q_len for p in _store().pending()] == [113]
    graph_pass._stores.clear()  # a new process: the verdict comes from the store on disk
    torch._dynamo.reset()
    torch.compile(model, backend="avo")(*args)
    assert (counters["avo"]["class_rejected"], counters["avo"]["class_verified"], counters["avo"]["miss"]) == (1, 0, 2)


def test_verdicts_are_per_site_shape(tmp_path: Path) -> None:
    """A record that passed at shape A and failed at B serves A only, also for a store opened later."""
    store = KernelStore(tmp_path / "s", shipped=False)
    store.put(_record())
    a, b = (dataclasses.replace(TUNED, q_len=n, kv_len=n) for n in (113, 17))
    hit_a, hit_b = store.lookup_class(a, CPU), store.lookup_class(b, CPU)
    assert hit_a is not None and hit_b is not None and hit_a.needs_reverify and hit_a.serves == a
    store.mark_class_verdict(hit_a, True)
    store.mark_class_verdict(hit_b, False, "output: max abs err 0.3")
    for s in (store, KernelStore(tmp_path / "s", shipped=False)):
        again = s.lookup_class(a, CPU)
        assert again is not None and not again.needs_reverify and again.record.spec == TUNED
        assert s.lookup_class(b, CPU) is None
    with pytest.raises(ValueError, match="exact hit"):
        store.mark_class_verdict(store.lookup(TUNED, CPU), True)


def test_a_verdict_does_not_outlive_the_template_it_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A template record runs what the installed template renders: after an upgrade of the template (same torch
    and triton, same record sha256) a verdict at a site's shape no longer holds, and the record is checked again."""
    from avo_inductor.kernels import render

    store = KernelStore(tmp_path / "s", shipped=False)
    record = _record()
    assert record.tier == "template"
    store.put(record)
    site = dataclasses.replace(TUNED, q_len=113, kv_len=113)
    store.mark_class_verdict(store.lookup_class(site, CPU), True)
    assert not store.lookup_class(site, CPU).needs_reverify
    installed = render.template_digest
    monkeypatch.setattr(render, "template_digest", lambda name: "0" * 16 if name == "flash_v1" else installed(name))
    for s in (store, KernelStore(tmp_path / "s", shipped=False)):
        hit = s.lookup_class(site, CPU)
        assert hit is not None and hit.needs_reverify


def test_a_check_that_ran_out_of_memory_is_not_a_lasting_verdict(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """First use checks beside the user's model: a case that ran out of GPU memory says nothing about the kernel.
    This process moves on (no second try per compile); the next process checks the record again."""
    from avo_inductor.check import verify

    store = KernelStore(tmp_path / "s", shipped=False)
    store.put(_record())
    site = dataclasses.replace(TUNED, q_len=113, kv_len=113)
    hit = store.lookup_class(site, CPU)
    assert hit is not None and hit.needs_reverify

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(verify, "run_case", out_of_memory)
    assert not graph_pass.ensure_verified(store, hit, torch.device("cpu"))
    assert store.lookup_class(site, CPU) is None  # this process: not tried again
    again = KernelStore(tmp_path / "s", shipped=False).lookup_class(site, CPU)
    assert again is not None and again.needs_reverify


def test_the_nearest_neighbour_is_chosen(tmp_path: Path) -> None:
    """Same kv-length bucket first, then the nearest lengths (log2), then the nearest batch x heads."""
    store = KernelStore(tmp_path / "s", shipped=False)

    def put(q: int, k: int, batch: int = 1) -> str:
        record = make_record(q, kv_len=k, batch=batch).with_changes(metrics=GOOD)
        return store.put(record)

    site = make_record(512, kv_len=512, batch=8).spec
    far_kv = put(512, 256)
    assert store.lookup_class(site, CPU).key == far_kv
    near_q = put(256, 512)
    assert store.lookup_class(site, CPU).key == near_q  # same kv bucket beats an exact q length
    nearer = put(256, 512, batch=4)
    assert store.lookup_class(site, CPU).key == nearer
    assert store.lookup_class(dataclasses.replace(site, q_len=32), CPU) is None  # 16x from every record


def test_the_class_index_is_built_once_per_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup reads the generation counter, not every key; a write rebuilds the index once."""
    store = KernelStore(tmp_path / "s", shipped=False)
    store.put(make_record(256).with_changes(metrics=GOOD))
    builds = []
    real = KernelStore.local_keys
    monkeypatch.setattr(KernelStore, "local_keys", lambda self: builds.append(1) or real(self))
    site = make_record(512).spec
    assert [store.lookup_class(site, CPU) is not None for _ in range(3)] == [True] * 3
    assert len(builds) == 1
    store.put(make_record(1024).with_changes(metrics=GOOD))
    assert store.lookup_class(site, CPU) is not None and len(builds) == 2


@pytest.mark.parametrize("spec", [
    TUNED,
    AttentionSpec(3, 32, 8, 1, 4099, 128, dtype="bfloat16", causal=True, window=256, mask="padding"),
    AttentionSpec(2, 4, 2, 17, 33, 24, 16, scale=1e-05, dropout_p=0.1, needs_grad=True),
])
def test_class_keys_are_read_from_store_keys(spec: AttentionSpec) -> None:
    """The index parses store keys (no record is loaded to index it): every field but shape stays in the class."""
    shape = classes.parse_key(store_key(spec, CPU))
    b = spec.bucketed()
    assert shape == classes.class_of(spec, CPU)
    assert (shape.batch, shape.q_heads, shape.q_len, shape.kv_len) == (b.batch, b.q_heads, b.q_len, b.kv_len)
    other = dataclasses.replace(spec, batch=spec.batch * 5, q_heads=spec.q_heads * 2, kv_heads=spec.kv_heads * 2,
                                q_len=16 if spec.is_decode else spec.q_len * 3, kv_len=spec.kv_len * 3)
    assert classes.class_of(other, CPU).klass == shape.klass
    for change in ({"dtype": "float16"}, {"head_dim": 32}, {"needs_grad": not spec.needs_grad},
                   {"q_heads": spec.q_heads * 2}, {"q_len": 16 if spec.q_len > 16 else 64}):
        assert classes.class_of(dataclasses.replace(spec, **change), CPU).klass != shape.klass, change
    assert classes.parse_key("not a key") is None


@pytest.mark.parametrize("software", ["same", "other"])
def test_class_check_runs_only_the_sites_lengths_for_a_record_verified_on_this_software(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, software: str) -> None:
    """A class record the search verified on this very software passed the ragged set here already: at a site's
    shape only that shape is new, and each ragged length specialisation would cost a Triton compile. A record
    from other software is checked on the whole set at the site's shape."""
    from avo_inductor.check import verify
    from avo_inductor.spec import SoftwareKey

    record = _record()
    if software == "other":
        record = record.with_changes(software=SoftwareKey("0.0", "0.0"))
    store = KernelStore(tmp_path / "s", shipped=False)
    store.put(record)
    site = dataclasses.replace(TUNED, q_len=113, kv_len=113)
    hit = store.lookup_class(site, CPU)
    assert hit is not None and hit.needs_reverify
    seen: list[list[str]] = []
    real = verify.verification_cases

    def spy(*args: object, **kwargs: object) -> list:
        cases = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append([c.name for c in cases])
        return cases

    monkeypatch.setattr(verify, "verification_cases", spy)
    reports: list = []
    real_verify = verify.verify_record

    def verify_spy(*args: object, **kwargs: object) -> object:
        reports.append(real_verify(*args, **kwargs))  # type: ignore[arg-type]
        return reports[-1]

    monkeypatch.setattr(verify, "verify_record", verify_spy)
    assert graph_pass.ensure_verified(store, hit, torch.device("cpu")), reports[-1].problems
    names = seen[0]
    assert names[-1].startswith("own lengths")
    assert (len(names) == 1) == (software == "same")
    assert not store.lookup_class(site, CPU).needs_reverify
