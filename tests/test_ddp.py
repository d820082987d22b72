"""Several devices in one job: trainer=ddp hands each fine-tune to Lightning's spawned ranks
(two CPU processes with gloo here) and gets the weights, history and best epoch back."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from deepcuts.config.errors import ConfigError
from deepcuts.data.glue import GlueDataModule
from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.pipeline.flow import run
from deepcuts.pruning import budget as B
from deepcuts.pruning import masks as M
from deepcuts.training.fine_tune import FineTuneSettings, check_trainer, fine_tune

DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")


def test_trainer_ddp_builds_spawned_ranks_on_the_default_trainer(make_cfg):
    """The Trainer that trainer=ddp instantiates (as check_trainer and fine_tune do): DDP with
    ranks spawned from the driver, on 2 CPU devices, with what it inherits from trainer=default."""
    cfg = make_cfg(*DDP)
    check_trainer(cfg.trainer)  # accepted
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    strategy = trainer.strategy
    assert type(strategy) is DDPStrategy
    assert type(strategy.launcher) is _MultiProcessingLauncher and strategy.launcher._start_method == "spawn"
    assert type(trainer.accelerator) is CPUAccelerator
    assert trainer.num_devices == 2 and trainer.world_size == 2
    assert strategy._ddp_kwargs == {"broadcast_buffers": False}  # handed to DistributedDataParallel
    # from trainer=default
    assert trainer.precision == "32-true" and trainer.num_sanity_val_steps == 0 and trainer.log_every_n_steps == 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((*DDP, "trainer.strategy.start_method=fork"), "on 2 devices forks its ranks"),
        ((*DDP, "trainer.strategy.start_method=popen"), "on 2 devices re-launches the script in every rank"),
        ((*DDP, "trainer.strategy.start_method=forkserver"), None),  # also a fresh process per rank
        (("trainer.accelerator=cpu",), None),  # one device: no launcher at all
    ],
    ids=["start_method_fork", "start_method_popen", "start_method_forkserver", "one_device"],
)
def test_check_trainer_accepts_only_ranks_started_from_the_driver(make_cfg, overrides, message):
    cfg = make_cfg(*overrides)
    if message is None:
        check_trainer(cfg.trainer)
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_trainer(cfg.trainer)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.devices=2"], "trainer.strategy='auto' on 2 devices re-launches the script"),
        (["trainer.strategy=ddp", "trainer.devices=2"], "trainer.strategy='ddp' on 2 devices re-launches the script"),
        (["trainer.strategy=ddp_fork", "trainer.devices=2"], "trainer.strategy='ddp_fork' on 2 devices forks its ranks"),
        (["trainer.precision=17"], "the trainer config is not valid: Precision 17 is invalid"),
    ],
)
def test_a_trainer_that_cannot_run_the_job_is_refused_before_training(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(make_cfg("trainer.accelerator=cpu", *overrides))
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "cache").exists()


def model_and_data(cfg):
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed)
    data.setup()
    return model, data


@pytest.mark.slow
def test_ddp_fine_tune_returns_trained_masked_weights_to_the_driver(make_cfg, tmp_path):
    cfg = make_cfg("data=stsb", *DDP)
    model, data = model_and_data(cfg)
    prunable = B.prunable_parameters(model, cfg.prune.include, [])
    scores = {k: torch.rand_like(p) for k, p in prunable.items()}
    M.apply_masks(model, M.build_masks(scores, 0.5, "layer"))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    out = fine_tune(model, data, FineTuneSettings.from_cfg(cfg), 2, tmp_path / "ft", "pruned", selection="dev")

    # 48 examples, 8 per rank per step, 2 ranks: 3 optimiser steps an epoch (6 on one device)
    assert [h["step"] for h in out["history"]] == [3, 6]
    assert math.isfinite(out["selected"]["pearson"])
    monitored = [h[cfg.data.monitor] for h in out["history"]]  # pearson for STS-B
    assert out["best_epoch"] == monitored.index(max(monitored)) and out["selected"] == out["history"][out["best_epoch"]]
    after = model.state_dict()
    changed = [k for k in prunable if not torch.equal(after[k + "_orig"], before[k + "_orig"])]
    assert changed, "the ranks' trained weights did not come back to the driver process"
    for name, mask in M.current_masks(model).items():
        assert torch.equal(mask, before[name + "_mask"])
        assert dict(model.named_parameters())[name + "_orig"][mask == 0].abs().sum() == 0
    # the driver holds the selected epoch's weights: one device re-evaluates them to the same numbers
    again = fine_tune(model, data, FineTuneSettings.from_cfg(make_cfg("data=stsb")), 0, tmp_path / "eval", "pruned", selection="last")
    for k in ("spearmanr", "mse"):
        assert again["selected"][k] == pytest.approx(out["selected"][k], rel=1e-5)


@pytest.mark.slow
def test_ddp_job_gathers_dev_metrics_over_ranks(make_cfg, tmp_path):
    """Evaluation-only dense stage: the metrics over both ranks' shards of the dev set equal the
    single-process ones (rank 0's shard alone, or repeated examples, would differ). 17 dev
    examples in batches of 8: uneven shards, 9 and 8 examples, 2 and 1 batches."""
    shape = ("data=stsb", "epochs_dense=0", "data.max_eval_samples=17", "data.eval_batch_size=8")
    single = run(make_cfg(*shape, f"output_dir={tmp_path / 'one'}"))
    ddp = run(make_cfg(*shape, f"output_dir={tmp_path / 'two'}", *DDP))
    for k in ("spearmanr", "mse"):  # gathered predictions / summed errors: the same numbers
        assert ddp["dense"][k] == pytest.approx(single["dense"][k], rel=1e-6)
    # Pearson merges per-rank float32 moments; the tiny model's near-constant outputs cost ~1e-3
    assert ddp["dense"]["pearson"] == pytest.approx(single["dense"]["pearson"], rel=1e-2)
    assert [h["step"] for h in ddp["history"]["pruned"]] == [3]
    assert [h["step"] for h in single["history"]["pruned"]] == [6]
    assert ddp["achieved_ratio"] == pytest.approx(single["achieved_ratio"])
