"""Population database: runs, candidates, results, migrations, per-spec bests and promotions in SQLite.

WAL mode with one writer (the search driver); readers (``status``, ``lineage``) may run beside it. Every
state change is committed before the engine moves on, so a SIGKILLed run loses only the candidates that
were in flight: ``requeue_in_flight`` puts them back to pending on resume.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

from ..kernels.genome import KernelGenome
from ..spec import AttentionSpec
from .types import Candidate, EvalResult

SCHEMA_VERSION = 1
PENDING, EVALUATING, DONE = "pending", "evaluating", "done"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL, started REAL NOT NULL, finished REAL,
  generation INTEGER NOT NULL DEFAULT 0, budget_spent_s REAL NOT NULL DEFAULT 0,
  dollars REAL NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS candidates (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, id TEXT NOT NULL, spec_key TEXT NOT NULL,
  spec TEXT NOT NULL, genome TEXT, source TEXT, source_hash TEXT NOT NULL, entry_point TEXT NOT NULL,
  bwd_entry_point TEXT, launch TEXT NOT NULL, parent_ids TEXT NOT NULL, operator TEXT NOT NULL,
  island INTEGER NOT NULL, generation INTEGER NOT NULL, diff TEXT NOT NULL, notes TEXT NOT NULL,
  status TEXT NOT NULL, created REAL NOT NULL, UNIQUE (run_id, id));
CREATE INDEX IF NOT EXISTS cand_status ON candidates (run_id, status);
CREATE INDEX IF NOT EXISTS cand_id ON candidates (id);
CREATE TABLE IF NOT EXISTS results (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, candidate_id TEXT NOT NULL,
  promotion INTEGER NOT NULL DEFAULT 0, ok INTEGER NOT NULL, stage TEXT NOT NULL, message TEXT NOT NULL,
  score REAL NOT NULL, speedup REAL, median_ms REAL, baseline_ms REAL, data TEXT NOT NULL, evaluated REAL NOT NULL,
  UNIQUE (run_id, candidate_id, promotion));
CREATE TABLE IF NOT EXISTS migrations (
  run_id TEXT NOT NULL, generation INTEGER NOT NULL, candidate_id TEXT NOT NULL, to_island INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS best (
  spec_key TEXT PRIMARY KEY, spec TEXT NOT NULL, run_id TEXT NOT NULL, candidate_id TEXT NOT NULL,
  score REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS promotions (
  kernel_id TEXT NOT NULL, run_id TEXT NOT NULL, candidate_id TEXT NOT NULL, spec_key TEXT NOT NULL,
  store_key TEXT NOT NULL, speedup REAL, created REAL NOT NULL, PRIMARY KEY (kernel_id, run_id));
"""


@dataclass(frozen=True)
class RunInfo:
    id: str
    config: dict[str, Any]
    status: str
    started: float
    finished: float | None
    generation: int
    budget_spent_s: float
    dollars: float
    tokens: int
    evaluated: int = 0
    failed: int = 0
    pending: int = 0


@dataclass(frozen=True)
class BestEntry:
    spec_key: str
    spec: AttentionSpec
    run_id: str
    candidate_id: str
    speedup: float
    kernel_id: str | None


@dataclass(frozen=True)
class LineageStep:
    """One ancestor, root first: what produced it (operator, diff) and how it scored."""

    run_id: str
    candidate_id: str
    operator: str
    diff: str
    parent_ids: tuple[str, ...]
    generation: int
    island: int
    status: str
    ok: bool | None
    stage: str | None
    score: float | None
    message: str


def _corrupt(path: Path, exc: BaseException) -> RuntimeError:
    return RuntimeError(
        f"search database {path} is unreadable or corrupt ({exc}); move it aside "
        f"(e.g. `mv {path} {path}.corrupt`) to start a fresh one, or pass --db PATH")


class SearchDatabase:
    """SQLite store of a search's population. Open one per process; only the driver writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise _corrupt(self.path, exc) from None
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"search database {self.path} has schema {row[0]}, newer than this avo_inductor "
                               f"understands ({SCHEMA_VERSION}); upgrade avo_inductor or use another --db")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SearchDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ---- runs --------------------------------------------------------------------------------------
    def create_run(self, config: dict[str, Any], run_id: str | None = None) -> str:
        run_id = run_id or f"r{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
        with self._tx() as c:
            c.execute("INSERT INTO runs (id, config, status, started) VALUES (?, ?, 'running', ?)",
                      (run_id, json.dumps(config, sort_keys=True), time.time()))
        return run_id

    def get_run(self, run_id: str) -> RunInfo:
        row = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self._conn.execute("SELECT id FROM runs ORDER BY started DESC LIMIT 5")]
            raise ValueError(f"no run {run_id!r} in {self.path}; recent runs: {known or 'none'}")
        return self._run_info(row)

    def _run_info(self, row: sqlite3.Row) -> RunInfo:
        counts = dict(self._conn.execute(
            "SELECT status, COUNT(*) FROM candidates WHERE run_id=? GROUP BY status", (row["id"],)).fetchall())
        failed = self._conn.execute("SELECT COUNT(*) FROM results WHERE run_id=? AND promotion=0 AND ok=0",
                                    (row["id"],)).fetchone()[0]
        return RunInfo(row["id"], json.loads(row["config"]), row["status"], row["started"], row["finished"],
                       row["generation"], row["budget_spent_s"], row["dollars"], row["tokens"],
                       evaluated=counts.get(DONE, 0), failed=failed,
                       pending=counts.get(PENDING, 0) + counts.get(EVALUATING, 0))

    def runs(self) -> list[RunInfo]:
        return [self._run_info(r) for r in self._conn.execute("SELECT * FROM runs ORDER BY started, id")]

    def set_run_status(self, run_id: str, status: str) -> None:
        finished = time.time() if status == "finished" else None
        with self._tx() as c:
            c.execute("UPDATE runs SET status=?, finished=? WHERE id=?", (status, finished, run_id))

    def complete_generation(self, run_id: str, generation: int,
                            migrations: Sequence[tuple[str, int, int]] = ()) -> None:
        """Advance the run to ``generation`` (the next one to finish). ``migrations`` (candidate id, from, to) of
        the finished generation ``generation - 1`` are recorded in the same transaction: a kill leaves either
        both or neither, so a resumed run never migrates twice."""
        with self._tx() as c:
            c.executemany("INSERT INTO migrations VALUES (?,?,?,?)",
                          [(run_id, generation - 1, cid, to) for cid, _, to in migrations])
            c.execute("UPDATE runs SET generation=MAX(generation, ?) WHERE id=?", (generation, run_id))

    def add_spend(self, run_id: str, seconds: float = 0.0, dollars: float = 0.0, tokens: int = 0) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET budget_spent_s=budget_spent_s+?, dollars=dollars+?, tokens=tokens+? "
                      "WHERE id=?", (seconds, dollars, tokens, run_id))

    # ---- candidates and results --------------------------------------------------------------------
    def add_candidates(self, run_id: str, candidates: Sequence[Candidate],
                       source_hashes: Sequence[str]) -> list[Candidate]:
        """Insert as pending; returns those that were new (same id in the same run = duplicate, skipped)."""
        added: list[Candidate] = []
        now = time.time()
        with self._tx() as c:
            for cand, digest in zip(candidates, source_hashes, strict=True):
                cur = c.execute(
                    "INSERT OR IGNORE INTO candidates (run_id, id, spec_key, spec, genome, source, source_hash, "
                    "entry_point, bwd_entry_point, launch, parent_ids, operator, island, generation, diff, notes, "
                    "status, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, cand.id, cand.spec.cache_key(), json.dumps(cand.spec.to_dict()),
                     json.dumps(cand.genome.to_dict()) if cand.genome else None, cand.source, digest,
                     cand.entry_point, cand.bwd_entry_point, json.dumps(cand.launch), json.dumps(list(cand.parent_ids)),
                     cand.operator, cand.island, cand.generation, cand.diff, cand.notes, PENDING, now))
                if cur.rowcount:
                    added.append(cand)
        return added

    def generation_size(self, run_id: str, generation: int) -> int:
        """How many candidates (any status) were proposed for ``generation``: non-zero means its set exists and
        must not be proposed again on resume."""
        return self._conn.execute("SELECT COUNT(*) FROM candidates WHERE run_id=? AND generation=?",
                                  (run_id, generation)).fetchone()[0]

    def has_candidate(self, run_id: str, candidate_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM candidates WHERE run_id=? AND id=?",
                                  (run_id, candidate_id)).fetchone() is not None

    def mark_evaluating(self, run_id: str, ids: Sequence[str]) -> None:
        with self._tx() as c:
            c.executemany("UPDATE candidates SET status=? WHERE run_id=? AND id=?",
                          [(EVALUATING, run_id, i) for i in ids])

    def requeue_in_flight(self, run_id: str) -> int:
        """Candidates a killed run left 'evaluating' go back to pending; returns how many."""
        with self._tx() as c:
            return c.execute("UPDATE candidates SET status=? WHERE run_id=? AND status=?",
                             (PENDING, run_id, EVALUATING)).rowcount

    def record_results(self, run_id: str, results: Sequence[EvalResult], promotion: bool = False) -> None:
        """Store results (candidate -> done) and raise the per-spec best where a result beats it."""
        now = time.time()
        with self._tx() as c:
            for r in results:
                c.execute("INSERT OR REPLACE INTO results (run_id, candidate_id, promotion, ok, stage, message, score, "
                          "speedup, median_ms, baseline_ms, data, evaluated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                          (run_id, r.candidate_id, int(promotion), int(r.ok), r.stage.value, r.message, r.score,
                           r.speedup, r.median_ms, r.baseline_ms, json.dumps(r.to_dict(), default=str), now))
                if promotion:
                    continue
                c.execute("UPDATE candidates SET status=? WHERE run_id=? AND id=?", (DONE, run_id, r.candidate_id))
                row = c.execute("SELECT spec_key, spec FROM candidates WHERE run_id=? AND id=?",
                                (run_id, r.candidate_id)).fetchone()
                if row is None or not r.ok:
                    continue
                c.execute("INSERT INTO best VALUES (?,?,?,?,?,?) ON CONFLICT(spec_key) DO UPDATE SET "
                          "spec=excluded.spec, run_id=excluded.run_id, candidate_id=excluded.candidate_id, "
                          "score=excluded.score, updated=excluded.updated WHERE excluded.score > best.score",
                          (row["spec_key"], row["spec"], run_id, r.candidate_id, r.score, now))

    def candidates(self, run_id: str, status: str | None = None) -> list[Candidate]:
        sql, args = "SELECT * FROM candidates WHERE run_id=?", [run_id]
        if status:
            sql, args = sql + " AND status=?", [*args, status]
        return [_candidate(r) for r in self._conn.execute(sql + " ORDER BY seq", args)]

    def candidate(self, run_id: str, candidate_id: str) -> Candidate | None:
        row = self._conn.execute("SELECT * FROM candidates WHERE run_id=? AND id=?", (run_id, candidate_id)).fetchone()
        return _candidate(row) if row else None

    def result(self, run_id: str, candidate_id: str, promotion: bool = False) -> EvalResult | None:
        row = self._conn.execute("SELECT data FROM results WHERE run_id=? AND candidate_id=? AND promotion=?",
                                 (run_id, candidate_id, int(promotion))).fetchone()
        return EvalResult.from_dict(json.loads(row[0])) if row else None

    def evaluated(self, run_id: str) -> list[tuple[Candidate, EvalResult]]:
        """Every evaluated (candidate, result) of the run, in evaluation order."""
        rows = self._conn.execute(
            "SELECT c.*, r.data AS result FROM results r "
            "JOIN candidates c ON c.run_id=r.run_id AND c.id=r.candidate_id "
            "WHERE r.run_id=? AND r.promotion=0 ORDER BY r.seq", (run_id,))
        return [(_candidate(r), EvalResult.from_dict(json.loads(r["result"]))) for r in rows]

    def evaluation_times(self, run_id: str) -> dict[str, float]:
        """Candidate id -> wall-clock time (epoch seconds) its cascade result was stored, for time-based reports."""
        return {r[0]: r[1] for r in self._conn.execute(
            "SELECT candidate_id, evaluated FROM results WHERE run_id=? AND promotion=0", (run_id,))}

    # ---- migrations, bests, promotions -------------------------------------------------------------
    def migrations(self, run_id: str) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in self._conn.execute(
            "SELECT candidate_id, to_island FROM migrations WHERE run_id=? ORDER BY rowid", (run_id,))]

    def record_promotion(self, kernel_id: str, run_id: str, candidate_id: str, spec_key: str, store_key: str,
                         speedup: float | None) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO promotions VALUES (?,?,?,?,?,?,?)",
                      (kernel_id, run_id, candidate_id, spec_key, store_key, speedup, time.time()))

    def promotions(self, run_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM promotions" + (" WHERE run_id=?" if run_id else "") + " ORDER BY created"
        return [dict(r) for r in self._conn.execute(sql, (run_id,) if run_id else ())]

    def bests(self) -> list[BestEntry]:
        """Best passing candidate per spec over all runs, with the kernel id it was promoted as (if any)."""
        out = []
        for r in self._conn.execute("SELECT * FROM best ORDER BY spec_key"):
            kid = self._conn.execute("SELECT kernel_id FROM promotions WHERE spec_key=? ORDER BY speedup DESC, created "
                                     "DESC LIMIT 1", (r["spec_key"],)).fetchone()
            out.append(BestEntry(r["spec_key"], AttentionSpec.from_dict(json.loads(r["spec"])), r["run_id"],
                                 r["candidate_id"], r["score"], kid[0] if kid else None))
        return out

    # ---- lineage -----------------------------------------------------------------------------------
    def resolve(self, ref: str) -> tuple[str, str]:
        """(run_id, candidate_id) for a kernel id, a candidate id or a spec key (its best candidate)."""
        row = self._conn.execute("SELECT run_id, candidate_id FROM promotions WHERE kernel_id=? ORDER BY created DESC",
                                 (ref,)).fetchone()
        row = row or self._conn.execute("SELECT run_id, id FROM candidates WHERE id=? ORDER BY seq DESC",
                                        (ref,)).fetchone()
        row = row or self._conn.execute("SELECT run_id, candidate_id FROM best WHERE spec_key=?", (ref,)).fetchone()
        if row is None:
            raise ValueError(f"{ref!r} is not a kernel id, candidate id or spec key known to {self.path}")
        return row[0], row[1]

    def lineage(self, ref: str) -> list[LineageStep]:
        """Ancestry of ``ref`` root first, following the first parent (crossover's other parent is listed)."""
        run_id, cid = self.resolve(ref)
        chain: list[LineageStep] = []
        seen: set[str] = set()
        current: str | None = cid
        while current and current not in seen:
            seen.add(current)
            cand = self.candidate(run_id, current)
            if cand is None:
                break
            res = self.result(run_id, current)
            status = self._conn.execute("SELECT status FROM candidates WHERE run_id=? AND id=?",
                                        (run_id, current)).fetchone()[0]
            chain.append(LineageStep(run_id, cand.id, cand.operator, cand.diff, cand.parent_ids, cand.generation,
                                     cand.island, status, res.ok if res else None, res.stage.value if res else None,
                                     res.score if res else None, res.message if res else ""))
            current = cand.parent_ids[0] if cand.parent_ids else None
        return chain[::-1]


def _candidate(row: sqlite3.Row) -> Candidate:
    genome = KernelGenome.from_dict(json.loads(row["genome"])) if row["genome"] else None
    return Candidate(id=row["id"], spec=AttentionSpec.from_dict(json.loads(row["spec"])), genome=genome,
                     source=row["source"], entry_point=row["entry_point"], bwd_entry_point=row["bwd_entry_point"],
                     launch=json.loads(row["launch"]), parent_ids=tuple(json.loads(row["parent_ids"])),
                     operator=row["operator"], island=row["island"], generation=row["generation"],
                     diff=row["diff"], notes=row["notes"])
