"""`search report`: the lineage data read from a real search database, and the HTML + PNG files it writes.

The database comes from a real (tiny) search with the synthetic evaluator of search_fakes, plus rows written
directly for what that search cannot produce: an agent candidate and a failure whose text is hostile HTML.
"""
from __future__ import annotations

import dataclasses
import html
import itertools
import struct
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import pytest

from avo_inductor.search import population as pop
from avo_inductor.search.cli import main as search_main
from avo_inductor.search.database import SearchDatabase
from avo_inductor.search.engine import SearchConfig, SearchEngine
from avo_inductor.search.lineage_data import load_report_data
from avo_inductor.search.operators import StructuredOperator, content_hash
from avo_inductor.search.report import MissingDependency, ReportFiles, write_report
from avo_inductor.search.types import Candidate, EvalResult, Stage
from avo_inductor.spec import AttentionSpec

from search_fakes import HW, SPEC, SW, FakeEvaluator, default_genome

pytest.importorskip("matplotlib")

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
SPEC2 = dataclasses.replace(SPEC, q_len=47, kv_len=47, causal=False)
SECTIONS = {"summary", "progress", "lineage", "islands", "failures"}


class StagedFailures(FakeEvaluator):
    """FakeEvaluator whose candidates with num_warps == 2 fail the small correctness check, and with
    num_stages == 4 time out, so several cascade stages show up in the report."""

    def _one(self, c: Candidate) -> EvalResult:
        assert c.genome is not None
        if c.genome.num_warps == 2:
            return EvalResult(c.id, False, Stage.CORRECT_SMALL, message=f"max abs err {0.1 + c.genome.block_n}")
        if c.genome.num_stages == 4:
            return EvalResult(c.id, False, Stage.TIMEOUT, message="worker timed out after 60 s")
        return super()._one(c)


def _search(db_path: Path, seed: int, specs: tuple[AttentionSpec, ...] = (SPEC, SPEC2), generations: int = 4) -> str:
    config = SearchConfig(specs=specs, generations=generations, population=3, islands=2, seed=seed,
                          migration_interval=2)
    engine = SearchEngine(SearchDatabase(db_path), StagedFailures(), [(StructuredOperator(valid=None), 1.0)], config,
                          hardware=HW, software=SW, default_genome=default_genome)
    try:
        return engine.run().run_id
    finally:
        engine.db.close()


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(database, older run id, newest run id). The newest run also holds an agent child of SPEC's winner that
    beats it (a source-carrying winner, hostile id and diff) and a failed agent child with a hostile message."""
    db_path = tmp_path_factory.mktemp("report") / "search.db"
    older = _search(db_path, seed=3, specs=(SPEC2,), generations=2)
    newest = _search(db_path, seed=11)
    with SearchDatabase(db_path) as db:
        winner = max(((c, r) for c, r in db.evaluated(newest) if r.ok and c.spec == SPEC),
                     key=lambda ind: ind[1].score)[0]
        agent = Candidate(f"agent-{HOSTILE}", SPEC, genome=winner.genome, source="@triton.jit\ndef attn_fwd(): pass\n",
                          launch={"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 3}, parent_ids=(winner.id,),
                          operator="agent", island=1, generation=5, diff=f"rewrote the inner loop {HOSTILE}")
        broken = dataclasses.replace(agent, id="agent-broken", diff="unrolled the kv loop", generation=6)
        db.add_candidates(newest, [agent, broken], [content_hash(agent), content_hash(broken)])
        db.record_results(newest, [EvalResult(agent.id, True, Stage.PASSED, speedup=2.5, spread=0.01),
                                   EvalResult(broken.id, False, Stage.COMPILE, message=f"compile error: {HOSTILE}")])
    return db_path, older, newest


@pytest.fixture(scope="module")
def report(populated: tuple[Path, str, str], tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    return write_report(populated[0], tmp_path_factory.mktemp("out") / "report")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.ids: set[str] = set()
        self.imgs: list[dict[str, str | None]] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] += 1
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "img":
            self.imgs.append(a)
        self.urls += [str(v) for k, v in attrs if k in ("src", "href") and v]
        if tag not in ("img", "meta", "br", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.open == [], f"unclosed tags {page.open}"
    return page


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk, whose CRC must match; IEND must end the file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND"
    return struct.unpack(">II", data[16:24])


def test_html_is_well_formed_with_every_section_and_local_images(report: ReportFiles) -> None:
    assert report.html == report.out_dir / "index.html"
    page = _parse(report.html)
    assert SECTIONS <= page.ids
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["style"] == 1
    assert all(u.startswith("#") or ("/" not in u and ":" not in u) for u in page.urls), page.urls  # no network
    srcs = [str(img["src"]) for img in page.imgs]
    assert all(img.get("alt") for img in page.imgs)
    assert sorted(srcs) == sorted(p.name for p in report.images)
    names = {"progress.png", "failures.png", "tree-0.png", "tree-1.png", "islands-0.png", "islands-1.png"}
    assert names <= set(srcs)
    for name in srcs:
        width, height = _png_size(report.out_dir / name)
        assert 200 <= width <= 3000 and 150 <= height <= 3000, (name, width, height)


def test_untrusted_text_comes_out_escaped(report: ReportFiles) -> None:
    raw = report.html.read_text(encoding="utf-8")
    assert "<script" not in raw and "onerror=alert" not in raw.replace("&lt;img src=x onerror=alert(1)&gt;", "")
    assert html.escape(HOSTILE, quote=True) in raw
    text = "".join(_parse(report.html).text)
    for shown in (f"compile error: {HOSTILE}", f"agent-{HOSTILE}", f"rewrote the inner loop {HOSTILE}"):
        assert shown in text  # shown to the reader as text, verbatim


def test_data_matches_the_database(populated: tuple[Path, str, str]) -> None:
    db_path, _, newest = populated
    data = load_report_data(db_path)
    assert data.run.id == newest and set(data.run_ids) == {populated[1], newest}
    with SearchDatabase(db_path) as db:
        evaluated = db.evaluated(newest)
        migrations = db.migrations(newest)
    # failures: every failed evaluation counted once under its stage, the hostile message kept verbatim
    counts = {f.stage: f.count for f in data.failures}
    assert counts == dict(Counter(r.stage.value for _, r in evaluated if not r.ok))
    assert {"compile", "correct_small"} <= set(counts)
    assert any(HOSTILE in m for f in data.failures for m in f.examples)
    agent_line = next(t for t in data.trees if t.spec_key == SPEC.cache_key()).main_line
    assert agent_line[-1].operator == "agent" and agent_line[-1].score == 2.5
    assert agent_line[-1].genome_changes == () and agent_line[-1].change == f"rewrote the inner loop {HOSTILE}"
    assert "agent 64x64 s3+" in next(g for g in data.grids if g.spec_key == SPEC.cache_key()).cells
    for spec in (SPEC, SPEC2):
        key = spec.cache_key()
        rows = [(c, r) for c, r in evaluated if c.spec.cache_key() == key]
        best = max(r.score for _, r in rows if r.ok)
        progress = next(p for p in data.progress if p.spec_key == key)
        assert len(progress.points) == len(rows) and progress.best == best
        curve = [b for _, b in progress.best_so_far]
        assert curve == sorted(set(curve)) and curve[-1] == best
        tree = next(t for t in data.trees if t.spec_key == key)
        line = tree.main_line
        assert line[0].operator == "seed" and not line[0].parent_ids and line[-1].candidate_id == tree.winner_id
        assert line[-1].score == best and line[-1].depth == 0
        by_id = {c.id: c for c, _ in rows}
        for parent, child in itertools.pairwise(line):
            assert child.parent_ids[0] == parent.candidate_id
            before, after = by_id[parent.candidate_id].genome, by_id[child.candidate_id].genome
            assert before is not None and after is not None
            assert {k: (a, b) for k, a, b in child.genome_changes} == {
                f.name: (str(getattr(before, f.name)), str(getattr(after, f.name)))
                for f in dataclasses.fields(after) if getattr(before, f.name) != getattr(after, f.name)}
        assert {n.candidate_id for n in tree.nodes} >= {n.candidate_id for n in line}
        grid = next(g for g in data.grids if g.spec_key == key)
        islands = pop.rebuild(2, rows, migrations)
        assert sorted((e.island, e.candidate_id, e.score) for e in grid.elites) == sorted(
            (isl.index, c.id, r.score) for isl in islands for c, r in isl.elites.values())
        assert len(grid.cells) == len({e.cell for e in grid.elites})


def test_cli_writes_the_chosen_run(populated: tuple[Path, str, str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``--run`` picks the older run: its page names it and holds none of the newest run's rows."""
    db_path, older, _ = populated
    assert search_main(["report", "--db", str(db_path), "--out", str(tmp_path / "r"), "--run", older]) == 0
    assert "index.html" in capsys.readouterr().out
    page = _parse(tmp_path / "r" / "index.html")
    text = "".join(page.text)
    assert older in text and SECTIONS <= page.ids and "agent" not in text and HOSTILE not in text
    assert all((tmp_path / "r" / str(img["src"])).is_file() for img in page.imgs)


@pytest.mark.parametrize("case", ["unknown run", "missing database", "empty database"])
def test_cli_user_errors_are_one_line(tmp_path: Path, populated: tuple[Path, str, str], case: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = {"unknown run": populated[0], "missing database": tmp_path / "nope.db",
          "empty database": tmp_path / "empty.db"}[case]
    if case == "empty database":
        SearchDatabase(db).close()
    argv: Sequence[str] = ["report", "--db", str(db), "--out", str(tmp_path / "r")]
    rc = search_main([*argv, "--run", "r-does-not-exist"] if case == "unknown run" else argv)
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("python -m avo_inductor.search: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    assert {"unknown run": "no run 'r-does-not-exist'", "missing database": "no search database",
            "empty database": "no runs in"}[case] in err
    assert not (tmp_path / "r" / "index.html").exists()


def test_missing_matplotlib_is_rc_1(populated: tuple[Path, str, str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(MissingDependency, match="pip install"):
        write_report(populated[0], tmp_path / "r")
    assert search_main(["report", "--db", str(populated[0]), "--out", str(tmp_path / "r")]) == 1
    assert "needs matplotlib" in capsys.readouterr().err


def test_importing_the_cli_does_not_import_matplotlib() -> None:
    code = ("import sys, avo_inductor.search.cli, avo_inductor.search.report, avo_inductor.search.lineage_data; "
            "sys.exit('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0
