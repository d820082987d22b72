"""The offline HTML page builder: content, atomic writes, and a real render in headless Chromium.

The browser tests need Debian's ``chromium`` package (CI installs it); without it they fail,
unless ``DEEPCUTS_SKIP_BROWSER=1`` is set, when they are skipped.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from deepcuts.analysis.render import html as dc_html
from deepcuts.analysis.render.html import Heatmap, LinePlot, Section, Table, format_cell, write_html

N_PLOTS = 3  # two line plots and one heatmap below
BROWSER_TIMEOUT_S = 60


def _sections() -> list[Section]:
    ratios = [0.1, 0.3, 0.5, 0.7, 0.9]
    rows = []
    for strategy, drop in (("cam-cut", 0.2), ("random", 0.45), ('magnitude <&> "q"', 0.3)):
        for i, r in enumerate(ratios):
            y = 0.86 - drop * r * r
            # NaN error bars: a single seed at one ratio, and a one-sided bound at another
            lo = math.nan if i == 2 else y - 0.02
            hi = math.nan if i in (2, 4) else y + 0.015
            rows.append({"series": strategy, "x": r, "y": y, "lo": lo, "hi": hi})
    curves = pd.DataFrame(rows)
    summary = (
        curves.groupby(["series", "x"])["y"]
        .agg(["mean", "std", "count"])
        .rename_axis(["strategy", "ratio"])
    )
    summary.loc[("random", 0.5), ["mean", "std"]] = [0.123456789, math.nan]
    failed = pd.DataFrame({"run": ["sst2/random/0.9/seed=2"], "reason": ["status 'failed' <oom>"]})
    iou = [[1.0, 0.41, math.nan], [0.41, 1.0, 0.77], [math.nan, 0.77, 1.0]]
    names = ["cam-cut", "smooth-cut", "magnitude"]
    return [
        Section(
            "Summary",
            [
                "Pruned dev accuracy per strategy and ratio <not html>.",
                Table(
                    "Mean over seeds",
                    summary,
                    note="Std is NaN with one seed & that's shown as a dash.",
                ),
                Table("Unfinished runs", failed),
            ],
        ),
        Section(
            "Curves",
            [
                LinePlot(
                    "SST-2 accuracy",
                    curves,
                    "pruning ratio",
                    "dev accuracy",
                    hlines={"dense": 0.86, "majority class": 0.51},
                ),
                LinePlot(
                    "MRPC F1",
                    curves.assign(
                        y=curves["y"] - 0.1, lo=curves["lo"] - 0.1, hi=curves["hi"] - 0.1
                    ),
                    "pruning ratio",
                    "F1",
                ),
            ],
        ),
        Section(
            "Mask overlap", [Heatmap("Mask IoU at ratio 0.5", iou, names, names, colorbar="IoU")]
        ),
    ]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("html")
    return write_html(
        folder / "report.html", "DeepCuts <test> report", _sections(), intro="An intro & more."
    )


# ---------------------------------------------------------------------------------------------
# Without a browser


def test_format_cell():
    assert format_cell(0.851234) == "0.8512"
    assert format_cell(0.000123456) == "0.0001235"
    assert format_cell(3) == "3"
    assert format_cell(math.nan) == "—"
    assert format_cell(None) == "—"
    assert format_cell(pd.NA) == "—"
    assert format_cell("<b>") == "&lt;b&gt;"


def test_page_content(page: Path):
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # plotly's JavaScript is inlined exactly once
    from plotly.offline import get_plotlyjs

    assert text.count(get_plotlyjs()[:2000]) == 1
    assert text.count("Plotly.newPlot(") == N_PLOTS
    assert len(re.findall(r'<div class="dc-plot"', text)) == N_PLOTS
    assert "var expected = 3;" in text
    # no network: no external script/link/img sources, no CDN, no web fonts
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", text, flags=re.I)
    assert not [t for t in tags if re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", t, re.I)]
    assert not re.search(r"""<(script|link)[^>]*\b(src|href)\s*=\s*["']?https?://""", text, re.I)
    ours = text.replace(get_plotlyjs(), "")  # the page without plotly.js (which names its CDN)
    assert len(ours) < 100_000
    assert "@import" not in ours and "@font-face" not in ours and "cdn.plot.ly" not in ours
    # user text is escaped; floats have 4 significant digits; NaN is a dash
    assert "DeepCuts &lt;test&gt; report" in text and "<test>" not in text
    assert "&lt;not html&gt;" in text and "&lt;oom&gt;" in text
    assert ">0.1235</td>" in ours and "0.12345" not in ours
    assert '<td class="num">—</td>' in text
    assert '<th class="txt">strategy</th>' in text  # a named index becomes columns


def test_write_is_atomic(page: Path, monkeypatch):
    before = page.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(dc_html.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_html(page, "another", [Section("s", ["x"])])
    monkeypatch.undo()
    assert page.read_bytes() == before
    assert sorted(p.name for p in page.parent.iterdir()) == [page.name]  # no temp file left


def test_bad_items_are_rejected(tmp_path: Path):
    with pytest.raises(TypeError, match="Table, LinePlot, Heatmap or str"):
        write_html(tmp_path / "x.html", "t", [Section("s", [42])])
    with pytest.raises(ValueError, match="Heatmap"):
        write_html(
            tmp_path / "x.html", "t", [Section("s", [Heatmap("h", [[1.0, 2.0]], ["a"], ["r"])])]
        )
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# In headless Chromium


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("DEEPCUTS_SKIP_BROWSER") == "1":
        pytest.skip("no chromium and DEEPCUTS_SKIP_BROWSER=1")
    pytest.fail(
        "chromium not found: install Debian's `chromium` package (apt-get install -y chromium; "
        "CI installs it), or set DEEPCUTS_SKIP_BROWSER=1 to skip the browser tests"
    )


def _render(page: Path, tmp_path: Path) -> dict:
    """Open ``page`` offline in headless Chromium and return its ``#dc-status`` JSON."""
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT_S} s: {err}")
    match = re.search(r'<pre id="dc-status"[^>]*>(.*?)</pre>', proc.stdout, flags=re.S)
    assert match, (
        f"no #dc-status in chromium's DOM (rc={proc.returncode})\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    )
    return json.loads(html.unescape(match.group(1)))


def test_page_renders_in_chromium(page: Path, tmp_path: Path):
    status = _render(page, tmp_path)
    assert status["errors"] == [], status
    assert status["rendered"] == status["plots"] == N_PLOTS, status


def test_chromium_reports_a_broken_script(page: Path, tmp_path: Path):
    broken = tmp_path / "broken.html"
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    broken.write_text(
        text.replace("</body>", '<script>throw new Error("boom")</script>\n</body>'),
        encoding="utf-8",
    )
    status = _render(broken, tmp_path)
    assert any("boom" in e for e in status["errors"]), status
    assert status["rendered"] == N_PLOTS, status
