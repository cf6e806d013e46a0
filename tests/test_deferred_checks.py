"""Class checks in the background (backend/deferred.py): a class hit's first-use verification runs on a worker
thread while Inductor compiles the graph that already calls its kernel; the backend hands out the compiled graph
only after the verdict, and compiles again without a kernel that failed.

On CUDA the pass defers by itself; on the CPU (the interpreter) it never does, so these tests let it
(``can_defer``) and keep the interpreter off the worker while the main thread compiles: the real verification
runs once the compile has finished (``_after_compile``), which is the order the backend must cope with anyway.
"""
from __future__ import annotations

import threading

import pytest
import torch
from test_class_records import CPU as CPU_HW
from test_class_records import TUNED, Causal, _qkv, _record, _store, _wrong_record
from torch._dynamo.utils import counters

import avo_inductor
from avo_inductor.backend import deferred, graph_pass, register


@pytest.fixture
def background(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Lets CPU sites defer; the names of the threads that ran a check."""
    threads: list[str] = []
    compiled = threading.Event()
    real_check = graph_pass.ensure_verified
    real_compile = register.settle_deferred_checks

    def check_after_compile(store, hit, device):  # type: ignore[no-untyped-def]
        if hit.needs_reverify:  # the pass also calls it for hits that need no check (it returns True at once)
            threads.append(threading.current_thread().name)
            if threading.current_thread() is not threading.main_thread():
                assert compiled.wait(timeout=600), "the backend never finished compiling"
        return real_check(store, hit, device)

    def settle(result):  # type: ignore[no-untyped-def]
        compiled.set()  # Inductor's compile_fx is done: the worker may run the interpreter now
        try:
            return real_compile(result)
        finally:
            compiled.clear()

    monkeypatch.setattr(deferred, "can_defer", lambda device: device is not None)
    monkeypatch.setattr(graph_pass, "ensure_verified", check_after_compile)
    monkeypatch.setattr(register, "settle_deferred_checks", settle)
    return threads


def test_a_class_hit_is_checked_while_inductor_compiles(background: list[str], seeded: torch.Generator) -> None:
    record = _record()
    _store().put(record)
    args = _qkv(17, seeded)
    model = Causal()
    counters.clear()
    out = torch.compile(model, backend="avo")(*args)
    torch.testing.assert_close(out, model(*args), atol=1e-4, rtol=1e-4)
    assert background and all(name.startswith("avo-first-use-check") for name in background), background
    assert (counters["avo"]["class_hit"], counters["avo"]["class_verified"], counters["avo"]["miss"]) == (1, 1, 0)
    # The verdict is stored: a later compile neither checks again nor defers.
    torch._dynamo.reset()
    background.clear()
    torch.compile(model, backend="avo")(*args)
    assert background == [] and counters["avo"]["class_verified"] == 1
    (site,) = avo_inductor.explain(model, *args, quiet=True)
    assert (site.action, site.kernel_id, site.tuned_at) == ("avo", record.kernel_id, TUNED)


def test_a_kernel_failing_its_background_check_never_runs(background: list[str], seeded: torch.Generator,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A class record with a wrong forward (scores scaled by 1.01), rewritten into the graph before its verdict:
    the backend warns, compiles the graph again from Dynamo's copy, and the site runs SDPA; the kernel never ran on
    the user's inputs."""
    bad = _wrong_record()
    _store().put(bad)
    args = _qkv(113, seeded)
    model = Causal()
    counters.clear()
    with pytest.warns(RuntimeWarning, match=f"{bad.kernel_id} .* failed verification at this shape: [^?].*err.*; compiling"):
        out = torch.compile(model, backend="avo")(*args)
    torch.testing.assert_close(out, model(*args), atol=1e-5, rtol=1e-5)
    assert len(background) == 1
    assert (counters["avo"]["class_rejected"], counters["avo"]["miss"]) == (1, 1)
    assert counters["avo"]["class_hit"] == 1  # the first pass's optimistic rewrite, undone by the second compile


def test_a_check_that_raises_counts_as_failed(monkeypatch: pytest.MonkeyPatch, seeded: torch.Generator) -> None:
    """An internal error in the background check is no verdict: the graph is compiled again, and that pass checks
    the record itself (here it passes)."""
    record = _record()
    _store().put(record)
    real_check = graph_pass.ensure_verified
    calls: list[str] = []

    def flaky(store, hit, device):  # type: ignore[no-untyped-def]
        if not hit.needs_reverify:
            return real_check(store, hit, device)
        calls.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("lost the GPU")
        return real_check(store, hit, device)

    monkeypatch.setattr(deferred, "can_defer", lambda device: device is not None)
    monkeypatch.setattr(graph_pass, "ensure_verified", flaky)
    args = _qkv(17, seeded)
    with pytest.warns(RuntimeWarning, match="the check raised RuntimeError: lost the GPU; compiling this graph again"):
        out = torch.compile(Causal(), backend="avo")(*args)
    torch.testing.assert_close(out, Causal()(*args), atol=1e-4, rtol=1e-4)
    assert calls[0].startswith("avo-first-use-check") and calls[1:] == ["MainThread"]
    assert counters["avo"]["class_verified"] >= 1


def test_two_sites_of_one_shape_share_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verdict key names the record and the site's shape: a second site joins the running check."""
    record = _record()
    store = _store()
    store.put(record)
    site = TUNED.__class__(**{**TUNED.__dict__, "q_len": 17, "kv_len": 17})
    hit = store.lookup_class(site, CPU_HW)
    assert hit is not None and hit.needs_reverify
    release = threading.Event()
    runs: list[int] = []

    def slow(store, hit, device):  # type: ignore[no-untyped-def]
        runs.append(1)
        release.wait(timeout=600)
        return True

    first = deferred.defer(store, hit, torch.device("cpu"), slow)
    second = deferred.defer(store, hit, torch.device("cpu"), slow)
    assert first.future is second.future
    release.set()
    assert deferred.failed([first, second]) == [] and runs == [1]


def test_an_exact_record_needing_its_check_is_verified_while_inductor_compiles(background: list[str],
                                                                               seeded: torch.Generator) -> None:
    """An exact record imported unverified (as from another host's bundle) takes the same road: checked on the
    worker during the compile, marked verified in the store, served."""
    from avo_inductor.kernels.baseline import baseline_record
    from avo_inductor.spec import AttentionSpec

    args = _qkv(17, seeded)
    spec = avo_inductor.explain(Causal(), *args, quiet=True)[0].spec
    assert isinstance(spec, AttentionSpec)
    record = baseline_record(spec, CPU_HW)
    key = _store().put(record, unverified=True)
    assert _store().get(key).needs_reverify
    out = torch.compile(Causal(), backend="avo")(*args)
    torch.testing.assert_close(out, Causal()(*args), atol=1e-4, rtol=1e-4)
    assert background and background[0].startswith("avo-first-use-check")
    assert not _store().get(key).needs_reverify


def test_background_checks_off_checks_in_the_pass(background: list[str], seeded: torch.Generator,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """AVO_BACKGROUND_CHECKS=0: the class check runs in the pass, on the compiling thread, before Inductor."""
    from avo_inductor.settings import reset_settings

    monkeypatch.setenv("AVO_BACKGROUND_CHECKS", "0")
    reset_settings()
    _store().put(_record())
    args = _qkv(17, seeded)
    out = torch.compile(Causal(), backend="avo")(*args)
    torch.testing.assert_close(out, Causal()(*args), atol=1e-4, rtol=1e-4)
    assert background == ["MainThread"]

