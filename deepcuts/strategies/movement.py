"""Movement pruning (Sanh et al. 2020): scores traced by a callback during the dense fine-tune."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from deepcuts.store import write_tensors
from deepcuts.strategies.base import Strategy

TRACE = "movement.safetensors"


class MovementTrace(pl.Callback):
    """Accumulates ``-W_s * G_s`` of the named parameters at every optimiser step ``s`` of a
    fine-tune (the gradient as the optimiser receives it: accumulated and, under AMP, unscaled),
    and writes the sums to ``path`` when training ends (global rank 0: under ``ddp_spawn`` the
    callback runs in the ranks and only files come back). One multiply-add per step and weight:
    no extra pass over the data."""

    def __init__(self, names: list[str], path: Path) -> None:
        self.names, self.path = list(names), Path(path)
        self.trace: dict[str, torch.Tensor] = {}
        self.steps = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = dict(pl_module.named_parameters())
        self.params = {name: params[name] for name in self.names}
        self.trace = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in self.params.items()}
        self.steps = 0

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for name, p in self.params.items():
            if p.grad is not None:
                self.trace[name].addcmul_(p.detach().float(), p.grad.float(), value=-1.0)
        self.steps += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            cpu = {name: t.cpu() for name, t in self.trace.items()}
            write_tensors(self.path, cpu, metadata={"batches": str(self.steps)})


class Movement(Strategy):
    """Movement: ``S = -sum_s W_s * G_s`` over every optimiser step ``s`` of the dense fine-tune
    (Sanh et al.'s first-order movement score): weights moving away from zero score high, those
    pulled towards it low (signed; the top scores are kept). Traced by :class:`MovementTrace`
    while the dense model trains, so it costs no scoring pass and sees every training batch."""

    needs_data = False
    from_dense = True

    def data_free_scores(self, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        raise RuntimeError("movement scores come from the dense fine-tune's trace, not from the weights.")
