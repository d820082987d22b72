"""Wanda (Sun et al. 2023): weight magnitude times the norm of the input it multiplies, from a
forward-only pass, compared within each output row."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from deepcuts.config.errors import ConfigError
from deepcuts.strategies.base import Strategy, forward_hooks, module_of


class Wanda(Strategy):
    """Wanda: ``S_ij = |W_ij| * ||X_j||_2``, ``X_j`` the ``j``-th input feature of the Linear over
    every real (non-padding) token of the scoring batches; a bias counts as the weight of a
    constant input 1, so ``S = |b| * sqrt(N)`` with ``N`` real tokens. Forward passes only (no
    gradient); the YAML's ``scope: row`` compares weights within each output row, as Wanda does.

    DeBERTa-v3 also runs its query/key projections over the relative-position embeddings
    (``[1, 2k, H]``): calls whose first two dimensions are not the batch's ``[B, L]`` are skipped.
    (A batch of one sequence of exactly ``2k`` tokens would not be told apart.)"""

    needs_grad = False

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(name, **kwargs)
        if self.accumulate != "sum_abs":
            raise ConfigError("wanda accumulates input norms, not per-batch terms; leave accumulate at sum_abs.")
        self.sumsq: dict[str, torch.Tensor] = {}  # per module: sum over real tokens of x_j^2
        self.tokens: dict[str, int] = {}
        self.token_mask: torch.Tensor | None = None

    def before_batch(self, model: nn.Module, batch: dict) -> None:
        self.token_mask = batch["attention_mask"].bool()

    def _make_hook(self, module_name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach()
            if x.dim() == 3 and x.shape[:2] != self.token_mask.shape:
                return  # not tokens: DeBERTa's shared relative-position projections
            x = x[self.token_mask] if x.dim() == 3 else x  # [batch, tokens, features]: real tokens
            self.sumsq[module_name] = self.sumsq.get(module_name, 0) + x.float().square().sum(0)
            self.tokens[module_name] = self.tokens.get(module_name, 0) + x.shape[0]

        return hook

    def hooks(self, model: nn.Module, params: dict) -> contextlib.AbstractContextManager:
        self.sumsq, self.tokens = {}, {}
        modules = dict(module_of(model, name) for name in params)
        return forward_hooks(modules, self._make_hook)

    def update(self, name: str, weight: torch.Tensor, grad: torch.Tensor | None) -> None:
        """Nothing per tensor: the hooks accumulate the input norms."""

    def finalize(self, name: str, weight: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        module_name, _, kind = name.rpartition(".")
        if kind == "bias":
            return weight.abs() * float(self.tokens[module_name]) ** 0.5
        return weight.abs() * self.sumsq[module_name].sqrt().to(weight.dtype).unsqueeze(0)
