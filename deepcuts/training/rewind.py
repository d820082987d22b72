"""Where the masked fine-tune starts (``rewind``): the pretrained encoder with the initial head
(``pretrained``), the dense fine-tuned model itself (``finetuned``, no rewind), or an early point
of the dense fine-tune (``step:<n>`` / ``epoch:<e>``: late rewinding, Frankle et al. 2020).

A late point is not stored by the dense fine-tune (its cache entry is shared by every rewind
setting): it is replayed. The dense fine-tune is run again from the same initial state and seed,
with the same data order, schedule and callbacks that touch no random state, and stopped once the
point is reached; the weights there are kept in a cache entry of their own (``rewind``), so a
point costs its steps once per dense model. ``step:0`` and ``epoch:0`` are the initial state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from deepcuts.config.errors import ConfigError
from deepcuts.training.fine_tune import FineTuneSettings, fine_tune

NAMED = ("pretrained", "finetuned")
REWIND_FILE = "rewind.safetensors"


@dataclass(frozen=True)
class RewindPoint:
    kind: str  # pretrained | finetuned | step | epoch
    at: int | None = None

    @classmethod
    def parse(cls, value) -> RewindPoint:
        text = str(value).strip()
        if text in NAMED:
            return cls(text)
        kind, sep, number = text.partition(":")
        if sep and kind in ("step", "epoch") and number.strip().isdigit():
            return cls(kind, int(number))
        raise ConfigError(
            f"rewind={value!r} is unknown; use pretrained, finetuned, step:<n> (the dense fine-tune's "
            "weights after n optimiser steps) or epoch:<e> (after e epochs), e.g. rewind=step:200."
        )

    @property
    def late(self) -> bool:
        """A point inside the dense fine-tune, to be replayed (0 is the initial state)."""
        return self.kind in ("step", "epoch") and bool(self.at)

    @property
    def initial(self) -> bool:
        """Rewinds to the initial state: ``pretrained``, ``step:0`` or ``epoch:0``."""
        return self.kind == "pretrained" or (self.kind in ("step", "epoch") and self.at == 0)

    def check(self, epochs_dense: int, steps_per_epoch: int) -> None:
        """Refuse a point past the end of the dense fine-tune, before any training."""
        if self.kind == "epoch" and self.at > epochs_dense:
            raise ConfigError(f"rewind=epoch:{self.at} is past the dense fine-tune's {epochs_dense} epochs; "
                              f"use epoch:0..{epochs_dense} (or step:<n>).")
        total = epochs_dense * steps_per_epoch
        if self.kind == "step" and self.at > total:
            raise ConfigError(f"rewind=step:{self.at} is past the dense fine-tune's {total} optimiser steps "
                              f"({epochs_dense} epochs x {steps_per_epoch}); use step:0..{total}.")

    def spec(self) -> str:
        return f"{self.kind}:{self.at}" if self.at is not None else self.kind


def steps_per_epoch(batches: int, accumulate: int = 1) -> int:
    """Optimiser steps in one epoch of ``batches`` batches (Lightning steps on the last partial group)."""
    return math.ceil(batches / max(1, accumulate))


class CaptureAt(pl.Callback):
    """Copies the weights once the point is reached (after its optimiser step, or at the end of
    its epoch) and stops the fine-tune there."""

    def __init__(self, point: RewindPoint) -> None:
        self.point, self.state = point, None

    def _capture(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        trainer.should_stop = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.state is None and self.point.kind == "step" and trainer.global_step == self.point.at:
            self._capture(trainer, module)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.state is None and self.point.kind == "epoch" and trainer.current_epoch + 1 == self.point.at:
            self._capture(trainer, module)


def replay(model, data, settings: FineTuneSettings, epochs_dense: int, point: RewindPoint,
           initial: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """The dense fine-tune's weights at ``point``, by running it again from ``initial``. The
    model is left at that point."""
    model.load_state_dict(initial)
    capture = CaptureAt(point)
    fine_tune(model, data, settings, epochs_dense, folder, "dense", loggers=[], selection="last", callbacks=[capture])
    if capture.state is None:  # check() refuses such points; this guards a changed data size
        raise RuntimeError(f"rewind={point.spec()}: the replayed dense fine-tune never reached that point")
    return capture.state
