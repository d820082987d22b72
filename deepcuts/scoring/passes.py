"""The scoring pass: forward/backward over seeded train batches, no optimiser step.

A :class:`~deepcuts.strategies.Strategy` callback reads the gradients after each batch. The pass
leaves the model exactly as it found it: weights, ``requires_grad`` flags, train/eval mode, no
``.grad`` left behind, and the global RNG states (so later training is unaffected).
"""

from __future__ import annotations

import contextlib
import logging
import random
import warnings
from collections.abc import Iterator, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcuts.config.errors import ConfigError
from deepcuts.runtime.progress import progress_callbacks
from deepcuts.strategies import Strategy
from deepcuts.strategies.base import AT

log = logging.getLogger(__name__)
NO_OPTIMIZER = r"`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer"


class ScoringPass(pl.LightningModule):
    """``strategy.passes`` passes per batch, each in ``strategy.pass_context``: forward/backward
    with the gradients summed in ``.grad``, or forward only for ``needs_grad = False``."""

    def __init__(self, model: nn.Module, prunable: dict[str, nn.Parameter], strategy: Strategy, dropout: bool) -> None:
        super().__init__()
        self.model, self.prunable, self.dropout = model, prunable, dropout
        self.passes, self.needs_grad, self.pass_context = strategy.passes, strategy.needs_grad, strategy.pass_context
        self.automatic_optimization = False

    def on_train_epoch_start(self) -> None:
        self.model.train(self.dropout)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.model.zero_grad(set_to_none=True)
        for k in range(self.passes):
            with self.pass_context(self.prunable, k), torch.set_grad_enabled(self.needs_grad):
                loss = self.model.loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"scoring: the loss is {loss.item()} on scoring batch {batch_idx}; the dense "
                        "model has diverged, so no scores can be computed."
                    )
                if self.needs_grad:
                    self.manual_backward(loss)

    def configure_optimizers(self):
        return None


@contextlib.contextmanager
def preserved_state(model: nn.Module, prunable: dict[str, nn.Parameter]) -> Iterator[None]:
    """Gradients only for prunable tensors; restore flags, mode, grads and RNG on exit."""
    flags = {p: p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in prunable.values()}
    mode = model.training
    rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(mode)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.random.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def scoring_seed(seed: int, round_: int = 1) -> int:
    """The seed of a scoring pass: its own per run seed and k-shot round (1: the scores stage),
    so dropout-on scores never depend on what ran before them in the process."""
    return seed + 200 + round_


def scoring_batches(strategy: Strategy, batches: int | None, loader: DataLoader | None,
                    report_cap: bool = False) -> int:
    """The batches a scoring pass will see: ``batches`` (None: the strategy's default), capped at
    one pass over ``loader``; 0 for strategies that need no data. ``report_cap`` logs the cap."""
    if not strategy.needs_data or strategy.from_dense:
        return 0
    n = strategy.default_batches if batches is None else int(batches)
    if n <= 0:
        raise ConfigError(f"scoring.batches must be >= 1 (or null for the default), got {batches}.")
    if report_cap and n > len(loader):
        asked = f"scoring.batches={n}" if batches is not None else f"scoring.batches=null ({strategy.name}'s default {n})"
        log.info("%s capped at one pass over the train set: %d batches", asked, len(loader))
    return min(n, len(loader))


def run_scoring(
    model: nn.Module,
    prunable: dict[str, nn.Parameter],
    strategy: Strategy,
    loader: DataLoader | None,
    batches: int | None,
    dropout: bool = False,
    trainer_kwargs: dict | None = None,
    progress: Mapping | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Scores for every prunable tensor. ``batches`` (None: the strategy's default) is capped at
    one pass over ``loader``. ``progress``: the ``progress`` settings (:mod:`deepcuts.runtime.progress`).
    The pass starts from ``seed`` (dropout masks with ``dropout=True``), whatever ran before it
    in the process, and leaves the global RNG as it found it."""
    if not strategy.needs_data:
        return strategy.data_free_scores(prunable)
    n = scoring_batches(strategy, batches, loader, report_cap=True)
    label = f"scoring {strategy.name}"
    log.info("%s: %d batches x %d %s pass%s", label, n, strategy.passes,
             "forward/backward" if strategy.needs_grad else "forward-only", "" if strategy.passes == 1 else "es")
    kwargs = dict(
        max_epochs=1,
        limit_train_batches=n,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    kwargs.update(trainer_kwargs or {})
    kwargs["callbacks"] = [strategy, *progress_callbacks(
        progress, label, kwargs.get("enable_progress_bar", True), announce=False, label_bar=True)]  # announced above
    with preserved_state(model, prunable), warnings.catch_warnings():
        pl.seed_everything(seed, workers=True, verbose=False)
        # a scoring pass has no optimiser by design: Lightning's warning says nothing to the user
        warnings.filterwarnings("ignore", message=NO_OPTIMIZER, category=UserWarning)
        pl.Trainer(**kwargs).fit(ScoringPass(model, prunable, strategy, dropout), train_dataloaders=loader)
    return strategy.scores


def scoring_state(cfg_at: str | None, strategy: Strategy) -> str:
    """The model state scored: ``scoring.at`` when set, else the strategy's own (SNIP: pretrained)."""
    at = strategy.at if cfg_at is None else cfg_at
    if at not in AT:
        raise ConfigError(f"scoring.at must be one of {AT} (or null: the strategy's default), got {at!r}.")
    if at == "pretrained" and strategy.from_dense:
        raise ConfigError(f"strategy {strategy.name!r} is traced during the dense fine-tune; it cannot be scored at the pretrained state: use scoring.at=null or finetuned.")
    return at
