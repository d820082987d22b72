"""Cache keys change exactly when a config value that determines the stage changes."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from deepcuts.cache.keys import stage_specs
from deepcuts.cache.store import config_key


def keys(make_cfg, *overrides):
    """The config part of the keys (content digests held fixed; tests/test_cache_content.py
    covers those)."""
    cfg = make_cfg(*overrides)
    strategy = instantiate(cfg.strategy)
    specs = stage_specs(cfg, "initial-state", strategy, cfg.scoring.batches or 0, strategy)
    return {stage: config_key(spec) for stage, spec in specs.items()}


BASE = ("strategy=gradcam_shift",)


@pytest.mark.parametrize(
    "override",
    ["optimizer.lr=1e-3", "epochs_dense=2", "seed=1", "data.max_train_samples=40", "data=sst2",
     "model.config.hidden_size=64", "+trainer.accumulate_grad_batches=4", "+trainer.gradient_clip_val=1.0",
     "trainer.precision=bf16-mixed", "scheduler=linear_warmup", "trainer=ddp", "trainer.devices=3"],
)
def test_dense_key_changes_with_what_determines_the_dense_model(make_cfg, override):
    assert keys(make_cfg, *BASE, override)["dense"] != keys(make_cfg, *BASE)["dense"]


@pytest.mark.parametrize(
    "override",
    ["ratio=2", "strategy=global_gradcam_shift", "epochs_final=5", "rewind=finetuned", "save_model=true",
     "output_dir=/elsewhere", "cache_dir=/elsewhere", "trainer.enable_progress_bar=true",
     "logger=csv", "resume=false", "data.num_workers=2"],
)
def test_dense_and_score_keys_ignore_what_comes_later_or_is_cosmetic(make_cfg, override):
    base, other = keys(make_cfg, *BASE), keys(make_cfg, *BASE, override)
    assert other["dense"] == base["dense"] and other["scores"] == base["scores"]


@pytest.mark.parametrize(
    "override",
    ["strategy.shift=5", "strategy=gradcam", "strategy.include_padding=true", "scoring.batches=7",
     "scoring.dropout=true", "scoring.accumulate=abs_of_mean", "prune.exclude=[bert.pooler.dense]"],
)
def test_score_key_changes_with_the_strategy_and_scoring_config(make_cfg, override):
    base, other = keys(make_cfg, *BASE), keys(make_cfg, *BASE, override)
    assert other["dense"] == base["dense"] and other["scores"] != base["scores"]


@pytest.mark.parametrize(
    "override", ["ratio=2", "keep_fraction=0.5", "ratio_basis=model", "rewind=finetuned", "epochs_final=5",
                 "save_model=true", "strategy=global_gradcam_shift", "seed=3"],
)
def test_run_key_changes_with_everything_that_determines_results(make_cfg, override):
    assert keys(make_cfg, *BASE, override)["run"] != keys(make_cfg, *BASE)["run"]


def test_changed_config_in_the_same_folder_is_redone(make_cfg, tmp_path):
    from deepcuts.pipeline.flow import run

    first = run(make_cfg("strategy=layer_mag_weight"))
    second = run(make_cfg("strategy=layer_mag_weight", "epochs_final=2"))
    assert second["run_key"] != first["run_key"]
    assert len(second["history"]["pruned"]) == 2
