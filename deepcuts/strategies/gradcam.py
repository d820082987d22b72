"""LayerGradCAM and Cam-Cut (LayerGradCAMShift): gradients weighted by the Linear's mean
pre-activation output, captured in the same forward pass that produces the gradient."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from deepcuts.strategies.base import Strategy, forward_hooks, module_of


class ActivationMeans:
    """Forward hooks that record ``a_bar``: a Linear's output ``W x + b`` averaged over the batch
    and the real tokens (attention-mask weighted), or over every position with
    ``include_padding`` (the authors' averaging). 2-D outputs (the pooler) average over the batch.
    Outputs whose first two dimensions are not the batch's ``[B, L]`` are skipped: DeBERTa-v3 runs
    its query/key projections over the relative-position embeddings too (``[1, 2k, H]``; a batch of
    one sequence of exactly ``2k`` tokens would not be told apart)."""

    def __init__(self, include_padding: bool) -> None:
        self.include_padding = include_padding
        self.token_mask: torch.Tensor | None = None
        self.means: dict[str, torch.Tensor] = {}
        self.enabled = True

    def set_batch(self, batch: dict) -> None:
        self.token_mask = batch["attention_mask"]

    def make_hook(self, module_name: str):
        def hook(module, inputs, output):
            if not self.enabled:
                return
            with torch.no_grad():
                out = output.detach()
                if out.dim() == 3 and out.shape[:2] != self.token_mask.shape:
                    return  # not token activations: DeBERTa's shared relative-position projections
                if out.dim() == 3 and not self.include_padding:
                    weight = self.token_mask.to(out.dtype).unsqueeze(-1)
                    mean = (out * weight).sum((0, 1)) / weight.sum()
                else:
                    mean = out.reshape(-1, out.shape[-1]).mean(0)
                self.means[module_name] = mean

        return hook

    def hooks(self, model: nn.Module, params: dict) -> contextlib.AbstractContextManager:
        modules = dict(module_of(model, name) for name in params)
        return forward_hooks(modules, self.make_hook)

    def weight_rows(self, param_name: str, term: torch.Tensor, shift: float) -> torch.Tensor:
        """``term * (a_bar + shift)`` over the rows (output units) of a weight, or a bias."""
        mean = self.means[param_name.rpartition(".")[0]]
        factor = mean + shift if shift else mean
        return term.mul_(factor.unsqueeze(1) if term.dim() == 2 else factor)


class GradCAM(Strategy):
    """LayerGradCAM: ``S = sum_t |W * G_t * (a_bar_t + shift)[:, None]|`` with ``shift = 0``;
    bias ``|b * g_b * (a_bar_t + shift)|``. ``a_bar_t`` is the Linear's pre-activation output,
    averaged over the batch's real tokens.

    Per output unit ``k`` (Grad-CAM's channel weight, for ``structure.group_score=native``):
    ``U_k = sum_t |g_b,t,k * (a_bar_t,k + shift)|``, ``g_b = dL/db`` the output's gradient summed
    over tokens; recorded for every Linear whose bias is scored."""

    unit_scores = True

    def __init__(self, name: str, shift: float = 0.0, include_padding: bool = False, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.shift = float(shift)
        self.activations = ActivationMeans(include_padding)

    def hooks(self, model, params):
        return self.activations.hooks(model, params)

    def before_batch(self, model, batch) -> None:
        self.activations.set_batch(batch)

    def batch_term(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return self.activations.weight_rows(name, grad.mul_(weight), self.shift)

    def update(self, name: str, weight: torch.Tensor, grad: torch.Tensor | None) -> None:
        if name.endswith(".bias"):  # the channel weight, before batch_term scales grad in place
            unit = self.activations.weight_rows(name, grad.clone(), self.shift)
            total = self.units.setdefault(name[: -len(".bias")], torch.zeros_like(unit))
            total.add_(unit.abs_() if self.accumulate == "sum_abs" else unit)
        super().update(name, weight, grad)


class GradCAMShift(GradCAM):
    """Cam-Cut (LayerGradCAMShift): ``S = sum_t |W * G_t * (a_bar_t + lambda)[:, None]|``,
    ``lambda = 10`` by default (paper eq. 5). The global variant keeps lambda inside the product
    (the authors' ``|lambda + W G a_bar|`` makes nearly every score tie)."""

    def __init__(self, name: str, shift: float = 10.0, **kwargs) -> None:
        super().__init__(name, shift=shift, **kwargs)
