"""The HTML pages the project hands people, loaded from disk in headless Chromium with every
network request failing: the `dvc plots` page of `python -m magvit.plots` draws every plot
that dvc.yaml defines (DVC's own page, whose libraries come from a CDN, draws none), and the
Data Docs of a clip validation show the suite's results.

Needs Chromium (Debian's `chromium`, which .ci/run installs); skipped without it."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from magvit.params import ValidateClipsParams
from stages.validate_clips import validate_clips

from clip_fixtures import write_clip_folder
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium (Debian package `chromium`; .ci/run installs it)"
)
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]


class RenderedPage(HTMLParser):
    """A DOM as Chromium left it: its visible text, and its elements counted as `tag.class`."""

    def __init__(self, dom: str):
        super().__init__()
        self.text: list[str] = []
        self.elements: Counter[str] = Counter()
        self._hidden = 0  # inside <script> or <style>
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._hidden += tag in ("script", "style")
        classes = dict(attrs).get("class") or ""
        self.elements.update(f"{tag}.{name}" for name in classes.split())

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.text.append(data.strip())

    @property
    def visible_text(self) -> str:
        return " ".join(self.text)


def render_offline(page: Path) -> RenderedPage:
    """`page` after Chromium ran its scripts, with no network."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *OFFLINE,
         "--virtual-time-budget=20000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return RenderedPage(result.stdout)


def write_curve_csvs(repo: Path, plots: list[dict]) -> None:
    """A few rows for every CSV column the plots draw: the x field against each y field."""
    columns: dict[str, set[str]] = {}
    for plot in plots:
        (spec,) = plot.values()
        for path, fields in spec["y"].items():
            columns.setdefault(path, {spec["x"]}).update(
                [fields] if isinstance(fields, str) else fields
            )
    for path, fields in columns.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        with (repo / path).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=sorted(fields))
            writer.writeheader()
            writer.writerows({field: 0.1 * row + 1 for field in fields} for row in range(3))


def dvc(args: list[str], repo: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_the_plots_page_draws_every_plot_offline(tmp_path):
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    write_curve_csvs(repo, plots)
    dvc([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], repo)

    dvc([sys.executable, "-m", "magvit.plots", "show", "-o", "offline"], repo)
    page = render_offline(repo / "offline" / "index.html")
    assert page.elements["svg.marks"] == len(plots), "one drawn chart per plot in dvc.yaml"
    for plot in plots:
        (spec,) = plot.values()
        assert spec["title"] in page.visible_text

    dvc([sys.executable, "-m", "dvc", "plots", "show", "-o", "cdn"], repo)
    assert render_offline(repo / "cdn" / "index.html").elements["svg.marks"] == 0  # DVC's page


def test_the_data_docs_show_the_validation_results_offline(tmp_path):
    docs = tmp_path / "clips_docs"
    params = ValidateClipsParams(min_pixel_std=1.0, num_classes=8)
    clips = write_clip_folder(tmp_path / "clips")
    assert validate_clips(clips, params, tmp_path / "results.json", docs).success

    index = render_offline(docs / "index.html").visible_text
    assert "Data Docs" in index and "clips_site" in index
    (validation,) = (docs / "validations").rglob("*.html")
    result = render_offline(validation).visible_text
    assert "Expectation Validation Result" in result and "Status: Succeeded" in result
    assert "Expectation Suite: clips" in result
    assert "Must have greater than or equal to 1 rows" in result  # an expectation's row
