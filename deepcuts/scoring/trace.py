"""The movement trace: what the dense fine-tune records for movement pruning, at no extra pass.

Kept apart from the ``movement`` strategy class because every dense fine-tune runs it: its code is
part of the dense stage's cache key, the strategy's is not.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from deepcuts.cache.store import write_tensors

TRACE = "movement.safetensors"
log = logging.getLogger(__name__)


class MovementTrace(pl.Callback):
    """Accumulates ``-W_s * G_s`` of the named parameters at every optimiser step ``s`` of a
    fine-tune, and writes the sums to ``path`` when training ends (global rank 0: under
    ``ddp_spawn`` the callback runs in the ranks and only files come back).

    ``G_s`` is the gradient the optimiser step is about to use: after gradient accumulation, DDP
    averaging and AMP unscaling, before clipping. A step whose gradients are not finite (an fp16
    overflow the grad scaler will skip) is left out. One multiply-add per weight and step."""

    def __init__(self, names: list[str], path: Path) -> None:
        self.names, self.path = list(names), Path(path)
        self.trace: dict[str, torch.Tensor] = {}
        self.steps = self.skipped = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = dict(pl_module.named_parameters())
        self.params = {name: params[name] for name in self.names}
        self.trace = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in self.params.items()}
        self.steps = self.skipped = 0

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        # one fused pass and one host sync: a norm is inf/NaN exactly when an entry is
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            self.skipped += 1
            return
        for name, p in self.params.items():
            if p.grad is not None:
                self.trace[name].addcmul_(p.detach().float(), p.grad.float(), value=-1.0)
        self.steps += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.skipped:
            log.info("movement trace: %d step(s) with non-finite gradients left out", self.skipped)
        if trainer.is_global_zero:
            cpu = {name: t.cpu() for name, t in self.trace.items()}
            write_tensors(self.path, cpu, metadata={"batches": str(self.steps)})
