"""The debug configs (``debug=default|fdr|limit|overfit|profiler``, conf/debug): each composes over
the run's other choices and runs the whole pipeline on the tiny BERT doing what it is for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from pytorch_lightning.profilers import SimpleProfiler
from torch.utils.data import SequentialSampler

from deepcuts.models.module import GlueModel
from deepcuts.pipeline import run
from deepcuts.training import fine_tune as fine_tune_module
from tests.conftest import REPO, compose_cfg

DEBUG = ("default", "fdr", "limit", "overfit", "profiler")
# What conftest's tiny overrides set and a debug config sets too: put back to the debug config's value
OWN = ("epochs_dense", "epochs_final", "scoring.batches")
# 48 training rows in batches of 8: 6 training batches; 32 dev rows in batches of 8: 4 dev batches
EPOCHS = {"default": (1, 1), "fdr": (1, 1), "limit": (3, 3), "overfit": (20, 20), "profiler": (1, 1)}
SMALL = ("strategy=gradcam_shift", "data.eval_batch_size=8")


def plain(*overrides: str, hydra: bool = False):
    """conf/train.yaml with ``overrides`` only (no test sizes)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def debug_cfg(tmp_path: Path, name: str, *overrides: str):
    """The tiny test config with ``debug=name``, keeping the debug config's own epochs and
    scoring batches where it sets them (conftest's overrides would win over them otherwise)."""
    own = plain(f"debug={name}")
    kept = [f"{k}={OmegaConf.select(own, k)}" for k in OWN if OmegaConf.select(own, k) is not None]
    return compose_cfg(tmp_path, f"debug={name}", *SMALL, *kept, *overrides)


@pytest.fixture(autouse=True)
def torch_flags():
    """Trainer(deterministic=True) switches torch's deterministic algorithms on for the process
    (and sets cuDNN benchmark, CUBLAS_WORKSPACE_CONFIG): put them back for the next tests."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark, cublas = torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.backends.cudnn.benchmark = benchmark
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


@pytest.fixture
def trainers(monkeypatch) -> list[pl.Trainer]:
    """Every Trainer a fine-tune builds, in order (dense, then masked): fine_tune's own
    ``instantiate`` calls, not the one check_trainer builds to validate the config."""
    built: list[pl.Trainer] = []
    real = fine_tune_module.instantiate

    def spy(config, *args, **kwargs):
        obj = real(config, *args, **kwargs)
        if isinstance(obj, pl.Trainer) and kwargs.get("callbacks"):
            built.append(obj)
        return obj

    monkeypatch.setattr(fine_tune_module, "instantiate", spy)
    return built


@pytest.mark.parametrize("name", DEBUG)
def test_debug_configs_win_over_other_choices_and_write_under_outputs_debug(name):
    cfg = plain("experiment=demo", "trainer=ddp", "recipe=kshot", f"debug={name}", hydra=True)
    assert (cfg.cache, cfg.resume, cfg.data.cache_dir, cfg.logger.wandb.enabled) == (False, False, None, False)
    assert (cfg.trainer.devices, cfg.trainer.strategy) == (1, "auto")  # trainer=ddp's spawned ranks replaced
    assert cfg.trainer.detect_anomaly is True and cfg.trainer.deterministic is True
    assert (cfg.epochs_dense, cfg.epochs_final) == EPOCHS[name]  # not experiment=demo's 2 + 2
    # the Hydra folders, resolved as a job resolves them
    hydra_cfg = HydraConfig.instance()
    before = hydra_cfg.cfg
    try:
        hydra_cfg.set_config(cfg)
        run_dir, sweep_dir = cfg.hydra.run.dir, cfg.hydra.sweep.dir
    finally:
        hydra_cfg.cfg = before
    assert run_dir.startswith(f"outputs/debug/{name}/runs/stsb/layer_mag_weight/ratio=3/seed=0/")
    assert sweep_dir.startswith(f"outputs/debug/{name}/multirun/")  # not experiment=demo's multirun/demo/
    assert "outputs/debug" not in plain(hydra=True).hydra.run.dir  # real runs keep their folders


def test_default_runs_one_epoch_each_and_never_touches_the_cache(tmp_path, trainers):
    results = run(debug_cfg(tmp_path, "default"))
    assert results["status"] == "complete"
    assert [len(results["history"][s]) for s in ("dense", "pruned")] == [1, 1]
    assert results["history"]["dense"][0]["step"] == 6  # one whole epoch of 6 batches
    assert not (tmp_path / "cache").exists()  # no stage entry, no finished-run entry, no tokenised data
    assert results["cache"]["hits"] == []
    assert len(trainers) == 2 and all(t._detect_anomaly for t in trainers)
    assert torch.are_deterministic_algorithms_enabled()
    assert (tmp_path / "run" / "logs" / "dense" / "metrics.csv").is_file()


def test_fdr_runs_the_whole_pipeline_on_one_batch(tmp_path, trainers):
    results = run(debug_cfg(tmp_path, "fdr"))
    assert results["status"] == "complete"
    assert len(trainers) == 2  # dense and masked fine-tune
    for trainer in trainers:
        assert trainer.fast_dev_run is True
        assert trainer.global_step == 1 and trainer.num_val_batches == [1]
    assert [[h["step"] for h in results["history"][s]] for s in ("dense", "pruned")] == [[1], [1]]
    assert results["scoring_batches"] == 1  # its own Trainer: scoring.batches, not fast_dev_run
    assert not (tmp_path / "run" / "logs").exists()  # fast_dev_run's dummy logger writes nothing


def test_limit_runs_a_few_batches_per_epoch(tmp_path, trainers):
    results = run(debug_cfg(tmp_path, "limit"))
    assert results["status"] == "complete"
    for trainer in trainers:
        assert trainer.num_training_batches == 3 and trainer.num_val_batches == [2]  # of 6 and 4
    for stage in ("dense", "pruned"):
        assert [(h["epoch"], h["step"]) for h in results["history"][stage]] == [(0, 3), (1, 6), (2, 9)]
    assert results["scoring_batches"] == 3


def test_overfit_trains_on_the_same_batches_every_epoch(tmp_path, trainers, monkeypatch):
    own = plain("debug=overfit")
    assert (own.trainer.overfit_batches, own.epochs_dense, own.epochs_final) == (3, 20, 20)
    seen: dict[tuple[str, int], list] = {}
    step = GlueModel.training_step

    def recording(self, batch, batch_idx):
        seen.setdefault((self.stage, self.current_epoch), []).append(batch["input_ids"].tolist())
        return step(self, batch, batch_idx)

    monkeypatch.setattr(GlueModel, "training_step", recording)
    results = run(debug_cfg(tmp_path, "overfit", "epochs_dense=3", "epochs_final=2"))  # 20 + 20 on the CPU: too long
    assert results["status"] == "complete"
    for trainer in trainers:
        assert trainer.overfit_batches == 3 and trainer.num_training_batches == 3
        assert isinstance(trainer.train_dataloader.sampler, SequentialSampler)  # shuffling off
    for stage, epochs in (("dense", 3), ("pruned", 2)):
        batches = [seen[(stage, e)] for e in range(epochs)]
        assert len(batches[0]) == 3 and all(b == batches[0] for b in batches)
    assert seen[("dense", 0)] == seen[("pruned", 0)]


def test_profiler_writes_a_report_per_fine_tune_in_the_run_folder(tmp_path, trainers):
    results = run(debug_cfg(tmp_path, "profiler"))
    assert results["status"] == "complete"
    assert all(isinstance(t.profiler, SimpleProfiler) for t in trainers)
    for stage in ("dense", "pruned"):
        report = (tmp_path / "run" / "logs" / stage / "fit-profile.txt").read_text()
        assert "FIT Profiler Report" in report and "run_training_epoch" in report


@pytest.mark.parametrize("name", ["fdr", "overfit"])
def test_a_late_rewind_is_refused_where_the_replay_cannot_follow(tmp_path, name):
    """fast_dev_run and overfit_batches change the steps of the dense fine-tune: a late rewind
    point could never be replayed, so the plan refuses it before training."""
    from deepcuts.config.errors import ConfigError
    from deepcuts.pipeline.plan import RunPlan

    cfg = debug_cfg(tmp_path, name, "rewind=step:2")
    with pytest.raises(ConfigError, match="fast_dev_run or overfit_batches"):
        RunPlan.build(cfg, Path(cfg.output_dir))
