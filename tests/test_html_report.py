"""report.html: the comparison report as one offline page, rendered in headless Chromium."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from deepcuts.analysis.render.report import write_report
from tests.test_html import _render
from tests.test_report import MONITOR, make_sweep


def _add_masks(root) -> int:
    """Masks for every complete run of the synthetic sweep: the same for both strategies at
    seed 0, independent otherwise, so the heatmaps have something to show."""
    n = 0
    for results in root.glob("*/results.json"):
        run = results.parent
        if "failed" in run.name:
            continue
        seed = int(run.name.rsplit("_s", 1)[1])
        gen = torch.Generator().manual_seed(seed if seed == 0 else hash(run.name) % 1000)
        masks = {"bert.encoder.layer.0.attention.self.query.weight": torch.rand(8, 8, generator=gen) < 0.3}
        save_file(masks, str(run / "masks.safetensors"))
        n += 1
    return n


def test_report_html_renders_every_table_and_plot(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    make_sweep(root)
    assert _add_masks(root) == 24
    written = write_report([root], tmp_path / "report")
    page = written["html"]
    text = page.read_text(encoding="utf-8")
    for data in MONITOR:
        assert f"{data} (" in text  # one section per data set
    assert "Paired differences" in text and "gradcam_shift" in text
    assert "kept-weight IoU" in text  # the mask heatmaps
    status = _render(page, tmp_path)
    assert status["errors"] == [], status
    # per data set: one metric-vs-ratio plot and one heatmap per ratio (2 ratios)
    assert status["plots"] == status["rendered"] == len(MONITOR) * (1 + 2), status


def test_report_html_without_masks_still_has_plots(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    make_sweep(root)
    written = write_report([root], tmp_path / "report", masks=False)
    status = _render(written["html"], tmp_path)
    assert status["errors"] == [] and status["plots"] == status["rendered"] == len(MONITOR), status
