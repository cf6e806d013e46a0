"""Check the search report in a real headless Chromium: the page renders (a non-blank screenshot) and every image
loads. Local check, not CI (CI parses the files instead: tests/test_search_report.py).

    python benchmarks/report_browser_check.py [--db search.db] [--run ID] [--screenshot docs/report-screenshot.png]

Without --db a demo database is filled by a small real search with the synthetic evaluator of tests/search_fakes.py
(plus a few planted failures). Chromium: ``apt-get install -y --no-install-recommends chromium`` (or set CHROMIUM);
when none is found the check is skipped with a message (exit 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1400, 2000)
# The probe runs in a throwaway copy of the page (the report itself has no script): after the load event it records
# every <img> that did not decode (complete but naturalWidth 0) on <body>, where --dump-dom shows it.
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({total: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src"))}));
});</script>"""


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _chromium(binary: str, *args: str) -> str:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def demo_database(path: Path) -> Path:
    """A two-spec, three-island search with the synthetic evaluator; some candidates fail at planted stages."""
    sys.path.insert(0, str(REPO / "tests"))
    from search_fakes import HW, SPEC, SW, FakeEvaluator, default_genome

    from avo_inductor.search.database import SearchDatabase
    from avo_inductor.search.engine import SearchConfig, SearchEngine
    from avo_inductor.search.operators import StructuredOperator
    from avo_inductor.search.types import Candidate, EvalResult, Stage

    class Planted(FakeEvaluator):
        def _one(self, c: Candidate) -> EvalResult:
            assert c.genome is not None
            if c.genome.num_warps == 2:
                return EvalResult(c.id, False, Stage.CORRECT_SMALL, message="max abs err 0.31 > tol 0.016 "
                                  "<script>alert('escaped?')</script>")
            if c.genome.num_stages == 4:
                return EvalResult(c.id, False, Stage.TIMEOUT, message="worker timed out after 60 s")
            return super()._one(c)

    specs = (SPEC, dataclasses.replace(SPEC, q_len=47, kv_len=47, causal=False))
    config = SearchConfig(specs=specs, generations=8, population=4, islands=3, seed=1, migration_interval=2)
    with SearchDatabase(path) as db:
        SearchEngine(db, Planted(), [(StructuredOperator(valid=None), 1.0)], config, hardware=HW, software=SW,
                     default_genome=default_genome).run()
    return path


def check_screenshot(path: Path) -> None:
    """Non-blank: many colours and a real share of non-background pixels (a blank or error page has neither)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        assert rgb.size == WINDOW, f"screenshot is {rgb.size}, expected {WINDOW}"
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        background = max(colours)[1] if colours else None
        inked = sum(n for n, c in colours if c != background) / (rgb.size[0] * rgb.size[1])
    assert len(colours) > 200 and inked > 0.05, f"screenshot looks blank: {len(colours)} colours, {inked:.1%} ink"


def check_images(binary: str, index: Path) -> dict[str, object]:
    probe_page = index.with_name("_browser_probe.html")
    probe_page.write_text(index.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        dom = _chromium(binary, "--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri())
    finally:
        probe_page.unlink()
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, "the probe did not run: no data-probe attribute in the dumped DOM"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    expected = index.read_text(encoding="utf-8").count("<img ")
    assert result["total"] == expected > 0, f"{result['total']} images in the DOM, {expected} in the page"
    assert not result["broken"], f"images that did not load: {result['broken']}"
    return dict(result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="search database (default: a demo database from a synthetic search)")
    p.add_argument("--run", help="run id (default: the newest)")
    p.add_argument("--out", help="report folder (default: a temporary one)")
    p.add_argument("--screenshot", help="also keep the screenshot here (e.g. docs/report-screenshot.png)")
    args = p.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        print("SKIPPED: no chromium found (apt-get install -y --no-install-recommends chromium, or set CHROMIUM)")
        return 0
    from avo_inductor.search.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else demo_database(Path(tmp) / "search.db")
        files = write_report(db, Path(args.out) if args.out else Path(tmp) / "report", args.run)
        shot = Path(tmp) / "screenshot.png"
        _chromium(binary, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", files.html.as_uri())
        check_screenshot(shot)
        images = check_images(binary, files.html)
        if args.screenshot:
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, args.screenshot)
    print(f"ok: {files.html} rendered in {Path(binary).name}; {images['total']} image(s) loaded, screenshot non-blank")
    return 0


if __name__ == "__main__":
    sys.exit(main())
