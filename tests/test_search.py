"""Hyper-parameter search with the Hydra Optuna sweeper (conf/hparams_search, docs/search.md), end
to end through ``python train.py -m hparams_search=tiny``: each trial returns the pruned model's
metric on the held-out slice of train (never dev), the sweeper's best parameters lie in the search
space, experiments/best_params.py prints a command that re-runs them, and an optimising sweeper
without selection=holdout stops before any training."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
       "OMP_NUM_THREADS": "1"}
# `hparams_search=` once conf/train.yaml lists the group in its defaults (`- hparams_search: null`),
# `+hparams_search=` until then
SEARCH = ("" if re.search(r"^\s*-\s*hparams_search\s*:", (REPO / "conf/train.yaml").read_text(), re.M)
          else "+") + "hparams_search=tiny"
SMALL = ["data.max_train_samples=96", "data.max_eval_samples=32", "data.batch_size=8",
         "+trainer.enable_progress_bar=false", "logger.wandb.enabled=false"]
OBJECTIVE = re.compile(r"objective: holdout (\w+) = (\S+) \(pruned")


def spec(name: str, path: str):
    loaded = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


train = spec("train_script", "train.py")
best_params = spec("best_params", "experiments/best_params.py")


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def search(tmp, name: str, *extra: str) -> subprocess.CompletedProcess:
    return run("train.py", "-m", SEARCH, *SMALL, f"cache_dir={tmp / 'cache'}",
               f"hydra.sweep.dir={tmp / name}", *extra)


def kept_holdout(results: dict) -> float:
    """The pruned model's held-out metric at the kept epoch, read from results.json directly."""
    history, best = results["history"]["pruned"], results["best_epoch"]
    kept = history[-1] if best is None else next(h for h in history if h["epoch"] == best)
    return kept["holdout"][results["monitor"]]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    proc = search(tmp, "sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, tmp / "sweep", proc


def trials(sweep) -> list[tuple[dict, float, list[str]]]:
    """(results.json, the objective the job returned, its overrides) of each trial folder."""
    out = []
    for folder in sorted(p.parent for p in sweep.glob("*/results.json")):
        logged = OBJECTIVE.findall((folder / "train.log").read_text())
        assert len(logged) == 1, folder
        overrides = list(OmegaConf.load(folder / ".hydra/overrides.yaml"))
        out.append((json.loads((folder / "results.json").read_text()), float(logged[0][1]), overrides))
    return out


def test_each_trial_returns_the_holdout_metric_at_the_kept_epoch_never_dev(swept):
    _, sweep, _ = swept
    done = trials(sweep)
    assert len(done) == 3
    for results, returned, _ in done:
        assert results["selection"] == "holdout" and results["seed"] == 100
        assert returned == kept_holdout(results)
        assert returned != results["pruned"][results["monitor"]]  # the dev metric


def test_best_params_lie_in_the_search_space_and_belong_to_the_best_trial(swept):
    _, sweep, _ = swept
    best = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    params = best["best_params"]
    assert set(params) == {"strategy.shift", "optimizer.lr"}
    assert 0.0 <= params["strategy.shift"] <= 20.0 and 1e-4 <= params["optimizer.lr"] <= 1e-2
    done = trials(sweep)
    top = max(done, key=lambda t: t[1])  # direction maximize: stsb's monitor_mode is max
    assert best["best_value"] == top[1]
    assert {f"{k}={v}" for k, v in params.items()} <= set(top[2])


def test_best_params_prints_a_command_that_reruns_the_best_settings(swept):
    tmp, sweep, _ = swept
    proc = run("experiments/best_params.py", str(sweep), "--seeds", "0,1,2")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout.strip())
    assert words[:3] == ["python", "train.py", "-m"]
    assert "seed=0,1,2" in words and "selection=holdout" in words
    assert not any("hparams_search" in w for w in words)
    params = OmegaConf.load(sweep / "optimization_results.yaml").best_params
    assert all(f"{k}={v}" in words for k, v in params.items())
    # runnable: one seed of it, into its own folder
    words = [("seed=0" if w == "seed=0,1,2" else w) for w in words]
    rerun = run(*words[1:], f"hydra.sweep.dir={tmp / 'rerun'}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    (folder,) = [p.parent for p in (tmp / "rerun").glob("*/results.json")]
    cfg = OmegaConf.load(folder / ".hydra/config.yaml")
    assert cfg.seed == 0 and cfg.selection == "holdout" and cfg.model.name == "tiny"
    assert cfg.strategy.shift == params["strategy.shift"] and cfg.optimizer.lr == params["optimizer.lr"]
    assert cfg.epochs_dense == 1 and cfg.scoring.batches == 3  # set by hparams_search=tiny itself


def test_relaunched_search_reads_finished_trials_and_returns_the_same_objectives(swept):
    """Same sampler seed, same cache: the same trials come back from the run cache (no training)
    and return the objective read from their results."""
    tmp, sweep, _ = swept
    again = search(tmp, "again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("identical job finished before") == 3
    assert [t[1] for t in trials(tmp / "again")] == [t[1] for t in trials(sweep)]
    first, second = (OmegaConf.load(d / "optimization_results.yaml") for d in (sweep, tmp / "again"))
    assert first == second


def test_an_optuna_search_without_selection_holdout_stops_before_training(tmp_path):
    proc = search(tmp_path, "sweep", "selection=last")
    assert proc.returncode == 2
    assert "Set selection=holdout" in proc.stderr and "selection=last" in proc.stderr
    assert "building dense" not in proc.stdout + proc.stderr
    assert not list((tmp_path / "sweep").glob("*/results.json"))


def test_objective_rules():
    history = [{"epoch": 0, "pearson": 0.5, "holdout": {"pearson": 0.2}},
               {"epoch": 1, "pearson": 0.6, "holdout": {"pearson": 0.1}}]
    results = {"selection": "holdout", "monitor": "pearson", "best_epoch": 0, "history": {"pruned": history}}
    assert train.objective(results) == 0.2  # the kept epoch, not the last
    assert train.objective({**results, "best_epoch": None}) == 0.1  # nothing kept: the last
    assert train.objective({**results, "selection": "last"}) is None  # nothing held out
    collapsed = [{"epoch": 0, "holdout": {"pearson": math.nan}}]
    nan = {**results, "best_epoch": None, "history": {"pruned": collapsed}}
    assert train.objective(nan, "max") == -math.inf and train.objective(nan, "min") == math.inf


def test_optuna_takes_the_worst_value_for_a_collapsed_trial():
    """-inf is a complete, bad trial (the search goes on); NaN would fail the sweeper."""
    import optuna

    study = optuna.create_study(directions=["maximize"])
    for value in (-math.inf, 0.3):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial=trial, state=optuna.trial.TrialState.COMPLETE, values=[value])
    assert study.best_value == 0.3
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_best_params_errors_name_the_missing_file(tmp_path, capsys):
    assert best_params.main([str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert best_params.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "optimization_results.yaml" in err and "did not finish" in err


def test_format_value_round_trips_through_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in [0.0048927414269161066, 1e-05, 3, True, None, "gradcam_shift", "step:100",
                  "a b", "10", "true", [1, 2.5, "x"], "/tmp/x-y/cache"]:
        parsed = parser.parse_override(f"k={best_params.format_value(value)}").value()
        assert parsed == value and type(parsed) is type(value), value
