"""Stage 2: a score per prunable tensor, shared by every ratio, selector and control that uses
the same scoring strategy on the same dense model.

The scores are computed at the fine-tuned model, at the initial one (``scoring.at=pretrained``),
or read from the dense entry's movement trace (the run's prunable subset of it). The pass is
seeded from the run's seed (:func:`deepcuts.scoring.passes.scoring_seed`), so scores with
``scoring.dropout=true`` are the same whether the dense entry was built in this job or found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from deepcuts.cache.store import read_tensors, tensor_metadata, write_tensors
from deepcuts.pipeline.stage import Stage, runtime
from deepcuts.pipeline.stages.dense import Dense
from deepcuts.scoring.passes import run_scoring, scoring_seed

SCORES, UNITS = "scores.safetensors", "units.safetensors"  # units: per-unit scores, when the strategy has them


@dataclasses.dataclass(frozen=True)
class Scores:
    tensors: dict[str, torch.Tensor]
    units: dict[str, torch.Tensor] | None  # per output unit (structure.group_score=native)
    batches: int | None  # batches seen (optimiser steps for a trace)


@dataclasses.dataclass
class ScoresStage(Stage):
    name = "scores"
    timing = "scoring"

    dense: str  # the dense entry's key (the model scored, or traced)
    strategy: dict  # the scoring strategy's settings (not its name or scope: masks use those)
    scoring: dict | None  # scoring.dropout / accumulate, for scores computed from data
    batches: int  # resolved: 0 for data-free and traced scores
    at: str  # the state scored: finetuned | pretrained
    prunable: dict[str, list[int]]  # name -> shape of every tensor scored (the run's prunable set)
    seed: int  # the scoring pass's seed
    scorer: object = runtime("the strategy instance built from strategy")
    new_scorer: Callable = runtime("a fresh instance of the same strategy (k-shot's re-scoring)")
    new_model: Callable = runtime("a fresh model at the dense stage's initial state")
    pretrained: dict = runtime("the checkpoint weights (scoring.at=pretrained)")
    datamodule: object = runtime("the dense stage's data; the scoring loader is seeded by seed")
    trainer: dict = runtime("accelerator and progress bar of the scoring pass")
    progress: dict | None = runtime("how progress is shown")
    asked: int | None = runtime("scoring.batches as configured: only for the line saying it was capped")
    from_dense: bool = runtime("the scorer reads the dense trace (a class attribute of strategy's target)")

    def code(self) -> tuple:
        return (type(self), type(self.scorer))  # the strategy and every helper it imports

    def build(self, folder: Path, dense: Dense) -> None:
        if self.from_dense:
            trace = read_tensors(dense.trace)
            missing = sorted(set(self.prunable) - set(trace))
            if missing:
                raise RuntimeError(f"the dense entry's movement trace lacks {missing[:3]}: the model YAML's prunable "
                                   "patterns must cover prune.include.")
            scores = {name: trace[name] for name in self.prunable}
            write_tensors(folder / SCORES, scores, metadata=tensor_metadata(dense.trace))
            return
        model = self.new_model()
        if self.at == "finetuned" and dense.state is not None:
            model.load_state_dict(dense.state)
        elif dense.folder is not None:
            model.load_state_dict(dense.initial_state(self.pretrained))
        scores = self.score(model, self.scorer, round_=1)
        if self.scorer.units:
            write_tensors(folder / UNITS, self.scorer.units)
        write_tensors(folder / SCORES, scores, metadata={"batches": str(self.scorer.batches_seen)})

    def score(self, model, scorer, round_: int) -> dict[str, torch.Tensor]:
        """One scoring pass of ``scorer`` over ``model``'s prunable tensors with this stage's
        settings: a fresh loader (the same batches in every round, whether round 1 ran here or
        was cached) and the round's own seed. k-shot's re-scoring calls it with a fresh scorer."""
        named = dict(model.named_parameters())
        params = {name: named[name] for name in self.prunable}
        loader = self.datamodule.scoring_dataloader(self.seed) if scorer.needs_data else None
        scores = run_scoring(model, params, scorer, loader, self.asked, bool((self.scoring or {}).get("dropout")),
                             trainer_kwargs=self.trainer, progress=self.progress, seed=scoring_seed(self.seed, round_))
        return {name: s.detach().cpu() for name, s in scores.items()}

    def load(self, folder: Path) -> Scores:
        meta = tensor_metadata(folder / SCORES)
        units = read_tensors(folder / UNITS) if (folder / UNITS).is_file() else None
        return Scores(read_tensors(folder / SCORES), units, int(meta["batches"]) if "batches" in meta else None)
