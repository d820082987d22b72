"""k-shot gradual pruning (``shots``): the target is reached in k rounds of score -> mask ->
short masked fine-tune, each round re-scoring the current (masked, fine-tuned) model with the
run's strategy and pruning only among the weights still kept. The kept fraction follows the
cubic schedule of Zhu & Gupta (2017) with the initial sparsity 0: after round t of k the
sparsity is ``s_f (1 - (1 - t / k)^3)``, ``s_f`` the target's, so early rounds prune most.
``shots: 1`` is the single shot.
"""

from __future__ import annotations

import torch

from deepcuts.config.errors import ConfigError


def keep_schedule(final_keep: float, shots: int) -> list[float]:
    """The kept fraction after each of ``shots`` rounds; the last is ``final_keep`` exactly."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError(f"shots must be a whole number >= 1 (1: single shot), got {shots!r}.")
    target = 1.0 - final_keep
    fractions = [1.0 - target * (1.0 - (1.0 - t / shots) ** 3) for t in range(1, shots)]
    return [*fractions, final_keep]


def restrict(scores: dict[str, torch.Tensor], kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores in which every pruned weight ranks below every kept one (in its tensor and over all
    tensors), so the next round's masks are subsets of ``kept``. Finite: the pruned entries get
    one value below the lowest kept score of all tensors."""
    lows = [s[kept[n]].min() for n, s in scores.items() if n in kept and kept[n].any()]
    if not lows:
        return scores
    low = torch.stack([x.double() for x in lows]).min()
    floor = low - (low.abs() + 1)  # strictly below in any float precision (low - 1 == low at 2^24)
    return {n: torch.where(kept[n].to(s.device), s, floor.to(s.dtype)) if n in kept else s for n, s in scores.items()}


def check_shots(cfg, strategy, scorer, structured: bool, at: str) -> int:
    """``shots`` and ``shot_epochs`` checked against what re-scoring needs, before any training."""
    shots = cfg.get("shots", 1)
    keep_schedule(0.5, shots)  # the type check
    if shots == 1:
        return 1
    epochs = cfg.get("shot_epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"shot_epochs must be a whole number >= 0, got {epochs!r}.")
    why = None
    if structured:
        why = "structure=heads_neurons removes whole groups in one shot (use structure=none)"
    elif strategy.of is not None:
        why = f"strategy {strategy.name!r} is a control that reuses another strategy's scores"
    elif scorer.from_dense:
        why = f"strategy {scorer.name!r} reads the dense fine-tune's trace, which cannot be re-scored"
    elif at == "pretrained":
        why = "scoring.at=pretrained scores the initial model, before any fine-tune"
    if why:
        raise ConfigError(f"shots={shots} re-scores the model after each round, but {why}: use shots=1.")
    return shots
