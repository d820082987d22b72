"""What the recovery levers take from the dense fine-tune besides its weights: the teacher's
outputs (``distill``) and the weights at a late rewind point (``rewind=step:<n>|epoch:<e>``,
replayed). Each is an entry of its own, keyed by the dense entry, shared by every strategy and ratio."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from deepcuts.cache.store import read_tensors, write_tensors
from deepcuts.pipeline.stage import Stage, runtime
from deepcuts.pipeline.stages.dense import Dense
from deepcuts.training.distill import TEACHER_FILE, teacher_outputs
from deepcuts.training.fine_tune import FineTuneSettings
from deepcuts.training.rewind import REWIND_FILE, RewindPoint, replay


@dataclasses.dataclass
class TeacherStage(Stage):
    """The dense model's outputs for every training example (eval mode, float32, file order)."""

    name = "teacher"

    dense: str  # the dense entry's key: the teacher is that model
    new_model: Callable = runtime("a model of the dense stage's architecture (weights loaded from the entry)")
    datamodule: object = runtime("the dense stage's data")
    device: str = runtime("where the pass runs; outputs are float32 either way")

    def build(self, folder: Path, dense: Dense) -> None:
        model = self.new_model()
        model.load_state_dict(dense.state)
        write_tensors(folder / TEACHER_FILE, {"outputs": teacher_outputs(model, self.datamodule.train_eval_dataloader(), self.device)})

    def load(self, folder: Path) -> torch.Tensor:
        return read_tensors(folder / TEACHER_FILE)["outputs"]


@dataclasses.dataclass
class RewindStage(Stage):
    """The dense fine-tune's weights at a late point, by replaying it from the same start and seed."""

    name = "rewind"

    dense: str  # the dense entry's key (its settings, seed and initial state are those replayed)
    point: RewindPoint
    epochs: int
    fine_tune: FineTuneSettings
    new_model: Callable = runtime("a fresh model at the dense stage's initial state")
    datamodule: object = runtime("the dense stage's data")
    pretrained: dict = runtime("the checkpoint weights; the entry's seeded tensors complete them")

    def build(self, folder: Path, dense: Dense) -> None:
        model = self.new_model()
        state = replay(model, self.datamodule, self.fine_tune, self.epochs, self.point,
                       dense.initial_state(self.pretrained), folder)
        write_tensors(folder / REWIND_FILE, state)

    def load(self, folder: Path) -> dict[str, torch.Tensor]:
        return read_tensors(folder / REWIND_FILE)
