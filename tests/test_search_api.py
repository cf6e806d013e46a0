"""``avo_inductor.search`` from Python: run / resume / status / lineage return data (dataclasses), and the ways a
model is traced (inference vs training specs). The evaluator is the synthetic one of search_fakes: no kernel runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import avo_inductor.search as search
from avo_inductor import AttentionSpec
from avo_inductor.cache.store import KernelStore
from avo_inductor.search import api, runner
from cli_helpers import populate
from search_fakes import HW, SPEC, FakeEvaluator


def test_public_names_are_the_api() -> None:
    from avo_inductor.search import lineage, run, status

    assert (run, status, lineage) == (api.run, api.status, api.lineage)
    assert set(search.__all__) <= set(api.__all__)
    with pytest.raises(AttributeError):
        search.not_a_name  # noqa: B018


def test_run_status_lineage_return_data(isolated_avo: Path) -> None:
    populated = populate(isolated_avo)
    result = populated.run
    (spec,) = result.specs
    assert spec.spec == SPEC.to_text() and AttentionSpec.from_text(spec.spec) == SPEC
    assert spec.kernel_id and result.promoted == {SPEC.cache_key(): spec.kernel_id}
    assert result.best_speedups[SPEC.cache_key()] == spec.best_speedup and spec.best_speedup > 1.0
    assert any(h.record.kernel_id == spec.kernel_id for h in KernelStore.from_settings().iter_records())
    (run,) = api.status()  # default database: next to the store
    assert isinstance(run, api.RunStatus) and run.run_id == result.run_id and run.status == "finished"
    assert run.source == f"campaign {populated.campaign}" and run.evaluated > 0 and run.pending == 0
    (row,) = run.specs  # recomputed from the database: the same best and promotion as the run returned
    assert (row.spec_key, row.spec, row.best_speedup, row.kernel_id) == (spec.spec_key, spec.spec, spec.best_speedup,
                                                                         spec.kernel_id)
    found = api.lineage(spec.kernel_id)
    assert found.run_id == result.run_id and found.steps[0].operator == "seed"
    assert found.steps[-1].candidate_id == spec.best_candidate_id and found.steps[-1].score == spec.best_speedup
    assert api.lineage(SPEC.cache_key()).steps == found.steps
    for data in (result.to_dict(), run.to_dict(), found.to_dict()):  # what --json prints
        assert json.loads(json.dumps(data)) == data


def test_run_specs_and_errors(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = KernelStore(tmp_path / "store", shipped=False)
    result = api.run(specs=[SPEC.to_text()], db=db, quick=True, store=store, evaluator=FakeEvaluator(), hardware=HW)
    assert [s.spec_key for s in result.specs] == [SPEC.cache_key()] and result.db == str(db)
    with pytest.raises(api.SearchRefused, match="no unfinished run"):
        api.resume("latest", db=db, store=store, evaluator=FakeEvaluator(), hardware=HW)
    with pytest.raises(api.SearchNotFound, match="no run 'r-nope'"):
        api.resume("r-nope", db=db)
    with pytest.raises(api.SearchNotFound, match="no search database"):
        api.status(tmp_path / "none.db")
    with pytest.raises(api.SearchNotFound, match="not a kernel id"):
        api.lineage("deadbeef", db)
    with pytest.raises(ValueError, match="exactly one of"):
        api.run("a.toml", specs=[SPEC], db=db)
    with pytest.raises(ValueError, match="need model"):
        api.run(specs=[SPEC], train=True, db=db)


def test_silent_ignores_are_errors(tmp_path: Path) -> None:
    """--gpus on a machine without CUDA and an agent asked for by name without a key used to be ignored."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    db = tmp_path / "s.db"
    with pytest.raises(ValueError, match=r"--gpus 3: this machine has 0 CUDA GPUs"):
        api.run(specs=[SPEC], gpus=3, db=db, quick=True, store=KernelStore(tmp_path / "st", shipped=False),
                hardware=HW)
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        api.run(specs=[SPEC], operators=["structured", "agent:0.5"], db=db)
    assert api.status(db) == []  # neither started a run


class _Projected(torch.nn.Module):
    """Attention over projected inputs: its weights need grad, so a training trace gives a training spec."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("mode,train,needs_grad,says", [
    ("eval", None, False, "(the model is in eval())"), ("train", None, True, "(the model is in train())"),
    ("train", False, False, "(--eval)"), ("eval", True, True, "(--train)")])
def test_model_trace_mode(mode: str, train: bool | None, needs_grad: bool, says: str) -> None:
    """Inference specs for an eval() model, training specs for one in train mode; --train / --eval override, the
    note says which and why, and the module's own mode is left as it was."""
    model = _Projected().train(mode == "train")
    notes: list[str] = []
    (spec,) = runner.trace_specs(model, (torch.randn(2, 17, 16),), train=train, notify=notes.append)
    assert spec.needs_grad is needs_grad and (spec.batch, spec.q_heads, spec.q_len, spec.head_dim) == (2, 2, 17, 8)
    (note,) = notes
    assert says in note and f"{int(not needs_grad)} inference and {int(needs_grad)} training spec(s)" in note
    assert model.training is (mode == "train")


def test_model_factory_note_through_the_cli_path(tmp_path: Path) -> None:
    """``--model MOD:FACTORY`` (a string) goes through the runner and reports the mode the same way."""
    events: list[Any] = []
    api.run(model="search_fakes:tiny_sdpa_model", db=tmp_path / "s.db", quick=True, progress=events.append,
            store=KernelStore(tmp_path / "store", shipped=False), evaluator=FakeEvaluator(), hardware=HW)
    (note,) = [e.message for e in events if e.kind == "note" and "traced in" in e.message]
    assert note.startswith("--model search_fakes:tiny_sdpa_model: traced in train() mode")


def test_run_model_object_says_which_mode(tmp_path: Path) -> None:
    events: list[Any] = []
    result = api.run(model=(_Projected().eval(), (torch.randn(2, 17, 16),)), db=tmp_path / "s.db", quick=True,
                     store=KernelStore(tmp_path / "store", shipped=False), evaluator=FakeEvaluator(), hardware=HW,
                     progress=events.append)
    (spec,) = result.specs
    assert "infer" in spec.spec_key and "train" not in spec.spec
    assert any(e.kind == "note" and "eval() mode" in e.message for e in events)
