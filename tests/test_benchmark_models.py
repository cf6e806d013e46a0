"""benchmarks.models on tiny models under the Triton interpreter: the CSV columns, the avo path each compile
took (hit / fallback, from the pass's own SiteReports), compile-time columns, and failures as cells.

Inductor's cold C++ compile of even the tiny models takes ~20 s per graph on a small CPU box, so here Inductor's
``compile_fx`` hands the graph back to run eagerly: the avo pass, the baseline seeding, the path report and the
outputs are the benchmark's own code and run for real; Inductor itself is covered by test_backend.py.
"""
from __future__ import annotations

import csv
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _models() -> ModuleType:
    """benchmarks.models with fresh module state for each test (reloaded, as a new process would import it)."""
    return importlib.reload(importlib.import_module("benchmarks.models"))


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    import torch._inductor.compile_fx as compile_fx_module

    def eager_compile_fx(gm: Any, example_inputs: Any, **_: Any) -> Any:
        return gm.forward

    monkeypatch.setattr(compile_fx_module, "compile_fx", eager_compile_fx)
    return _models()


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


ARGS = ["--tiny", "--modes", "infer,train", "--warmup", "0", "--iters", "1", "--no-warm-process",
        "--variants", "eager:handwritten,inductor:handwritten,avo:handwritten,inductor:sdpa"]


def test_seeded_store_reports_hits_and_compile_columns(models: ModuleType, tmp_path: Path,
                                                       isolated_avo: Path) -> None:
    from avo_inductor.cache.store import KernelStore
    from avo_inductor.settings import get_settings

    models.main(ARGS + ["--cases", "llama:1:16", "--seed-baseline", "--out", str(tmp_path)])
    assert get_settings().cache_dir == isolated_avo  # the seeded copy was temporary
    with KernelStore(isolated_avo, shipped=False) as store:
        assert store.local_keys() == []  # baseline records never land in the user's store
    rows = _read(tmp_path / "models.csv")
    assert [(r["model"], r["N"], r["mode"]) for r in rows] == [("llama", "16", "infer"), ("llama", "16", "train")]
    for column in ("eager[handwritten] ms", "inductor[handwritten] ms", "avo[handwritten] ms", "inductor[sdpa] ms",
                   "inductor[handwritten] first s", "avo[handwritten] first s", "avo[handwritten] path",
                   "avo[handwritten] pass s", "speedup avo/inductor [handwritten]",
                   "compile overhead % [handwritten]", "avo pass % [handwritten]"):
        assert column in rows[0], column
    for r in rows:
        assert r["avo[handwritten] path"] == "hit:baseline", r["avo[handwritten] note"]
        assert float(r["avo[handwritten] ms"]) > 0 and float(r["avo[handwritten] pass s"]) > 0
    assert float(rows[0]["avo[handwritten] err"]) < 1e-3  # the interpreted avo kernel matches eager
    comp = _read(tmp_path / "compile.csv")
    assert {c["avo path"] for c in comp if c["attn"] == "handwritten"} == {"hit:baseline"}
    assert all(c["inductor caches"].startswith("cold") and c["compile overhead %"] for c in comp
               if c["attn"] == "handwritten")


def test_empty_store_reports_fallback(models: ModuleType, tmp_path: Path) -> None:
    models.main(ARGS + ["--cases", "gpt2:1:16", "--modes", "infer", "--out", str(tmp_path)])
    (row,) = _read(tmp_path / "models.csv")
    assert row["avo[handwritten] path"] == "fallback"
    assert "no kernel" in row["avo[handwritten] note"]
    assert float(row["avo[handwritten] err"]) < 1e-3


def test_a_failing_case_becomes_cells(models: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*_: Any, **__: Any) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 4 GiB\nmore detail")

    monkeypatch.setattr(models, "build", no_memory)
    rows = models.main(ARGS + ["--cases", "llama:1:16", "--modes", "infer", "--out", str(tmp_path)])
    assert rows[0]["avo[handwritten] ms"] == "failed: RuntimeError: CUDA out of memory. Tried to allocate 4 GiB"
    assert (tmp_path / "models.csv").exists()
