"""The baselines: weight magnitude, weight x gradient, and random scores."""

from __future__ import annotations

import torch
from torch import nn

from deepcuts.strategies.base import Strategy


class MagnitudeWeight(Strategy):
    """LayerMagWeight / GlobalMagWeight: ``S = |W|`` (no data)."""

    needs_data = False

    def data_free_scores(self, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        return {name: p.detach().abs().clone() for name, p in params.items()}


class RandomScore(Strategy):
    """Random: ``S ~ U(0, 1)`` from a generator seeded by ``seed``; with exact top-k this keeps
    exactly the target count (the authors' Bernoulli masks did not). A sanity control."""

    needs_data = False
    control = True

    def data_free_scores(self, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        return {
            name: torch.rand(p.shape, generator=generator).to(p.device)
            for name, p in params.items()
        }


class MagnitudeGrad(Strategy):
    """LayerMagGrad / GlobalMagGrad: ``S = sum_t |W * dL_t/dW|`` over the same batches as the
    interpretability scores (paper eq. 4; the authors' code used |G| of one batch)."""

    def batch_term(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.mul_(weight)
