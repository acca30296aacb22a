"""report.html in a real browser: headless Chromium must lay out the tables and decode and paint the plots.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``); skipped without it.
Set ``CHROMIUM`` to use another Chromium or Chrome binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_report import GRID, PLOTS, make_sweep
from ttc.report.cli import main

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

# After load, write what the browser decoded into the DOM so --dump-dom can show it.
# Only the test's copy of the page gets this: report.html itself carries no script.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.setAttribute("data-natural-width", img.naturalWidth);
    img.setAttribute("data-natural-height", img.naturalHeight);
  }
  document.body.setAttribute("data-probed", "yes");
});
</script>"""
# Only the plots, so a screenshot of the first fold shows one
PLOTS_ONLY = """<style>
main > h1, main > p, main > ul, main > .scroll, section > p, section > .scroll, section > ul,
section:not(#accuracy-against-compute) { display: none; }
</style>"""
TAB10 = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44), "red": (214, 39, 40)}


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


class Dom(HTMLParser):
    """The elements the checks need from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.tables: list[int] = []  # body rows per table
        self.body: dict[str, str | None] = {}
        self.text: list[str] = []
        self._in_tbody = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "body":
            self.body = dict(attrs)
        elif tag == "tbody":
            self._in_tbody = True
            self.tables.append(0)
        elif tag == "tr" and self._in_tbody:
            self.tables[-1] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_tbody = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    out = root / "report"
    assert main([str(make_sweep(root / "sweep")), "--out", str(out), "--resamples", "200"]) == 0
    return out / "report.html"


def with_extra(page: Path, tmp: Path, extra: str) -> Path:
    """A copy of the page with ``extra`` (a script or style) at the end of the body."""
    probe = tmp / "probe.html"
    probe.write_text(page.read_text().replace("</body>", f"{extra}</body>"))
    return probe


def test_tables_and_decoded_plots_are_in_the_dom(page: Path, tmp_path: Path) -> None:
    probe = with_extra(page, tmp_path, PROBE)
    dom = Dom()
    dom.feed(chromium(tmp_path, "--dump-dom", probe.as_uri()).stdout)
    assert dom.body.get("data-probed") == "yes", "the load handler never ran"
    # strategy leaderboard, configuration leaderboard, then the budget table
    assert dom.tables[0] == len({s["name"] for s, _, _ in GRID})
    assert dom.tables[1] == len(GRID)
    assert len(dom.tables) >= 8
    text = " ".join(dom.text)
    for label in ("beam_search(n=16, width=4)", "mcts(sims=32, k=4)", "best_of_n(n=4)", "Pareto frontier"):
        assert label in text
    assert len(dom.images) == len(PLOTS)
    for img, name in zip(dom.images, PLOTS, strict=True):
        with Image.open(page.parent / name) as png:
            width, height = png.size
        # a broken data URI decodes to 0 x 0
        assert img.get("data-natural-width") == str(width), img.get("alt")
        assert img.get("data-natural-height") == str(height), img.get("alt")


def test_screenshot_is_not_blank(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1200, 2000)
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "a page of text, tables and plots has many colours"
        white = {colour: count for count, colour in colours}.get((255, 255, 255), 0)
        assert white < 0.97 * rgb.size[0] * rgb.size[1], "the page rendered (almost) blank"


def test_plots_paint_their_strategy_lines(page: Path, tmp_path: Path) -> None:
    probe = with_extra(page, tmp_path, PLOTS_ONLY)
    shot = tmp_path / "plots.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", probe.as_uri())
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=int)
    # one line per strategy, in the leaderboard's colour order
    for name, colour in TAB10.items():
        near = int((np.abs(pixels - np.array(colour)).sum(axis=-1) < 40).sum())
        assert near > 100, f"no {name} line in the first plot"
