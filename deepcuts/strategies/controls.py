"""Sanity controls (Frankle et al. 2021): masks that keep a method's budget but not its choice."""

from __future__ import annotations

from deepcuts.config.errors import ConfigError
from deepcuts.pruning.controls import ShuffleMasks
from deepcuts.strategies.base import Strategy


class Shuffled(Strategy):
    """Shuffled: the masks of strategy ``of``, each tensor's mask permuted uniformly at random
    (:class:`deepcuts.pruning.controls.ShuffleMasks`). If it matches ``of``, the within-tensor
    choice does not matter.

    Nothing is scored here: the scores are ``of``'s, with the compared run's settings: any key
    beside ``of`` (e.g. ``+strategy.sigma=0.1`` with ``of=smoothgrad``) overrides ``of``'s YAML, so
    the control shares the scores entry of the run it controls."""

    control = True

    def __init__(self, name: str, of: str, scope: str = "layer", seed: int = 0, **overrides) -> None:
        if not isinstance(of, str) or not of or of.startswith("shuffled"):
            raise ConfigError(f"strategy.of must name another strategy (a conf/strategy YAML), got {of!r}.")
        super().__init__(name=name, scope=scope, seed=seed)
        self.of, self.overrides = of, dict(overrides)

    def mask_transform(self) -> ShuffleMasks:
        return ShuffleMasks(self.seed)
