"""Stage 1: the dense fine-tune, shared by every strategy, ratio and recipe on one model.

Its entry holds the fine-tuned weights, the seeded part of the initial state (the rewind target)
and, when traced, the movement trace of every Linear the model YAML lists as prunable: the
scores stage takes the run's own prunable subset, so runs with different ``prune.exclude`` share
one dense entry and each gets a trace of exactly its set.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from deepcuts.cache.keys import state_digest
from deepcuts.cache.store import read_tensors, write_json, write_tensors
from deepcuts.pipeline.stage import Stage, runtime
from deepcuts.scoring.trace import TRACE, MovementTrace
from deepcuts.training.fine_tune import FineTuneSettings, fine_tune


@dataclasses.dataclass(frozen=True)
class Dense:
    """A dense entry: its folder, the fine-tuned weights and the fine-tune's metrics."""

    folder: Path | None
    state: dict[str, torch.Tensor] | None
    metrics: dict

    def initial_state(self, pretrained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The rewind target stored with the entry: ``pretrained`` (this process's copy of the
        checkpoint weights) with the entry's seeded tensors, checked against the entry's digest."""
        path = self.folder / "initial.safetensors"
        with safe_open(str(path), framework="pt") as fh:
            digest = (fh.metadata() or {}).get("digest")
        state = {**pretrained, **read_tensors(path)}
        if state_digest(state) != digest:
            raise RuntimeError(f"the initial state in {self.folder} does not match its digest: the entry is not usable.")
        return state

    @property
    def trace(self) -> Path:
        return self.folder / TRACE


@dataclasses.dataclass
class DenseStage(Stage):
    name = "dense"

    data: dict  # the data YAML, less where the files are (data.root, cache_dir, num_workers)
    data_files: dict  # sha256 of the train and dev files
    model: dict  # the model YAML
    initial_state: str  # state_digest of the model before fine-tuning (checkpoint + seeded head)
    optimizer: dict
    scheduler: dict | None
    fine_tune: FineTuneSettings
    epochs: int
    trace: list[str] | None  # parameters whose movement is traced (None: no trace)
    libraries: dict  # versions of the libraries the numerics depend on
    new_model: Callable = runtime("a fresh model at initial_state, from model + seed")
    datamodule: object = runtime("the data of data + data_files, split by fine_tune.seed / selection")
    seeded: dict = runtime("the tensors of initial_state a seed made (the head; all of a random init)")
    out: Path = runtime("the run folder: logs and checkpoints only")

    def build(self, folder: Path, loggers: Callable | None = None) -> None:
        """``loggers(stage, use_wandb)``: the run's loggers (what is shown, not what is trained)."""
        model = self.new_model()
        traces = [MovementTrace(self.trace, folder / TRACE)] if self.trace is not None else []
        result = fine_tune(model, self.datamodule, self.fine_tune, self.epochs, self.out, "dense",
                           loggers=loggers("dense", use_wandb=False) if loggers else [], callbacks=traces)
        write_tensors(folder / "model.safetensors", model.state_dict())
        write_tensors(folder / "initial.safetensors", self.seeded, metadata={"digest": self.initial_state})
        write_json(folder / "metrics.json", result)

    def load(self, folder: Path) -> Dense:
        return Dense(folder, read_tensors(folder / "model.safetensors"), json.loads((folder / "metrics.json").read_text()))


def skipped(metrics: Path | None) -> Dense:
    """The dense stage of a run that does not need it (scores at the pretrained model and
    ``rewind=pretrained``, no teacher): no metrics, and the time saved, measured by the identical
    dense fine-tune when the cache holds one (its ``metrics.json``; else None: nobody ran it)."""
    done = json.loads(metrics.read_text()) if metrics is not None else {}
    return Dense(None, None, {"selected": {}, "last": {}, "history": [], "best_epoch": None, "skipped": True,
                              "time_saved_s": done.get("seconds")})
