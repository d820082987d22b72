"""Length-grouped training batches, length-sorted inference and the fused optimiser: every
example once per epoch, reproducible per (seed, epoch), each rank its share, and the same
metrics, predictions and teacher table as file-order batches."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from deepcuts.data.batching import (
    GroupedBatchSampler,
    SortedBatchSampler,
    grouped_batches,
    in_file_order,
    shard,
    sorted_batches,
)
from deepcuts.data.glue import EXAMPLE_INDEX, GlueDataModule
from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.training.distill import teacher_outputs
from deepcuts.training.optim import build_optimizer, fused_supported
from tests.conftest import compose_cfg

RNG = np.random.default_rng(7)
LENGTHS = RNG.integers(3, 60, size=1003)  # not a multiple of the batch size


def flat(batches) -> list[int]:
    return [int(i) for b in batches for i in b]


# -- the orders themselves ------------------------------------------------------------------

def test_a_grouped_epoch_visits_every_example_exactly_once():
    batches = grouped_batches(LENGTHS, 32, seed=3, epoch=1)
    assert sorted(flat(batches)) == list(range(len(LENGTHS)))
    assert sum(len(b) < 32 for b in batches) == 1  # only the last mega-batch's tail is short
    assert len(batches) == len(GroupedBatchSampler(LENGTHS, 32, seed=3)) == -(-1003 // 32)


def test_the_same_seed_and_epoch_give_the_same_batches_and_others_do_not():
    first = [b.tolist() for b in grouped_batches(LENGTHS, 32, seed=3, epoch=0)]
    assert first == [b.tolist() for b in grouped_batches(LENGTHS, 32, seed=3, epoch=0)]
    assert first != [b.tolist() for b in grouped_batches(LENGTHS, 32, seed=3, epoch=1)]
    assert first != [b.tolist() for b in grouped_batches(LENGTHS, 32, seed=4, epoch=0)]
    sampler = GroupedBatchSampler(LENGTHS, 32, seed=3)
    assert sampler.sampler is sampler  # where Lightning calls set_epoch
    sampler.set_epoch(1)
    assert list(sampler) == [b.tolist() for b in grouped_batches(LENGTHS, 32, seed=3, epoch=1)]


def test_grouped_batches_pad_little_and_the_longest_comes_first():
    batches = grouped_batches(LENGTHS, 32, seed=0)
    padded = sum(len(b) * LENGTHS[b].max() for b in batches)
    random = np.random.default_rng(0).permutation(len(LENGTHS))
    random_padded = sum(len(b) * LENGTHS[b].max() for b in np.array_split(random, len(batches)))
    assert padded < 1.1 * LENGTHS.sum() < 0.8 * random_padded
    assert LENGTHS[batches[0]].max() == LENGTHS.max()
    # the batch order is shuffled, not sorted: later batches are not in length order
    tops = [LENGTHS[b].max() for b in batches[1:]]
    assert tops != sorted(tops, reverse=True) and tops != sorted(tops)


def test_sorted_inference_covers_every_example_and_restores_file_order():
    batches = sorted_batches(LENGTHS, 128)
    assert sorted(flat(batches)) == list(range(len(LENGTHS)))
    assert [LENGTHS[b].max() for b in batches] == sorted((LENGTHS[b].max() for b in batches), reverse=True)
    outputs = np.concatenate([LENGTHS[b] * 10.0 for b in batches])  # each row's output: 10x its length
    np.testing.assert_array_equal(in_file_order(outputs, batches), LENGTHS * 10.0)


@pytest.mark.parametrize("world", [2, 3])
def test_data_parallel_ranks_partition_the_data(world):
    grouped = [flat(GroupedBatchSampler(LENGTHS, 32, seed=1, rank=r, world=world)) for r in range(world)]
    steps = [len(list(GroupedBatchSampler(LENGTHS, 32, seed=1, rank=r, world=world))) for r in range(world)]
    assert len(set(steps)) == 1 and steps[0] == len(GroupedBatchSampler(LENGTHS, 32, 1, rank=0, world=world))
    every = grouped_batches(LENGTHS, 32, seed=1)
    padding = (world - len(every) % world) % world  # first batches repeated so every rank takes as many steps
    assert sorted(sum(grouped, [])) == sorted(flat(every) + flat(every[:padding]))
    unpadded = shard(every, 0, world, equal=False), shard(every, 1, world, equal=False)
    assert not set(flat(unpadded[0])) & set(flat(unpadded[1]))
    inference = [flat(SortedBatchSampler(LENGTHS, 128, rank=r, world=world)) for r in range(world)]
    assert sorted(sum(inference, [])) == list(range(len(LENGTHS)))  # each example on exactly one rank


# -- the data module's loaders --------------------------------------------------------------

@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    cfg = compose_cfg(tmp_path_factory.mktemp("sst2"), "data=sst2", "data.max_train_samples=300",
                      "data.max_eval_samples=200")
    tok = load_tokenizer(cfg.model.tokenizer)
    return cfg, tok


def datamodule(cfg, tok, **kwargs) -> GlueDataModule:
    dm = GlueDataModule(tok, **{**OmegaConf.to_container(cfg.data, resolve=True), **kwargs}, seed=0)
    dm.setup()
    return dm


def test_train_loader_pads_to_similar_lengths_and_off_gives_todays_batches(sst2):
    cfg, tok = sst2
    grouped, plain = datamodule(cfg, tok), datamodule(cfg, tok, group_by_length=False)
    real = sum(grouped.lengths("train"))

    def padded(loader):
        return sum(b["input_ids"].numel() for b in loader)

    assert padded(grouped.train_dataloader()) < 1.15 * real < padded(plain.train_dataloader())
    # group_by_length=false: a shuffling loader seeded by the run seed, as before
    before = torch.utils.data.DataLoader(plain.splits["train"], batch_size=8, shuffle=True, collate_fn=plain.collate,
                                         generator=torch.Generator().manual_seed(0))
    loader = plain.train_dataloader()
    for _ in range(2):  # two epochs of one loader
        assert [b[EXAMPLE_INDEX].tolist() for b in loader] == [b[EXAMPLE_INDEX].tolist() for b in before]
    assert len(grouped.scoring_dataloader(0)) == len(grouped.train_dataloader()) == -(-300 // 8)


class Recorder(pl.LightningModule):
    """Records which train examples each epoch saw; learns nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, _):
        while len(self.seen) <= self.current_epoch:
            self.seen.append([])
        self.seen[self.current_epoch] += batch[EXAMPLE_INDEX].tolist()
        return (self.w * 0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("overfit", [0, 2])
def test_lightning_gives_each_epoch_a_new_order_of_every_example(sst2, overfit):
    cfg, tok = sst2
    dm = datamodule(cfg, tok, max_train_samples=40, batch_size=8)
    model = Recorder()
    pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, overfit_batches=overfit).fit(model, dm)
    if not overfit:
        assert all(sorted(epoch) == list(range(40)) for epoch in model.seen)
        assert model.seen[0] != model.seen[1] != model.seen[2]
        assert model.seen[0] == flat(grouped_batches(dm.lengths("train"), 8, seed=0, epoch=0))
    else:  # debug=overfit: the same batches, epoch after epoch
        assert len(model.seen[0]) == 16 and model.seen[0] == model.seen[1] == model.seen[2]


def test_sorted_inference_gives_the_unsorted_metrics_and_teacher_table(sst2, tmp_path):
    cfg, tok = sst2
    cfg = OmegaConf.merge(cfg, {"output_dir": str(tmp_path)})
    model = build_model(cfg, tok)
    grouped, plain = datamodule(cfg, tok), datamodule(cfg, tok, group_by_length=False)
    assert [b["input_ids"].shape[1] for b in grouped.val_dataloader()] != \
        [b["input_ids"].shape[1] for b in plain.val_dataloader()]
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    sorted_metrics = trainer.validate(model, grouped.val_dataloader(), verbose=False)[0]
    file_metrics = trainer.validate(model, plain.val_dataloader(), verbose=False)[0]
    assert sorted_metrics.keys() == file_metrics.keys() and sorted_metrics
    for k in file_metrics:
        assert sorted_metrics[k] == pytest.approx(file_metrics[k], abs=1e-6), k
    table = teacher_outputs(model, grouped.train_eval_dataloader())
    torch.testing.assert_close(table, teacher_outputs(model, plain.train_eval_dataloader()), rtol=1e-5, atol=1e-5)


# -- the fused optimiser --------------------------------------------------------------------

def test_fused_auto_is_fused_on_the_cpu_and_a_bad_value_is_refused():
    params = [torch.nn.Parameter(torch.zeros(3))]
    auto = functools.partial(torch.optim.AdamW, lr=1e-3, fused="auto")
    assert fused_supported(auto, params)
    assert build_optimizer(auto, params).defaults["fused"] is True
    assert build_optimizer(functools.partial(torch.optim.SGD, lr=1.0), params).defaults.get("fused") is None
    with pytest.raises(Exception, match="optimizer.fused='yes'"):
        build_optimizer(functools.partial(torch.optim.AdamW, fused="yes"), params)


def test_fused_and_foreach_adamw_train_to_the_same_metrics(tmp_path):
    """Not bit-identical (the fused kernel rounds in another order), but the same training run:
    the same dev metrics after a dense fine-tune, weights equal to float tolerance."""
    from deepcuts.pipeline.flow import run

    results = {}
    for fused in ("auto", "false"):
        cfg = compose_cfg(tmp_path / fused, "data=stsb", "epochs_final=0", f"optimizer.fused={fused}")
        results[fused] = run(cfg)["dense"]
    for k, v in results["false"].items():
        assert results["auto"][k] == pytest.approx(v, rel=1e-3, abs=1e-4), k


def test_the_default_optimizer_is_fused(make_cfg):
    cfg = make_cfg()
    assert cfg.optimizer.fused == "auto"
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    assert model.configure_optimizers().defaults["fused"] is True


def test_a_data_parallel_trainer_must_leave_sharding_to_the_data_module(make_cfg):
    from deepcuts.config.errors import ConfigError
    from deepcuts.training.fine_tune import check_trainer

    cfg = make_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.use_distributed_sampler=true")
    with pytest.raises(ConfigError, match="use_distributed_sampler must be false"):
        check_trainer(cfg.trainer)
    check_trainer(make_cfg("trainer=ddp", "trainer.accelerator=cpu").trainer)
