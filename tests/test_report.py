"""The comparison report over synthetic run folders: exact statistics, sweeps, paired
differences, controls, selection, files, unfinished runs, CLI."""

from __future__ import annotations

import functools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats as st

from deepcuts.analysis.render.report import ReportCallback, write_report
from deepcuts.analysis.runs import collect_runs
from deepcuts.analysis.summary import summarise

REPO = Path(__file__).resolve().parents[1]
MONITOR = {"stsb": "pearson", "cola": "mcc"}
BASE = {"stsb": 0.85, "cola": 0.55}
OFFSET = {"layer_mag_weight": 0.0, "gradcam_shift": 0.03}
NOISE = [0.004, -0.011, 0.0025]  # per seed
RATIOS = [2.0, 3.5]


def write_run(folder: Path, config: dict | None = None, **fields) -> Path:
    """A run folder as ``train.py`` leaves it: results.json plus Hydra's ``.hydra/``, and the
    resolved ``config.yaml`` beside them when ``config`` is given."""
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    if config is not None:
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
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


def test_a_seed_with_a_nan_metric_is_counted_and_named(tmp_path):
    """A collapsed STS-B model has no Pearson: the mean is over the other seeds, and the table
    says so instead of implying three seeds behind it."""
    for seed, value in ((0, 0.5), (1, 0.3), (2, float("nan"))):
        write_run(tmp_path / f"s{seed}", data="stsb", strategy="movement", ratio=3.5, seed=seed,
                  monitor="pearson", achieved_ratio=1.77, dense={"pearson": 0.78}, pruned={"pearson": value})
    result = write_report([tmp_path], tmp_path / "report", html=False)
    row = result["summary"].iloc[0]
    assert row["seeds"] == 3 and row["seeds_nan"] == 1 and row["pruned_mean"] == 0.4
    assert "| 3 (1 NaN, not in the mean) |" in result["markdown"].read_text()


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


# --- sweeps, pairing, controls, selection (config.yaml beside results.json) -------------------

@functools.cache
def _composed(overrides: tuple[str, ...]) -> str:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["output_dir=unset", *overrides])
    return OmegaConf.to_yaml(cfg, resolve=True)


def real_config(folder: Path, strategy: str, seed: int, ratio: float, *overrides: str) -> dict:
    """The resolved config ``train.py`` writes for this job (the real conf/ tree), with the
    job's own output_dir as in a multirun."""
    cfg = OmegaConf.to_container(OmegaConf.create(_composed(
        (f"strategy={strategy}", f"seed={seed}", f"ratio={ratio}", *overrides))))
    cfg["output_dir"] = str(folder)
    return cfg


def stsb_run(root: Path, name: str, strategy: str, seed: int, pruned: float, *overrides: str,
             ratio: float = 3.0, config: bool = True, **fields) -> Path:
    """An STS-B run with the current results fields (selection "last" unless given)."""
    folder = root / name
    metrics = {"pearson": pruned, "spearmanr": pruned - 0.01, "mse": 1.0 - pruned}
    last = {k: v - 0.002 for k, v in metrics.items()}
    results = {
        "data": "stsb", "strategy": strategy, "ratio": ratio, "seed": seed, "monitor": "pearson",
        "achieved_ratio": ratio, "dense": {"pearson": 0.85, "spearmanr": 0.84, "mse": 0.6},
        "dense_last_epoch": {"pearson": 0.849, "spearmanr": 0.839, "mse": 0.61},
        "pruned": metrics, "pruned_last_epoch": last, "selection": "last",
        "control": strategy == "random" or strategy.startswith("shuffled"), **fields,
    }
    cfg = real_config(folder, strategy, seed, ratio, *overrides) if config else None
    return write_run(folder, config=cfg, **results)


def section(md: str, start: str, end: str) -> str:
    """The text of ``md`` from the heading ``start`` to the next ``end`` heading."""
    assert start in md, start
    rest = md.split(start, 1)[1]
    return rest.split(end, 1)[0] if end in rest else rest


def first_cells(text: str) -> list[str]:
    """The first cell of each data row of the Markdown tables in ``text``."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [r.split("|")[1].strip() for r in rows if not r.startswith("| strategy")
            and not r.startswith("| optimizer") and not r.startswith("| strategy.")]


LR = {"5e-05": 0.80, "0.0001": 0.70}  # pruned pearson level per learning rate
SEED_NOISE = [0.004, -0.011, 0.0025]


def make_lr_sweep(root: Path) -> None:
    """layer_mag_grad and smoothgrad x optimizer.lr in {5e-5, 1e-4} x 3 seeds, ratio 3."""
    for lr, level in LR.items():
        for seed, noise in enumerate(SEED_NOISE):
            stsb_run(root, f"grad_lr{lr}_s{seed}", "layer_mag_grad", seed, level + noise,
                     f"optimizer.lr={lr}")
            stsb_run(root, f"smooth_lr{lr}_s{seed}", "smoothgrad", seed,
                     level + noise + 0.01 * (seed + 1), f"optimizer.lr={lr}")


def test_lr_sweep_is_reported_as_separate_rows_and_pairs_within_each_lr(tmp_path):
    make_lr_sweep(tmp_path)
    # a run of the same group without config.yaml: no value for the sweep key, a row of its own
    stsb_run(tmp_path, "smooth_noconfig_s0", "smoothgrad", 0, 0.5, config=False)
    result = write_report([tmp_path], tmp_path / "report")
    assert result["sweep_keys"] == ["optimizer.lr"]
    summary = result["summary"]
    assert "optimizer.lr" in summary.columns and len(summary) == 5
    for lr, level in LR.items():
        for strategy, bonus in (("layer_mag_grad", [0, 0, 0]), ("smoothgrad", [.01, .02, .03])):
            row = summary[(summary["strategy"] == strategy)
                          & (summary["optimizer.lr"] == float(lr))].iloc[0]
            values = [level + n + b for n, b in zip(SEED_NOISE, bonus, strict=True)]
            assert row["seeds"] == 3
            assert row["pruned_mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert row["pruned_std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    lone = summary[summary["optimizer.lr"].isna()].iloc[0]
    assert lone["strategy"] == "smoothgrad" and lone["seeds"] == 1 and lone["pruned_mean"] == 0.5

    paired = result["paired"]
    assert set(paired["baseline"]) == {"layer_mag_grad"}  # layer_mag_weight has no runs
    smooth = paired[paired["strategy"] == "smoothgrad"].set_index("optimizer.lr")
    assert sorted(smooth.index) == [5e-05, 1e-4]  # the config-less run has no baseline to pair
    for lr in (5e-05, 1e-4):  # pairing across lr would give differences of ±0.1
        assert smooth.loc[lr, "mean_diff"] == pytest.approx(0.02, abs=1e-12)
        assert smooth.loc[lr, "seeds"] == 3 and smooth.loc[lr, "wins"] == 3

    runs = result["runs"]
    assert len(runs) == 13 and "optimizer.lr" in runs.columns and "config" not in runs.columns
    md = result["markdown"].read_text()
    assert "optimizer.lr" in section(md, "## stsb (pearson)", "## Paired")
    table = section(md, "## stsb (pearson)", "## Paired")
    assert "| smoothgrad | 3 | — | last |" in table
    assert "| smoothgrad | 3 | 0.0001 | last |" in table
    assert (tmp_path / "report" / "paired.csv").is_file()


def test_sigma_sweep_pairs_each_sigma_with_the_single_baseline(tmp_path):
    base = [0.80, 0.79, 0.81]
    for seed, level in enumerate(base):
        stsb_run(tmp_path, f"grad_s{seed}", "layer_mag_grad", seed, level)
        for sigma, diff in (("0.001", 0.01 * (seed + 1)), ("0.1", -0.04 + 0.001 * seed)):
            stsb_run(tmp_path, f"smooth_sigma{sigma}_s{seed}", "smoothgrad", seed,
                     level + diff, f"strategy.sigma={sigma}")
    result = write_report([tmp_path], tmp_path / "report")
    assert result["sweep_keys"] == ["strategy.sigma"]
    summary = result["summary"]
    assert len(summary) == 3
    grad = summary[summary["strategy"] == "layer_mag_grad"].iloc[0]
    assert grad["seeds"] == 3 and pd.isna(grad["strategy.sigma"])
    paired = result["paired"]
    assert len(paired) == 2 and set(paired["baseline"]) == {"layer_mag_grad"}
    by_sigma = paired.set_index("strategy.sigma")
    assert by_sigma.loc[0.001, "mean_diff"] == pytest.approx(0.02, abs=1e-12)
    assert by_sigma.loc[0.1, "mean_diff"] == pytest.approx(-0.039, abs=1e-12)
    assert by_sigma.loc[0.001, "wins"] == 3 and by_sigma.loc[0.1, "wins"] == 0
    assert (paired["seeds"] == 3).all() and (paired["paired_seeds"] == "0 1 2").all()
    assert "smoothgrad worse than layer_mag_grad" in by_sigma.loc[0.1, "verdict"]


def test_bookkeeping_and_seed_bound_keys_do_not_split_runs(tmp_path):
    for seed in range(3):  # real configs: output_dir and strategy.seed differ per run
        stsb_run(tmp_path, f"s{seed}", "smoothgrad", seed, 0.8 + 0.01 * seed,
                 f"trainer.log_every_n_steps={5 + seed}", f"data.num_workers={seed}",
                 f"logger.wandb.dir=w{seed}", f"cache_dir=c{seed}")
    result = write_report([tmp_path], tmp_path / "report")
    assert result["sweep_keys"] == []
    assert len(result["summary"]) == 1 and result["summary"]["seeds"].iloc[0] == 3


def test_pairing_by_seed_drops_unpaired_seeds(tmp_path):
    method = {0: 0.81, 1: 0.78, 2: 0.83, 3: 0.60}
    baseline = {0: 0.80, 1: 0.79, 2: 0.80, 4: 0.95}
    for seed, value in method.items():
        stsb_run(tmp_path, f"cam_s{seed}", "gradcam_shift", seed, value, config=False)
    for seed, value in baseline.items():
        stsb_run(tmp_path, f"grad_s{seed}", "layer_mag_grad", seed, value, config=False)
    paired = write_report([tmp_path], tmp_path / "report")["paired"]
    row = paired[paired["strategy"] == "gradcam_shift"].iloc[0]
    diffs = [0.01, -0.01, 0.03]
    assert row["seeds"] == 3 and row["paired_seeds"] == "0 1 2"
    assert row["unpaired_seeds"] == "3 4"
    assert row["mean_diff"] == pytest.approx(statistics.mean(diffs), abs=1e-12)
    assert row["method_mean"] == pytest.approx(statistics.mean([0.81, 0.78, 0.83]), abs=1e-12)
    assert row["wins"] == 2
    half = st.t.ppf(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    assert (row["t_low"], row["t_high"]) == pytest.approx(
        (statistics.mean(diffs) - half, statistics.mean(diffs) + half), abs=1e-12)
    assert row["covers_zero"]
    assert row["verdict"] == ("the 95% interval covers 0: no difference detected with 3 seeds; "
                              "left out: seed 3: no reference run; seed 4: reference only")
    # the baseline is never paired against itself
    assert not (paired["strategy"] == paired["baseline"]).any()


def test_covers_zero_sentence_only_where_the_interval_covers_zero(tmp_path):
    for seed in range(4):
        stsb_run(tmp_path, f"grad_s{seed}", "layer_mag_grad", seed, 0.80 + 0.01 * seed)
        stsb_run(tmp_path, f"cam_s{seed}", "gradcam_shift", seed, 0.83 + 0.01 * seed
                 + 0.002 * (-1) ** seed)  # clearly better on every seed
        stsb_run(tmp_path, f"gc_s{seed}", "gradcam", seed, 0.80 + 0.01 * seed
                 + 0.01 * (-1) ** seed)  # +-0.01: no difference
    result = write_report([tmp_path], tmp_path / "report")
    paired = result["paired"].set_index("strategy")
    sentence = "the 95% interval covers 0: no difference detected with 4 seeds"
    assert paired.loc["gradcam", "verdict"] == sentence
    assert paired.loc["gradcam_shift", "seeds"] == 4
    assert paired.loc["gradcam_shift", "covers_zero"] is not None
    assert not paired.loc["gradcam_shift", "covers_zero"] and paired.loc["gradcam", "covers_zero"]
    assert "covers 0" not in paired.loc["gradcam_shift", "verdict"]
    md = result["markdown"].read_text()
    lines = [line for line in md.splitlines() if sentence in line]
    assert len(lines) == 1 and lines[0].startswith("| gradcam |")
    assert "gradcam_shift better than layer_mag_grad with 4 seeds" in md


def test_controls_have_their_own_tables_and_baselines_are_methods(tmp_path):
    strategies = ["layer_mag_grad", "layer_mag_weight", "gradcam_shift", "random",
                  "shuffled_gradcam_shift"]
    for seed in range(2):
        for i, strategy in enumerate(strategies):
            fields = {}
            if strategy == "random":  # an old run: no control field
                fields = {"selection": "last"}
            run = stsb_run(tmp_path, f"{strategy}_s{seed}", strategy, seed, 0.8 - 0.05 * i,
                           config=False, **fields)
            if strategy == "random":
                res = json.loads((run / "results.json").read_text())
                del res["control"]
                (run / "results.json").write_text(json.dumps(res))
    result = write_report([tmp_path], tmp_path / "report")
    summary = result["summary"].set_index("strategy")
    assert summary["control"].to_dict() == {
        "gradcam_shift": False, "layer_mag_grad": False, "layer_mag_weight": False,
        "random": True, "shuffled_gradcam_shift": True}
    md = result["markdown"].read_text()
    table = section(md, "## stsb (pearson)", "## Paired differences")
    methods = first_cells(section(table, "### Methods", "### Sanity controls"))
    controls = first_cells(section(table, "### Sanity controls", "## "))
    assert methods == ["gradcam_shift", "layer_mag_grad", "layer_mag_weight"]
    assert controls == ["random", "shuffled_gradcam_shift"]

    paired = result["paired"]
    assert not (paired["strategy"] == paired["baseline"]).any()
    pairs = set(zip(paired["strategy"], paired["baseline"], strict=True))
    assert ("layer_mag_weight", "layer_mag_grad") in pairs
    assert ("layer_mag_grad", "layer_mag_weight") in pairs
    assert ("random", "layer_mag_grad") in pairs and len(pairs) == 2 + 3 * 2 + 1
    assert ("shuffled_gradcam_shift", "gradcam_shift") in pairs  # a control vs its own source
    ptable = section(md, "### stsb (pearson): paired differences", "## Unfinished")
    pmethods = first_cells(section(ptable, "#### Methods", "#### Sanity controls"))
    pcontrols = first_cells(section(ptable, "#### Sanity controls", "## "))
    assert set(pmethods) == {"gradcam_shift", "layer_mag_grad", "layer_mag_weight"}
    assert set(pcontrols) == {"random", "shuffled_gradcam_shift"} and len(pcontrols) == 5  # + vs source


def test_selection_dev_is_flagged_and_other_selections_are_not(tmp_path):
    for seed in range(2):
        stsb_run(tmp_path / "a", f"cam_s{seed}", "gradcam_shift", seed, 0.8, config=False)
        stsb_run(tmp_path / "a", f"grad_s{seed}", "layer_mag_grad", seed, 0.79, config=False,
                 selection="dev")
    md = write_report([tmp_path / "a"], tmp_path / "ra")["markdown"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    grad = [r for r in rows if r.startswith("| layer_mag_grad |")]
    cam = [r for r in rows if r.startswith("| gradcam_shift |")]
    assert grad and all("dev (selected on the reported set)" in r for r in grad)
    assert cam and not any("selected on the reported set" in r for r in cam)
    assert "> **Note:** 1 row(s) below used selection `dev`" in md

    for seed in range(2):
        stsb_run(tmp_path / "b", f"cam_s{seed}", "gradcam_shift", seed, 0.8, config=False,
                 selection="holdout")
    md = write_report([tmp_path / "b"], tmp_path / "rb")["markdown"].read_text()
    assert "selected on the reported set" not in md and "| holdout |" in md


def test_old_results_without_new_keys_are_still_reported(tmp_path):
    old = {"status": "complete", "data": "cola", "model": "minilm", "strategy": "random",
           "ratio": 2.0, "ratio_basis": "bert_base", "seed": 0, "monitor": "mcc",
           "achieved_ratio": 2.0, "dense": {"mcc": 0.5}, "pruned": {"mcc": 0.1}}
    (tmp_path / "old_random").mkdir()
    (tmp_path / "old_random" / "results.json").write_text(json.dumps(old))
    (tmp_path / "old_cam").mkdir()
    (tmp_path / "old_cam" / "results.json").write_text(json.dumps(
        {**old, "strategy": "gradcam_shift", "pruned": {"mcc": 0.3}}))
    result = write_report([tmp_path], tmp_path / "report")
    summary = result["summary"].set_index("strategy")
    assert summary["selection"].tolist() == ["dev", "dev"]
    assert summary["control"].to_dict() == {"gradcam_shift": False, "random": True}
    assert summary.loc["random", "pruned_mean"] == 0.1
    assert pd.isna(summary.loc["random", "pruned_last_mean"])
    assert pd.isna(summary.loc["random", "dense_last_mean"])
    md = result["markdown"].read_text()
    assert "| gradcam_shift | 2 | dev (selected on the reported set) |" in md
    assert result["paired"].empty and "No runs of baseline(s)" in md


def test_summary_carries_every_metric_and_the_last_epoch(tmp_path):
    values = [0.80, 0.82]
    for seed, v in enumerate(values):
        stsb_run(tmp_path, f"s{seed}", "smoothgrad", seed, v, config=False)
    result = write_report([tmp_path], tmp_path / "report")
    csv = pd.read_csv(result["csv"])
    row = csv.iloc[0]
    assert row["pruned_spearmanr_mean"] == pytest.approx(statistics.mean(values) - 0.01)
    assert row["pruned_mse_mean"] == pytest.approx(1 - statistics.mean(values))
    assert row["pruned_mse_std"] == pytest.approx(statistics.stdev(values))
    assert row["pruned_last_pearson_mean"] == pytest.approx(statistics.mean(values) - 0.002)
    assert row["dense_last_spearmanr_mean"] == pytest.approx(0.839)
    assert row["pruned_last_mean"] == pytest.approx(statistics.mean(values) - 0.002)
    assert row["dense_last_mean"] == pytest.approx(0.849)
    assert row["pruned_ci95"] == pytest.approx(
        st.t.ppf(0.975, 1) * statistics.stdev(values) / math.sqrt(2))
    md = result["markdown"].read_text()
    table = section(md, "## stsb (pearson)", "## Paired")
    assert ("| achieved ratio | pruned pearson | pruned spearmanr | pruned mse | pruned pearson "
            "(last epoch) | dense pearson | dense spearmanr | dense mse | seeds |") in table
    spearmanr = f"{statistics.mean(values) - 0.01:.4f} ± {statistics.stdev(values):.4f}"
    assert spearmanr in table and "0.8400 ± 0.0000" in table  # every metric, pruned and dense
    assert "No reference line: no run has a `config.yaml`" in table
    last = f"{statistics.mean(values) - 0.002:.4f} ± {statistics.stdev(values):.4f}"
    assert "pruned pearson (last epoch)" in table and last in table


def test_lower_is_better_monitor_counts_lower_as_a_win(tmp_path):
    for seed, (method, base) in enumerate([(0.50, 0.60), (0.55, 0.58), (0.70, 0.65)]):
        for strategy, value in (("gradcam_shift", method), ("layer_mag_grad", base)):
            write_run(tmp_path / f"{strategy}_{seed}", data="stsb", strategy=strategy,
                      ratio=3.0, seed=seed, monitor="mse", achieved_ratio=3.0,
                      dense={"mse": 0.5}, pruned={"mse": value})
    row = write_report([tmp_path], tmp_path / "report")["paired"].iloc[0]
    assert not row["higher_is_better"] and row["wins"] == 2
    assert row["mean_diff"] == pytest.approx((-0.10 - 0.03 + 0.05) / 3)


def test_only_true_duplicates_are_dropped(tmp_path):
    import os

    for lr, value in (("5e-05", 0.8), ("0.0001", 0.7)):
        stsb_run(tmp_path, f"lr{lr}", "smoothgrad", 0, value, f"optimizer.lr={lr}")
    old = stsb_run(tmp_path, "lr0.0001_old", "smoothgrad", 0, 0.1, "optimizer.lr=0.0001")
    os.utime(old / "results.json", (1_000_000, 1_000_000))
    result = write_report([tmp_path], tmp_path / "report")
    summary = result["summary"].set_index("optimizer.lr")
    assert summary["pruned_mean"].to_dict() == {5e-05: 0.8, 1e-4: 0.7}
    assert len(result["runs"]) == 2 and str(old) not in set(result["runs"]["path"])
    assert "1 older duplicate run(s)" in result["markdown"].read_text()


def test_cli_baselines_option(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "out"
    cmd = [sys.executable, "experiments/report.py", str(root), "--out", str(out),
           "--baselines", "gradcam_shift"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired["baseline"]) == {"gradcam_shift"}
    assert set(paired["strategy"]) == {"layer_mag_weight"} and len(paired) == 4
    assert paired["mean_diff"].to_numpy() == pytest.approx([-0.03] * 4, abs=1e-12)
    # the same offset in every seed: zero variance, so no interval and no "detected" verdict
    assert "all seeds equal: layer_mag_weight worse by exactly -0.03 in each of the 3 seeds" in done.stdout


def test_analysis_does_not_import_torch():
    code = ("import sys, deepcuts.analysis.render.report, deepcuts.analysis.stats; "
            "sys.exit('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr or "the report imported torch"


def test_a_method_and_a_baseline_run_with_other_settings_are_never_paired(tmp_path):
    """Two sweeps in one report: the method with lr 1e-4, the baseline with 5e-05. The setting is
    constant within each strategy but differs between them, so it is a sweep key and the method
    has no baseline to pair with (today's seeds would say nothing about the method)."""
    for seed in range(3):
        stsb_run(tmp_path, f"cam_s{seed}", "gradcam_shift", seed, 0.80, "optimizer.lr=1e-4")
        stsb_run(tmp_path, f"grad_s{seed}", "layer_mag_grad", seed, 0.70, "optimizer.lr=5e-05")
    result = write_report([tmp_path], tmp_path / "report", html=False)
    assert result["sweep_keys"] == ["optimizer.lr"]
    cam = result["paired"][result["paired"]["strategy"] == "gradcam_shift"]
    assert cam.empty or (cam["seeds"] == 0).all()
