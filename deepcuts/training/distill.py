"""Knowledge distillation from the dense fine-tuned model into the masked fine-tune (``distill``).

The teacher is the run's own dense fine-tuned model (the cached dense stage), in eval mode. Its
outputs are computed once per training example, before the masked fine-tune, and kept in a
cache entry of their own (``teacher``, keyed by the dense stage): every strategy, ratio and
recipe on that dense model reads the same table. A batch finds its rows by the train set's
``example_index`` column. The teacher runs without dropout, so the table is what a teacher called
on each batch would give, up to padding and precision (the table is float32 from eval batches;
a bf16-mixed student's batches are padded differently); it saves one forward pass per step.

Loss, with ``a = alpha`` and ``T = temperature``:
  classification: ``(1 - a) CE(s, y) + a T^2 KL(softmax(t / T) || softmax(s / T))`` (the ``T^2``
  keeps the soft term's gradients on the scale of the hard one's as T changes; Hinton et al. 2015),
  KL averaged over the batch;
  regression: ``(1 - a) MSE(s, y) + a MSE(s, t)`` on the task's output scale (5 sigmoid for STS-B).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from deepcuts.config.errors import ConfigError
from deepcuts.data.glue import EXAMPLE_INDEX

TEACHER_FILE = "teacher.safetensors"


@dataclass(frozen=True)
class DistillSettings:
    alpha: float = 0.0
    temperature: float = 2.0

    @property
    def enabled(self) -> bool:
        return self.alpha > 0

    @classmethod
    def from_cfg(cls, node: DictConfig | dict | None) -> DistillSettings:
        node = dict(node or {})
        unknown = sorted(set(node) - {"alpha", "temperature"})
        if unknown:
            raise ConfigError(f"distill has no key(s) {unknown}; it takes alpha and temperature.")
        alpha, temperature = node.get("alpha", 0.0), node.get("temperature", 2.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"distill.alpha must be a number in [0, 1] (0: no distillation), got {alpha!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ConfigError(f"distill.temperature must be a number > 0, got {temperature!r}.")
        return cls(float(alpha), float(temperature))

    def record(self) -> dict:
        return {"alpha": self.alpha, "temperature": self.temperature}


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, task_loss: torch.Tensor, alpha: float, temperature: float,
    regression: bool,
) -> torch.Tensor:
    """``(1 - alpha) task_loss + alpha`` times the soft term (module docstring)."""
    teacher = teacher.to(student.dtype)
    if regression:
        soft = F.mse_loss(student, teacher)
    else:
        t = temperature
        soft = t * t * F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                                reduction="batchmean", log_target=True)
    return (1 - alpha) * task_loss + alpha * soft


class Teacher:
    """A table of teacher outputs, one row per training example, and the loss that uses it."""

    def __init__(self, outputs: torch.Tensor, settings: DistillSettings) -> None:
        self.outputs, self.settings = outputs, settings

    def loss(self, out: torch.Tensor, batch: dict, task_loss: Callable, regression: bool) -> torch.Tensor:
        if EXAMPLE_INDEX not in batch:
            raise RuntimeError(f"distillation needs the train batches' {EXAMPLE_INDEX!r} column")
        rows = self.outputs[batch[EXAMPLE_INDEX].cpu()]
        if not torch.isfinite(rows).all():  # a row the table does not hold (a held-out example)
            raise RuntimeError("distillation: a training example has no teacher output (the table and the train set differ)")
        rows = rows.to(out.device)
        return distill_loss(out, rows, task_loss(out, batch["labels"]), self.settings.alpha,
                            self.settings.temperature, regression)


@torch.no_grad()
def teacher_outputs(model: torch.nn.Module, loader: DataLoader, device: str = "cpu") -> torch.Tensor:
    """The model's outputs (logits, or the regression output) for every training example, in
    eval mode and float32 on ``device`` (the model is moved back to where it was), as a
    ``[rows, outputs]`` table indexed by ``example_index``."""
    was_training, home = model.training, next(model.parameters()).device
    model.eval().to(device)
    rows: dict[int, torch.Tensor] = {}
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model._forward_batch(batch).float().cpu()
            for i, row in zip(batch[EXAMPLE_INDEX].tolist(), out.reshape(len(out), -1), strict=True):
                rows[i] = row
    finally:
        model.train(was_training).to(home)
    table = torch.full((max(rows) + 1, len(next(iter(rows.values())))), float("nan"))
    for i, row in rows.items():
        table[i] = row
    return table.squeeze(-1) if getattr(model, "regression", False) else table
