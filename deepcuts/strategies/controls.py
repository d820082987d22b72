"""Sanity controls (Frankle et al. 2021): masks that keep a method's budget but not its choice."""

from __future__ import annotations

import torch

from deepcuts.config.errors import ConfigError
from deepcuts.strategies.base import Strategy


class Shuffled(Strategy):
    """Shuffled: the masks of strategy ``of``, each tensor's mask permuted uniformly at random.

    ``M'_l = P_l(M_l)`` with ``P_l`` a seeded random permutation of tensor ``l``'s entries, so the
    kept count of every tensor (the layer-wise budget a global strategy chose) stays the same and
    only *which* entries are kept is lost. If it matches ``of``, the within-tensor choice does not
    matter. Scores are those of ``of`` (from the same cache entry); nothing is scored here.
    """

    control = True

    def __init__(self, name: str, of: str, scope: str = "layer", seed: int = 0, **kwargs) -> None:
        if not isinstance(of, str) or not of or of.startswith("shuffled"):
            raise ConfigError(f"strategy.of must name another strategy (a conf/strategy YAML), got {of!r}.")
        super().__init__(name=name, scope=scope, seed=seed, **kwargs)
        self.of = of

    def transform_masks(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + 30_011)
        out = {}
        for name in sorted(masks):  # a fixed order: the same seed always gives the same masks
            mask = masks[name]
            perm = torch.randperm(mask.numel(), generator=generator).to(mask.device)
            out[name] = mask.reshape(-1)[perm].view_as(mask)
        return out
