"""The comparison report over synthetic run folders: exact statistics, files, unfinished runs, CLI."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from deepcuts.analysis.report import ReportCallback, collect_runs, summarise, write_report

REPO = Path(__file__).resolve().parents[1]
MONITOR = {"stsb": "pearson", "cola": "mcc"}
BASE = {"stsb": 0.85, "cola": 0.55}
OFFSET = {"layer_mag_weight": 0.0, "gradcam_shift": 0.03}
NOISE = [0.004, -0.011, 0.0025]  # per seed
RATIOS = [2.0, 3.5]


def write_run(folder: Path, **fields) -> Path:
    """A run folder as ``train.py`` leaves it: results.json plus Hydra's ``.hydra/``."""
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    results = {
        "status": "complete", "model": "minilm", "scope": "layer", "ratio_basis": "bert_base",
        "keep_fraction": 0.5, "prunable_sparsity": 0.5, "pruned_last_epoch": {}, "timings_s": {},
        **fields,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def pruned_value(data: str, strategy: str, ratio: float, seed: int) -> float:
    return BASE[data] + OFFSET[strategy] - 0.05 * ratio + NOISE[seed]


def dense_value(data: str, seed: int) -> float:
    return BASE[data] + 0.01 * seed


def make_sweep(root: Path) -> dict:
    """2 data sets x 2 strategies x 2 ratios x 3 seeds, one unfinished and one failed job.
    Returns the values written, by (data, strategy, ratio)."""
    written: dict = {}
    job = 0
    for data, monitor in MONITOR.items():
        for strategy in OFFSET:
            for ratio in RATIOS:
                for seed in range(3):
                    pruned = pruned_value(data, strategy, ratio, seed)
                    dense = dense_value(data, seed)
                    achieved = ratio + 0.01 * seed
                    write_run(
                        root / f"{job}_{data}_{strategy}_r{ratio}_s{seed}",
                        data=data, strategy=strategy, ratio=ratio, seed=seed, monitor=monitor,
                        achieved_ratio=achieved,
                        dense={monitor: dense, "loss": 0.5}, pruned={monitor: pruned, "loss": 0.6},
                    )
                    entry = written.setdefault((data, strategy, ratio), ([], [], []))
                    entry[0].append(pruned)
                    entry[1].append(dense)
                    entry[2].append(achieved)
                    job += 1
    (root / "98_unfinished").mkdir()
    (root / "98_unfinished" / "config.yaml").write_text("seed: 0\n")
    write_run(root / "99_failed", status="failed", data="stsb", strategy="gradcam_shift",
              ratio=4.0, seed=0, monitor="pearson", achieved_ratio=4.0, dense={}, pruned={})
    return written


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    return root, make_sweep(root)


def test_collect_runs_finds_complete_and_lists_the_rest(sweep):
    root, _ = sweep
    df, unfinished = collect_runs([root])
    assert len(df) == 2 * 2 * 2 * 3
    assert sorted(p.name for p in unfinished) == ["98_unfinished", "99_failed"]
    assert set(df["metric"]) == {"pearson", "mcc"}


def test_summary_has_exact_means_stds_and_seed_counts(sweep):
    root, written = sweep
    summary = summarise(collect_runs([root])[0])
    assert list(summary.columns[:4]) == ["data", "strategy", "ratio", "metric"]
    assert {"pruned_mean", "pruned_std", "dense_mean", "dense_std", "seeds",
            "achieved_ratio_mean"} <= set(summary.columns)
    assert len(summary) == 8
    keys = list(zip(summary["data"], summary["strategy"], summary["ratio"], strict=True))
    assert keys == sorted(written)  # sorted by data, strategy, ratio
    for row in summary.itertuples(index=False):
        pruned, dense, achieved = written[(row.data, row.strategy, row.ratio)]
        assert row.metric == MONITOR[row.data]
        assert row.pruned_mean == pytest.approx(statistics.mean(pruned), abs=1e-12)
        assert row.pruned_std == pytest.approx(statistics.stdev(pruned), abs=1e-12)
        assert row.dense_mean == pytest.approx(statistics.mean(dense), abs=1e-12)
        assert row.dense_std == pytest.approx(statistics.stdev(dense), abs=1e-12)
        assert row.achieved_ratio_mean == pytest.approx(statistics.mean(achieved), abs=1e-12)
        assert row.seeds == 3


def test_write_report_files_printing_and_unfinished(sweep, tmp_path, capsys):
    root, written = sweep
    out = tmp_path / "out"
    result = write_report([root], out)
    for path in (result["csv"], result["markdown"]):
        assert path.is_file() and path.stat().st_size > 0
    assert set(result["plots"]) == {"stsb", "cola"}
    for data, png in result["plots"].items():
        assert png == out / f"{data}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert sorted(p.name for p in result["unfinished"]) == ["98_unfinished", "99_failed"]

    csv = pd.read_csv(result["csv"])
    assert len(csv) == 8 and csv["seeds"].tolist() == [3] * 8
    md = result["markdown"].read_text()
    assert "## stsb (pearson)" in md and "## cola (mcc)" in md
    pruned = written[("stsb", "gradcam_shift", 3.5)][0]
    cell = f"{statistics.mean(pruned):.4f} ± {statistics.stdev(pruned):.4f}"
    assert cell in md
    assert "Unfinished or failed runs (2)" in md
    assert "98_unfinished" in md and "99_failed" in md and "status 'failed'" in md
    printed = capsys.readouterr().out
    assert cell in printed and "98_unfinished" in printed


def test_single_seed_std_is_nan_and_shown_as_na(tmp_path):
    write_run(tmp_path / "run", data="sst2", strategy="gradcam_shift", ratio=3.0, seed=7,
              monitor="acc", achieved_ratio=3.0, dense={"acc": 0.9}, pruned={"acc": 0.88})
    result = write_report([tmp_path], tmp_path / "report")
    row = result["summary"].iloc[0]
    assert row["seeds"] == 1 and math.isnan(row["pruned_std"]) and row["pruned_mean"] == 0.88
    assert "0.8800 ± n/a" in result["markdown"].read_text()


def test_mixed_models_are_not_averaged(tmp_path):
    for model, value in (("minilm", 0.7), ("bert_base", 0.8)):
        write_run(tmp_path / model, model=model, data="stsb", strategy="gradcam_shift", ratio=3.0,
                  seed=0, monitor="pearson", achieved_ratio=3.0, dense={"pearson": 0.9},
                  pruned={"pearson": value})
    summary = summarise(collect_runs([tmp_path])[0])
    assert list(summary.columns[:5]) == ["data", "model", "strategy", "ratio", "metric"]
    assert dict(zip(summary["model"], summary["pruned_mean"], strict=True)) == {
        "minilm": 0.7, "bert_base": 0.8}


def test_rerun_of_a_seed_is_counted_once(tmp_path):
    import os

    for name, value, mtime in (("old", 0.5, 1_000_000), ("new", 0.6, 2_000_000)):
        run = write_run(tmp_path / name, data="cola", strategy="gradcam_shift", ratio=2.0, seed=0,
                        monitor="mcc", achieved_ratio=2.0, dense={"mcc": 0.6},
                        pruned={"mcc": value})
        os.utime(run / "results.json", (mtime, mtime))
    row = summarise(collect_runs([tmp_path])[0]).iloc[0]
    assert row["seeds"] == 1 and row["pruned_mean"] == 0.6


def test_cli(sweep, tmp_path):
    root, _ = sweep
    cmd = [sys.executable, "experiments/report.py", str(root)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "## stsb (pearson)" in done.stdout and "98_unfinished" in done.stdout
    for name in ("report.csv", "report.md", "stsb.png", "cola.png"):
        assert (root / "report" / name).stat().st_size > 0

    missing = subprocess.run([*cmd, str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no such folder" in missing.stderr


def test_callback_writes_report_at_multirun_end(sweep, capsys):
    root, _ = sweep
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}})
    ReportCallback().on_multirun_end(config)
    assert (root / "report" / "report.md").is_file()
    assert (root / "report" / "stsb.png").is_file() and (root / "report" / "cola.png").is_file()
    assert "## cola (mcc)" in capsys.readouterr().out


def test_callback_without_complete_runs_does_not_raise(tmp_path, capsys):
    (tmp_path / "0_job").mkdir()
    (tmp_path / "0_job" / "config.yaml").write_text("seed: 0\n")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    ReportCallback().on_multirun_end(config)
    printed = capsys.readouterr().out
    assert "No complete run" in printed and "0_job" in printed
    assert (tmp_path / "report" / "report.md").is_file()
    assert not list((tmp_path / "report").glob("*.png"))
