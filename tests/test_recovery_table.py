"""The recovery table over synthetic run folders: means, % of dense, paired differences and
their intervals against values computed by hand, unpaired seeds, targets, wall time, recipe
labels, skipped folders, missing reference, CLI. No training."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from scipy import stats as st

from deepcuts.analysis.recovery import RecoveryError, load_runs, parse_target, recovery_table
from deepcuts.analysis.render.recovery import write_recovery

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "experiments" / "recovery_table.py"

# Hand-chosen numbers: CoLA (mcc), one strategy, per seed.
DENSE = {0: 0.50, 1: 0.40, 2: 0.60, 3: 0.55}
SINGLE = {0: 0.20, 1: 0.10, 2: 0.30}  # single_shot: seeds 0-2
KSHOT = {0: 0.30, 1: 0.21, 2: 0.41, 3: 0.44}  # kshot: diffs +0.10, +0.11, +0.11; seed 3 unpaired
DISTILL = {0: 0.32, 1: 0.21, 2: 0.29}  # kshot_distill: diffs +0.12, +0.11, -0.01

RECIPES = {  # name: (recipe config, results.json recipe)
    "single_shot": ({"shots": 1, "epochs_final": 2},
                    {"shots": 1, "shot_epochs": None, "distill": None, "rounds": []}),
    "kshot": ({"shots": 2, "shot_epochs": 1, "epochs_final": 1},
              {"shots": 2, "shot_epochs": 1, "distill": None, "rounds": [{"round": 1}]}),
    "kshot_distill": ({"shots": 2, "shot_epochs": 1, "epochs_final": 1,
                       "distill": {"alpha": 0.5, "temperature": 2.0}},
                      {"shots": 2, "shot_epochs": 1, "rounds": [{"round": 1}],
                       "distill": {"alpha": 0.5, "temperature": 2.0}}),
}


def t_interval(values: list[float]) -> tuple[float, float]:
    """By hand: mean ± t_{0.975, n-1} s / sqrt(n)."""
    n, mean, sd = len(values), statistics.mean(values), statistics.stdev(values)
    half = st.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def write_run(folder: Path, *, data: str = "cola", monitor: str = "mcc", strategy: str = "gradcam_shift",
              seed: int, pruned: float, dense: float, recipe_name: str | None, recipe: dict,
              config: dict | None = None, timings: dict | None = None, builds: list | None = None,
              rewind: str = "finetuned", epochs_final: int = 2, extra_config: dict | None = None) -> Path:
    """A finished run folder as train.py leaves it: results.json, the resolved config.yaml beside
    it and Hydra's .hydra/config.yaml."""
    folder.mkdir(parents=True)
    cfg = {"seed": seed, "recipe_name": recipe_name, "rewind": rewind, "shots": 1, "shot_epochs": 1,
           "epochs_final": epochs_final, "distill": {"alpha": 0.0, "temperature": 2.0},
           "ratio": 3.5, "data": {"name": data, "monitor": monitor, "monitor_mode": "max"},
           **(config or {}), **(extra_config or {})}
    text = OmegaConf.to_yaml(OmegaConf.create(cfg))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(text)
    (folder / "config.yaml").write_text(text)
    results = {
        "status": "complete", "data": data, "model": "minilm", "strategy": strategy, "ratio": 3.5,
        "ratio_basis": "bert_base", "seed": seed, "monitor": monitor, "achieved_ratio": 3.5,
        "selection": "last", "control": False, "epochs_final": epochs_final, "rewind": rewind,
        "dense": {monitor: dense}, "pruned": {monitor: pruned},
        "recipe": {**recipe, "rewind": rewind},
        "timings_s": timings or {}, "cache": {"builds": builds or [], "hits": []},
        "stage_keys": {"dense": f"dense-{data}-{seed}", "scores": f"scores-{data}-{strategy}-{seed}"},
        "machine": {"cpu_count": 2, "cpu_model": "Test CPU", "device": "cpu", "torch": "2.x",
                    "torch_threads": 1},
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def make_sweep(root: Path) -> Path:
    """CoLA: single_shot (seeds 0-2, builds dense + scores), kshot (seeds 0-3, cache hits),
    kshot_distill (seeds 0-2; seed 0 builds the teacher, the others hit it); one unfinished job."""
    job = 0
    for name, values in (("single_shot", SINGLE), ("kshot", KSHOT), ("kshot_distill", DISTILL)):
        config, recipe = RECIPES[name]
        for seed, pruned in values.items():
            if name == "single_shot":
                timings, builds = {"dense": 100.0, "scoring": 10.0 + seed, "pruned": 50.0}, ["dense", "scores"]
            elif name == "kshot":
                timings, builds = {"dense": 0.2, "scoring": 0.1, "shots": 30.0, "pruned": 25.0}, []
            else:
                built = seed == 0
                timings = {"dense": 0.2, "scoring": 0.1, "shots": 31.0, "pruned": 27.0,
                           "teacher": 20.0 if built else 0.5}
                builds = ["teacher"] if built else []
            write_run(root / f"{job}_gradcam_shift_{name}_s{seed}", seed=seed, pruned=pruned,
                      dense=DENSE[seed], recipe_name=name, recipe=recipe, config=config,
                      timings=timings, builds=builds, epochs_final=config["epochs_final"])
            job += 1
    unfinished = root / f"{job}_gradcam_shift_kshot_distill_s3"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "config.yaml").write_text("seed: 3\n")
    return root


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "sweep")


def rows(table) -> dict[str, dict]:
    return {r["recipe"]: r for r in table.to_dict("records")}


def test_means_percent_of_dense_and_paired_differences(sweep):
    runs, skipped = load_runs([sweep])
    table = recovery_table(runs, targets={"cola": 0.62})
    by = rows(table)
    assert list(table["recipe"]) == ["single_shot", "kshot", "kshot_distill"]  # reference first

    single, kshot, distill = by["single_shot"], by["kshot"], by["kshot_distill"]
    assert single["seeds"] == 3 and kshot["seeds"] == 4 and distill["seeds"] == 3
    assert kshot["seed_list"] == "0 1 2 3"
    # pruned mean and its t-interval over all of the recipe's seeds
    assert kshot["pruned_mean"] == pytest.approx((0.30 + 0.21 + 0.41 + 0.44) / 4)
    low, high = t_interval(list(KSHOT.values()))
    assert (kshot["pruned_low"], kshot["pruned_high"]) == pytest.approx((low, high))
    assert kshot["dense_mean"] == pytest.approx((0.50 + 0.40 + 0.60 + 0.55) / 4)
    # % of dense: mean over seeds of pruned / dense (0.6, 0.525, 0.6833, 0.8)
    pct = [0.30 / 0.50, 0.21 / 0.40, 0.41 / 0.60, 0.44 / 0.55]
    assert kshot["pct_dense_mean"] == pytest.approx(statistics.mean(pct)) == pytest.approx(0.652083, abs=1e-6)
    assert (kshot["pct_dense_low"], kshot["pct_dense_high"]) == pytest.approx(t_interval(pct))

    # paired with single_shot over seeds 0-2 only: seed 3 is unpaired
    diffs = [0.30 - 0.20, 0.21 - 0.10, 0.41 - 0.30]
    assert kshot["paired_n"] == 3 and kshot["paired_seeds"] == "0 1 2"
    assert kshot["unpaired_seeds"] == "3"
    assert kshot["diff_mean"] == pytest.approx(statistics.mean(diffs)) == pytest.approx(0.32 / 3)
    assert (kshot["diff_t_low"], kshot["diff_t_high"]) == pytest.approx(t_interval(diffs))
    assert kshot["diff_t_low"] > 0 and kshot["covers_zero"] is False
    assert kshot["verdict"].endswith("left out: seed 3: no reference run")

    d = [0.32 - 0.20, 0.21 - 0.10, 0.29 - 0.30]
    assert distill["diff_mean"] == pytest.approx(statistics.mean(d))
    assert (distill["diff_t_low"], distill["diff_t_high"]) == pytest.approx(t_interval(d))
    assert distill["covers_zero"] is True and "no difference detected" in distill["verdict"]

    assert single["verdict"] == "reference" and single["paired_n"] == 0
    assert math.isnan(single["diff_mean"])

    # masked epochs: shot_epochs * (shots - 1) + epochs_final
    assert single["masked_epochs"] == 2 and kshot["masked_epochs"] == 2
    assert len(skipped) == 1 and "no results.json" in next(iter(skipped.values()))


def test_target_column(sweep):
    runs, _ = load_runs([sweep])
    by = rows(recovery_table(runs, targets={"cola": 0.62}))
    kshot, single = by["kshot"], by["single_shot"]
    # kshot: mean 65.2% >= 62%, but the interval's lower bound is below it
    assert kshot["target"] == 0.62 and kshot["target_met"] is True
    assert kshot["pct_dense_low"] < 0.62 and kshot["target_met_lower"] is False
    # single shot: (0.4, 0.25, 0.5) of dense, mean 38.3%
    assert single["pct_dense_mean"] == pytest.approx((0.4 + 0.25 + 0.5) / 3)
    assert single["target_met"] is False
    # a target the interval clears as a whole
    assert rows(recovery_table(runs, targets={"cola": 0.3}))["kshot"]["target_met_lower"] is True
    # no target for the data: nothing evaluated
    assert rows(recovery_table(runs))["kshot"]["target_met"] is None


def test_wall_time_counts_builds_only(sweep):
    runs, _ = load_runs([sweep])
    by = rows(recovery_table(runs))
    # single shot built its scores: pruned 50 + scoring 10 + seed
    assert by["single_shot"]["own_s_mean"] == pytest.approx(50 + statistics.mean([10, 11, 12]))
    # kshot hit the scores: the built time (from the single-shot job of that seed), not 0.1;
    # seed 3's scores were built by no run here: its own time is unknown, left out of the mean
    assert by["kshot"]["own_s_runs"] == 3
    assert by["kshot"]["own_s_mean"] == pytest.approx(30 + 25 + statistics.mean([10, 11, 12]))
    assert by["kshot"]["shared_s_mean"] == 0.0  # nothing shared beyond dense and scores
    # distillation: the teacher was built once (seed 0, 20 s); the hits' 0.5 s are not builds
    assert by["kshot_distill"]["teacher_s_mean"] == pytest.approx(20.0)
    assert by["kshot_distill"]["shared_s_seeds"] == 1


def test_markdown_and_csv(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    written = write_recovery([sweep], out, targets={"cola": 0.62}, command="python x.py")
    text = (out / "recovery.md").read_text()
    assert text == written["text"] == capsys.readouterr().out
    assert "## cola: monitor `mcc`, target 62.0% of dense" in text
    assert "Seeds: 0, 1, 2, 3" in text and "2 × Test CPU" in text and "`python x.py`" in text
    line = next(x for x in text.splitlines() if x.startswith("| minilm | 3.5 | gradcam_shift | kshot_distill |"))
    assert "no difference detected" in line and "better" not in line
    line = next(x for x in text.splitlines() if x.startswith("| minilm | 3.5 | gradcam_shift | kshot |"))
    assert "3 pairs: better" in line and "yes; lower bound" in line
    assert "Skipped run folders" in text and "kshot_distill_s3" in text
    csv = (out / "recovery.csv").read_text().splitlines()
    assert csv[0].startswith("data,model,ratio_basis,ratio,strategy,metric,selection,recipe,")
    assert len(csv) == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_unnamed_recipe_label_and_other_keys(tmp_path):
    root = tmp_path / "sweep"
    for seed in (0, 1):
        write_run(root / f"ss{seed}", seed=seed, pruned=0.2 + seed / 10, dense=0.5,
                  recipe_name="single_shot", recipe=RECIPES["single_shot"][1],
                  config=RECIPES["single_shot"][0])
        write_run(root / f"x{seed}", seed=seed, pruned=0.25 + seed / 10, dense=0.5, recipe_name=None,
                  recipe=RECIPES["kshot_distill"][1], rewind="epoch:1", epochs_final=1,
                  config={**RECIPES["kshot_distill"][0], "rewind": "epoch:1"},
                  timings={"shots": 1.0, "pruned": 2.0, "rewind": 7.0, "teacher": 3.0},
                  builds=["rewind", "teacher"])
    runs, _ = load_runs([root])
    by = rows(recovery_table(runs))
    row = by["shots=2+distill+rewind=epoch:1"]
    assert row["diff_mean"] == pytest.approx(0.05) and row["paired_n"] == 2
    assert row["shared_s_mean"] == pytest.approx(10.0)  # teacher 3 + rewind 7, both built here
    # a config key besides the recipe's that differs: its runs are a row of their own
    write_run(root / "lr0", seed=0, pruned=0.9, dense=0.5, recipe_name="single_shot",
              recipe=RECIPES["single_shot"][1], config=RECIPES["single_shot"][0],
              extra_config={"optimizer": {"lr": 1e-3}})
    runs, _ = load_runs([root])
    table = recovery_table(runs)
    assert "optimizer.lr" in table.columns and len(table) == 3
    assert rows(table)["shots=2+distill+rewind=epoch:1"]["diff_mean"] == pytest.approx(0.05)


def test_rerun_replaces_older(sweep):
    config, recipe = RECIPES["kshot"]
    newer = write_run(sweep / "99_rerun", seed=0, pruned=0.40, dense=DENSE[0], recipe_name="kshot",
                      recipe=recipe, config=config, epochs_final=1)
    os.utime(newer / "results.json", (4e9, 4e9))
    runs, _ = load_runs([sweep])
    assert runs.attrs["replaced"] == 1
    assert rows(recovery_table(runs))["kshot"]["pruned_mean"] == pytest.approx((0.40 + 0.21 + 0.41 + 0.44) / 4)


def test_reference_missing_is_a_clear_error(sweep, tmp_path):
    runs, _ = load_runs([sweep])
    with pytest.raises(RecoveryError, match=r"reference recipe 'nope' not found.*kshot, kshot_distill, single_shot"):
        recovery_table(runs, reference="nope")
    with pytest.raises(RecoveryError):
        write_recovery([sweep], tmp_path / "out", reference="nope", echo=False)
    assert not (tmp_path / "out").exists()  # nothing written
    # a cell without any reference run: not paired, said so
    config, recipe = RECIPES["kshot"]
    write_run(sweep / "other_strategy", strategy="layer_mag_grad", seed=0, pruned=0.3, dense=0.5,
              recipe_name="kshot", recipe=recipe, config=config, epochs_final=1)
    table = recovery_table(load_runs([sweep])[0])
    row = table[table["strategy"] == "layer_mag_grad"].iloc[0]
    assert row["paired_n"] == 0 and row["verdict"].startswith("no single_shot run")


def test_no_runs_and_skipped_folders(tmp_path, caplog):
    (tmp_path / "job" / ".hydra").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="deepcuts.analysis.recovery"):
        with pytest.raises(RecoveryError, match="no complete run"):
            load_runs([tmp_path])
    assert "skipped" in caplog.text and "no results.json" in caplog.text


def test_parse_target():
    assert parse_target("cola=0.85") == ("cola", 0.85)
    for bad in ("cola", "cola=x", "=0.8", "cola=85"):
        with pytest.raises(RecoveryError):
            parse_target(bad)


def test_cli(sweep, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(CLI), str(sweep), "--out", str(out), "--target", "cola=0.62"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    assert "| kshot |" in done.stdout and "warning: skipped" in done.stderr
    assert (out / "recovery.md").is_file() and (out / "recovery.csv").is_file()
    bad = subprocess.run([*cmd[:4], str(tmp_path / "out2"), "--reference", "nope"],
                         capture_output=True, text=True, cwd=REPO, check=False)
    assert bad.returncode == 2 and "reference recipe 'nope' not found" in bad.stderr
    assert not (tmp_path / "out2").exists()
