"""Selectors turn scores into what is kept, for a keep fraction, and apply it to a model.

One interface for every kind of selection: :class:`ElementSelector` keeps the top weights by
``scope`` (within each tensor, each output row, or over all tensors) and attaches them as
``torch.nn.utils.prune`` masks; :class:`HeadsNeuronsSelector` keeps whole attention heads and FFN
neurons and removes the rest from the model (:mod:`deepcuts.pruning.structured`). Both return
element masks in the original shapes, so results, reports and mask overlap read them alike.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from deepcuts.config.errors import ConfigError
from deepcuts.pruning import masks as M
from deepcuts.pruning.structured import Structure


class Selector(Protocol):
    def select(self, scores: dict[str, torch.Tensor], keep_fraction: float,
               units: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]: ...

    def apply(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None: ...

    def record(self) -> dict | None: ...


def check_scores(scores: dict[str, torch.Tensor], prunable: dict[str, tuple[int, ...]]) -> None:
    """Scores must cover exactly the prunable set, tensor for tensor, before any mask is built."""
    missing, extra = sorted(set(prunable) - set(scores)), sorted(set(scores) - set(prunable))
    shapes = [n for n in prunable if n in scores and tuple(scores[n].shape) != tuple(prunable[n])]
    if missing or extra or shapes:
        raise RuntimeError(
            f"the scores do not match the prunable set: missing {missing[:3]}, extra {extra[:3]}, "
            f"other shapes {shapes[:3]}; the scores entry was made for another model or prune set."
        )


class ElementSelector:
    """Exact top-k of single weights, per ``scope``; masks attached with ``torch.nn.utils.prune``."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def select(self, scores, keep_fraction, units=None):
        return M.build_masks(scores, keep_fraction, self.scope)

    def apply(self, model, masks):
        M.apply_masks(model, masks)

    def record(self):
        return None


class HeadsNeuronsSelector:
    """Whole heads and FFN neurons by grouped scores (``structure`` config); ``apply`` removes
    the unkept groups, so the model that trains next is smaller."""

    def __init__(self, structure: Structure, prunable: dict[str, torch.Tensor], scope: str) -> None:
        self.structure, self.prunable, self.scope = structure, prunable, scope

    def select(self, scores, keep_fraction, units=None):
        return self.structure.select(scores, self.prunable, keep_fraction, self.scope, units)

    def apply(self, model, masks):
        self.structure.remove(model)

    def record(self):
        return self.structure.record()


def make_selector(structure_cfg, model: nn.Module, scorer, transform, prunable: dict, keep_fraction: float) -> Selector:
    """The run's selector from ``structure`` (checked before any training)."""
    kind = structure_cfg.get("kind", "none") if structure_cfg is not None else "none"
    if transform is not None and kind != "none":
        raise ConfigError("a mask transform (strategy=shuffled) changes element masks after they are built, which "
                          "would break whole heads and neurons; use strategy=random as the structured control.")
    structure = Structure.from_cfg(structure_cfg, model, scorer, prunable, keep_fraction)
    if structure is None:
        return ElementSelector(scorer.scope)
    return HeadsNeuronsSelector(structure, prunable, scorer.scope)
