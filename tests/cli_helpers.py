"""A populated store and search database for the CLI tests: what a user has after one compile and one search.

The search runs through ``search.api.run`` with the synthetic evaluator of ``search_fakes`` (no kernel launched),
into the default database next to the store, so commands without ``--db`` find it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avo_inductor.cache.store import KernelStore
from avo_inductor.search import api, runner
from cache_helpers import key_of, make_record
from search_fakes import HW, SPEC, FakeEvaluator

CAMPAIGN = """
[campaign]
name = "cli-tiny"
[search]
generations = 1
population = 2
islands = 1
operators = ["structured"]
[[spec]]
batch = 2
q_heads = 4
kv_heads = 4
seq_len = 256
head_dim = 64
causal = true
"""


@dataclass(frozen=True)
class Populated:
    cache_dir: Path
    db: Path
    campaign: Path
    record_key: str
    kernel_id: str  # a store record's kernel id (cache show)
    run: api.RunResult


def populate(cache_dir: Path) -> Populated:
    """Two store records, one pending miss, and one finished search run in ``<cache_dir>/search.db``."""
    store = KernelStore.from_settings()
    assert store.directory == cache_dir, (store.directory, cache_dir)  # AVO_CACHE_DIR is the conftest's folder
    records = [make_record(64, tag=1), make_record(512, tag=2, speedup=2.0)]
    for record in records:
        store.put(record)
    store.enqueue_pending(make_record(256).spec, make_record().hardware, "cli-tests")
    campaign = cache_dir / "cli-tiny.toml"
    campaign.write_text(CAMPAIGN)
    result = api.run(campaign, store=store, evaluator=FakeEvaluator(), hardware=HW)
    assert result.specs[0].spec_key == SPEC.cache_key()
    return Populated(cache_dir, runner.default_db_path(), campaign, key_of(records[0]), records[1].kernel_id, result)
