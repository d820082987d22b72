"""Integrated Gradients over the weights: the attribution view of the paper taken one step on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from deepcuts.config.errors import ConfigError
from deepcuts.strategies.base import Strategy


class IntegratedGradients(Strategy):
    """Integrated Gradients (Sundararajan et al. 2017) on the weights:
    ``S = sum_t |W * (1/m) sum_{k=1..m} G_t(alpha_k W)|``, ``alpha_k = k/m``: the gradient of batch
    ``t`` averaged along the straight path from 0 to the weights (a right Riemann sum, ``m`` steps;
    ``m = 8`` by default). Every prunable tensor (weights and biases) is scaled together; the rest
    of the model (embeddings, LayerNorms, head) stays as it is."""

    default_batches = 125  # 125 batches x 8 passes: the 1000 passes of the one-pass scores

    def __init__(self, name: str, steps: int = 8, **kwargs) -> None:
        super().__init__(name, **kwargs)
        if int(steps) < 1:
            raise ConfigError(f"strategy.steps (points on the path from 0 to W) must be >= 1, got {steps}.")
        self.passes = int(steps)

    @contextlib.contextmanager
    def pass_context(self, params: dict[str, nn.Parameter], k: int) -> Iterator[None]:
        """Pass ``k`` runs at ``alpha = (k + 1) / m`` times the weights; restored exactly after."""
        alpha = (k + 1) / self.passes
        if alpha == 1.0:
            yield
            return
        saved = {name: p.detach().clone() for name, p in params.items()}
        try:
            with torch.no_grad():
                for p in params.values():
                    p.mul_(alpha)
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])

    def batch_term(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.mul_(weight)
