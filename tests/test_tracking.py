"""W&B: one offline run per job, with the resolved config and the final metrics (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepcuts.pipeline import run


def wandb_items(run_dir: Path) -> dict[str, object]:
    """Key -> JSON value of the config/summary items in an offline ``.wandb`` file.

    wandb 0.31 keeps offline runs only in its binary log (no Python reader ships with it); each
    item is a protobuf message ``{1: key, 16: value_json}``, which is all this test needs.
    """
    data = next(run_dir.glob("*.wandb")).read_bytes()
    items = {}
    for i in range(len(data) - 4):
        if data[i] != 0x0A:
            continue
        kl = data[i + 1]
        j = i + 2 + kl
        if kl == 0 or data[j : j + 2] != b"\x82\x01":
            continue
        vl = data[j + 2]
        if vl >= 0x80:
            continue
        try:
            items[data[i + 2 : j].decode()] = json.loads(data[j + 3 : j + 3 + vl])
        except (UnicodeDecodeError, ValueError):
            continue
    return items


@pytest.mark.slow
def test_wandb_offline_run_has_config_and_summary(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("data=stsb", "strategy=layer_mag_weight", "logger.wandb.enabled=true",
                   f"logger.wandb.dir={tmp_path / 'wb'}")
    results = run(cfg)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    items = wandb_items(runs[0])
    assert items["ratio"] == 3 and items["ratio_basis"] == "bert_base" and items["seed"] == 0
    assert items["pruned/pearson"] == pytest.approx(results["pruned"]["pearson"])
    assert items["dense/pearson"] == pytest.approx(results["dense"]["pearson"])
    assert items["prune/compression_ratio"] == pytest.approx(results["achieved_ratio"])
    assert items["prune/keep_fraction"] == pytest.approx(results["keep_fraction"])
    # a second job is a second run, not merged into the first
    run(make_cfg("data=stsb", "strategy=random", "logger.wandb.enabled=true",
                 f"logger.wandb.dir={tmp_path / 'wb'}", f"output_dir={tmp_path / 'run2'}"))
    assert len(list((tmp_path / "wb" / "wandb").glob("offline-run-*"))) == 2


@pytest.mark.slow
def test_analysis_folder_goes_to_wandb_as_images_and_tables(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from deepcuts.analysis.wandb_upload import log_folder

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "iou"
    out.mkdir()
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(out / "heatmap_mean_stsb_r3.png")
    (out / "layer_iou.csv").write_text("layer,iou_kept\n0,0.9\n1,0.8\n")
    log_folder(out, "mask-analysis")
    (run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    data = next(run.glob("*.wandb")).read_bytes()
    assert b"mask-analysis/heatmap_mean_stsb_r3" in data and b"mask-analysis/layer_iou" in data
    assert list((run / "files" / "media").rglob("*.png")) and list((run / "files" / "media").rglob("*.json"))
