"""k-shot gradual pruning's rounds (``shots``): rounds 1..k-1 prune to the cubic schedule's
fraction (:func:`deepcuts.pruning.schedule.keep_schedule`), fine-tune shortly and re-score the
model among the weights still kept (:func:`deepcuts.pruning.schedule.restrict`), so every round's
masks are subsets of the round before and the counts are exact. The last fraction is the run's
own selection, made by the caller from the scores returned here."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from deepcuts.pruning import masks as M
from deepcuts.pruning.schedule import restrict
from deepcuts.pruning.selectors import ElementSelector

Scores = dict[str, torch.Tensor]


def run_rounds(scores: Scores, schedule: list[float], selector: ElementSelector, model,
               fine_tune_round: Callable[[object, int], dict], rescore: Callable[[object, int], Scores]
               ) -> tuple[Scores, list[dict]]:
    """Run the rounds before the last; return the scores the last round selects from, and a
    record per round. ``fine_tune_round(model, t)`` trains the masked model of round ``t`` and
    returns its fine-tune record; ``rescore(model, t)`` scores the plain model after it."""
    rounds = []
    for t, fraction in enumerate(schedule[:-1], 1):
        start = time.perf_counter()
        masks = selector.select(scores, fraction)
        selector.apply(model, masks)
        shot = fine_tune_round(model, t)
        M.remove_masks(model)  # zeros folded in: the next round scores a plain model
        scores = restrict(rescore(model, t + 1), masks)
        rounds.append({"round": t, "keep_fraction": fraction, "kept": int(sum(m.sum() for m in masks.values())),
                       "dev": shot["selected"], "seconds": time.perf_counter() - start})
    return scores, rounds
