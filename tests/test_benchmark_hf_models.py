"""benchmarks.hf_models end to end on tiny transformers models under the Triton interpreter: the CSV, targets CSV
and PNG, the explain() counts, the avo path per phase, and the search factories the search CLI traces.

As in test_benchmark_models.py, Inductor's ``compile_fx`` hands the graph back to run eagerly (a cold C++ compile
of even these models costs ~20 s a graph on a small CPU box): the avo pass, explain(), the hit path with the
interpreted kernel and the benchmark's own bookkeeping run for real. The search phase's subprocess is replaced by
a promotion of the untuned baseline kernel for every spec the search would trace from the case's factory (through
the search runner's own ``specs_from_model``), so the second phase measures a real hit; the search itself is
covered by the test_search_* files.
"""
from __future__ import annotations

import csv
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
TIMING = ["--tiny", "--warmup", "0", "--iters", "1", "--no-warm-process"]


@pytest.fixture
def hf(monkeypatch: pytest.MonkeyPatch, isolated_avo: Path) -> ModuleType:
    import torch._inductor.compile_fx as compile_fx_module

    def eager_compile_fx(gm: Any, example_inputs: Any, **_: Any) -> Any:
        return gm.forward

    monkeypatch.setattr(compile_fx_module, "compile_fx", eager_compile_fx)
    importlib.reload(importlib.import_module("benchmarks.models"))
    importlib.reload(importlib.import_module("benchmarks.hf_cases"))
    return importlib.reload(importlib.import_module("benchmarks.hf_models"))


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _promote_baselines(monkeypatch: pytest.MonkeyPatch, hf: ModuleType) -> list[str]:
    """Stand-in for the search subprocess: the baseline record of every spec the factory traces, stored."""
    calls: list[str] = []

    def promote(run: Any, minutes: float, profile: str, cache_dir: Path, log_path: Path) -> str:
        from avo_inductor.cache.store import KernelStore
        from avo_inductor.kernels.baseline import baseline_record
        from avo_inductor.search.runner import specs_from_model

        for name, value in hf.hc.search_env(profile, run.batch, run.seq, "train" in run.modes).items():
            monkeypatch.setenv(name, value)
        specs = specs_from_model(hf.search_target(run))
        with KernelStore(cache_dir, shipped=False) as store:
            store.put_many([baseline_record(s) for s in specs])
        calls.append(run.case.name)
        return f"promoted {len(specs)} baseline(s)"

    monkeypatch.setattr(hf, "run_search", promote)
    return calls


def test_two_phases_write_csv_targets_and_png(hf: ModuleType, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _promote_baselines(monkeypatch, hf)
    hf.main([*TIMING, "--cases", "bert-padded", "--modes", "infer", "--search-minutes", "0.1", "--out", str(tmp_path)])
    assert calls == ["bert-padded"]
    rows = _read(tmp_path / "hf_models.csv")
    assert [(r["model"], r["mode"], r["phase"]) for r in rows] == [("bert-padded", "infer", "out-of-box"),
                                                                  ("bert-padded", "infer", "searched")]
    oob, searched = rows
    # out of the box: an empty store, so the padded-mask site falls back to SDPA; the baselines are measured
    assert (oob["avo path"], oob["sites"], oob["hits"], oob["fallbacks"], oob["skips"]) == ("fallback", "1", "0",
                                                                                           "1", "0")
    for col in ("eager ms", "inductor ms", "inductor[sdpa] ms", "avo ms", "x inductor", "x sdpa twin",
                "avo pass % of inductor first"):
        assert float(oob[col]) > 0, col
    assert float(oob["avo err"]) < 1e-4 and oob["gpu"].startswith("cpu")
    # on the CPU the model already runs in float32: its float32 copy agrees with every variant
    assert float(oob["inductor err32"]) < 1e-4 and float(oob["avo err32"]) < 1e-4
    # after the (stand-in) search: the interpreted kernel runs, next to the first phase's baselines
    assert (searched["avo path"], searched["hits"], searched["fallbacks"]) == ("hit", "1", "0")
    assert searched["inductor ms"] == oob["inductor ms"] and float(searched["x out-of-box"]) > 0
    assert float(searched["avo err"]) < 1e-4 and searched["search"] == "promoted 1 baseline(s)"
    assert float(searched["avo err32"]) < 1e-4
    targets = _read(tmp_path / "hf_targets.csv")
    names = {(t["target"], t["phase"]) for t in targets}
    assert (">= 1.3x sdpa twin under inductor (masked)", "out-of-box") in names
    assert ("after search >= out of box", "searched") in names
    assert ("avo pass <= 10% of inductor first compile (hit)", "searched") in names
    assert all(t["verdict"] in ("PASS", "MISS") for t in targets)
    assert (tmp_path / "hf_models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_train_only_where_the_case_trains(hf: ModuleType) -> None:
    runs = hf.parse_runs("gpt2,vit:3:17,bloom-alibi", "tiny", ["infer", "train"])
    assert [(r.case.name, r.batch, r.seq, r.modes) for r in runs] == [
        ("gpt2", 2, 17, ("infer", "train")), ("vit", 3, 17, ("infer",)), ("bloom-alibi", 2, 17, ("infer",))]


def _site(action: str, status: str = "-", reason: str = "", tuned_at: str | None = None,
          spec: str | None = None) -> Any:
    from avo_inductor.backend.report import SiteReport
    from avo_inductor.spec import parse_spec_text

    return SiteReport(module_path="layers.0.attn", pattern="matmul_softmax", action=action, status=status,
                      reason=reason, tuned_at=parse_spec_text(tuned_at) if tuned_at else None,
                      spec=parse_spec_text(spec) if spec else None)


def test_site_counts_split_exact_and_class_hits(hf: ModuleType) -> None:
    sites = [_site("avo", "hit", spec="2,32,8,4096,4096,128,causal"),
             _site("avo", "hit", tuned_at="2,32,8,4096,4096,128,causal"),
             _site("sdpa", "miss", "no kernel; queued", spec="8,16,16,512,512,64,bias"), _site("kept", "miss"),
             _site("skipped", reason="unrecognised op between softmax and the PV matmul"), _site("error", reason="x")]
    want = {"sites": 6, "hits": 1, "class hits": 1, "fallbacks": 2, "skips": 1, "errors": 1, "rewritten": 3,
            "why not hit": "no kernel; queued"}
    assert hf.site_counts(sites) == {**want, "site spec": "8,16,16,512,512,64 bfloat16 full+bias"}
    assert hf.site_counts(sites[:2])["site spec"] == "2,32,8,4096,4096,128 bfloat16 causal"  # all hit: the first


@pytest.mark.parametrize(("pass_pct", "verdict"), [(4.0, "PASS"), (12.5, "MISS")])
def test_targets_judge_each_row_against_its_baseline(hf: ModuleType, pass_pct: float, verdict: str) -> None:
    oob = {"model": "mistral-window", "mode": "infer", "phase": "out-of-box", "inductor ms": 30.0,
           "inductor[sdpa] ms": 20.0, "avo ms": 12.0, "avo path": "fallback", "gpu": "H100"}
    hf.add_ratios(oob)
    searched = {**oob, "phase": "searched", "avo ms": 10.0, "avo path": "hit", "inductor first s": 40.0,
                "avo pass s": 0.4 * pass_pct}
    hf.add_ratios(searched, out_of_box=oob)
    got = {(t["target"], t["phase"]): (round(t["value"], 3), t["verdict"]) for t in hf.target_rows([oob, searched])}
    assert got == {(">= 1.0x inductor out of the box", "out-of-box"): (2.5, "PASS"),
                   (">= 1.3x sdpa twin under inductor (masked)", "out-of-box"): (1.667, "PASS"),
                   (">= 2x inductor, window, no search", "out-of-box"): (2.5, "PASS"),
                   ("after search >= out of box", "searched"): (1.2, "PASS"),
                   ("avo pass <= 10% of inductor first compile (hit)", "searched"): (pass_pct, verdict)}


@pytest.mark.parametrize(("name", "train", "window"), [("mistral-window", False, 8), ("llama-eager", True, None)])
def test_search_factory_traces_the_benchmark_shape(name: str, train: bool, window: int | None,
                                                   monkeypatch: pytest.MonkeyPatch, isolated_avo: Path) -> None:
    """The factory the search CLI's --model loads rebuilds the benchmark's case at the shape in its environment."""
    from avo_inductor.search.runner import specs_from_model
    from benchmarks import hf_cases

    for key, value in hf_cases.search_env("tiny", 3, 24, train=train).items():
        monkeypatch.setenv(key, value)
    (spec,) = specs_from_model(f"benchmarks.hf_cases:{hf_cases.CASES[name].factory}")
    assert (spec.batch, spec.q_len, spec.kv_len, spec.q_heads, spec.kv_heads) == (3, 24, 24, 4, 2)
    assert (spec.needs_grad, spec.causal, spec.window) == (train, True, window)


def test_bad_arguments_exit_with_a_message(hf: ModuleType) -> None:
    with pytest.raises(SystemExit, match="bad case 'llama:2'"):
        hf.parse_runs("llama:2", "tiny", ["infer"])
    with pytest.raises(SystemExit):
        hf.parse_args(["--modes", "infer,decode"])
    with pytest.raises(SystemExit):
        hf.parse_args(["--search-minutes", "-1"])


def test_the_default_run_measures_the_window_model_at_two_shapes(hf: ModuleType) -> None:
    """The full profile runs every case at its shape and the window model at 8k context too; targets name the
    shape, so its two rows stay apart."""
    from benchmarks import hf_cases

    runs = hf.parse_runs(",".join(hf_cases.DEFAULT_CASES), "full", ["infer", "train"])
    window = [(r.batch, r.seq) for r in runs if r.case.name == "mistral-window"]
    assert window == [hf_cases.SHAPES["full"]["mistral-window"], (1, 8192)]
    assert len(runs) == len(hf_cases.CASES) + 1
    rows = [{"model": "mistral-window", "mode": "infer", "phase": "out-of-box", "B": b, "N": n, "x inductor": x,
             "avo path": "fallback"} for (b, n), x in zip(window, (1.7, 2.6), strict=True)]
    got = [(t["N"], t["verdict"]) for t in hf.target_rows(rows) if t["target"].startswith(">= 2x")]
    assert got == [(4096, "MISS"), (8192, "PASS")]


def test_a_model_avo_left_unchanged_is_noted_as_noise(hf: ModuleType) -> None:
    """llama with attn_implementation="sdpa": its sites are SDPA calls avo keeps, so avo's graph is inductor's and a
    0.985x is run-to-run noise; the measured verdict stands, with a note saying so."""
    base = {"model": "llama-sdpa", "mode": "infer", "phase": "out-of-box", "B": 4, "N": 2048, "x inductor": 0.985,
            "avo path": "fallback", "sites": 2}
    kept, changed = hf.target_rows([{**base, "rewritten": 0}, {**base, "model": "llama-eager", "rewritten": 2}])
    assert kept["verdict"] == changed["verdict"] == "MISS"
    assert "graph unchanged" in kept["note"] and changed["note"] == ""


def test_float32_reference_is_a_copy_and_leaves_the_model_as_it_was(hf: ModuleType) -> None:
    """err32's reference: the same weights in float32 on a float32 input; the benchmarked bf16 model is untouched."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).to(torch.bfloat16)
    x = torch.randn(5, 16).to(torch.bfloat16)
    ref = hf.float32_output(model, x)
    assert ref is not None and ref.dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        exact = model.float()(x.float())
    assert torch.equal(ref, exact)
