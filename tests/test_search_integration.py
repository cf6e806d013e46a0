"""End to end on CPU with the real pieces: ``run --campaign search/ci-tiny.toml --quick`` under TRITON_INTERPRET=1
(sandboxed SandboxedEvaluator worker, kernels.render, KernelStore) writes a record that lookup returns."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from avo_inductor.cache.store import KernelStore
from avo_inductor.search import runner
from avo_inductor.search.campaign import load_campaign
from avo_inductor.search.cli import main
from avo_inductor.spec import HardwareKey

CAMPAIGN = Path(__file__).resolve().parent.parent / "search" / "ci-tiny.toml"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU interpreter path only")
def test_quick_run_writes_a_record_lookup_returns(isolated_avo: Path) -> None:
    db = isolated_avo / "search.db"
    assert main(["run", "--campaign", str(CAMPAIGN), "--quick"]) == 0  # default --db: next to AVO_CACHE_DIR's store
    (spec,) = load_campaign(CAMPAIGN).specs
    hit = KernelStore.from_settings().lookup(spec, HardwareKey.current())
    assert hit is not None, "promotion did not store a record"
    report = runner.status(db)
    (run,) = report.runs
    assert run.status == "finished" and run.evaluated == 3 and run.failed == 0
    (best,) = report.best
    assert best.kernel_id == hit.record.kernel_id and hit.record.lineage_id == best.candidate_id
    assert hit.record.metrics.max_abs_err is not None and hit.record.genome is not None
    steps = runner.lineage(hit.record.kernel_id, db)
    assert steps[0].operator == "seed" and steps[-1].candidate_id == best.candidate_id
    assert (isolated_avo / "search.jsonl").read_text().count('"kind": "run_finished"') == 1
