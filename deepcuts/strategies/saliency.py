"""The classic gradient saliencies: SNIP, first-order Taylor, and Optimal Brain Damage with the
empirical Fisher. ``G_t`` is the gradient of batch ``t``'s mean loss (as in every score here)."""

from __future__ import annotations

import torch

from deepcuts.config.errors import ConfigError
from deepcuts.strategies.magnitude import MagnitudeGrad


class Snip(MagnitudeGrad):
    """SNIP (Lee et al. 2019): ``S = sum_t |W * G_t|`` at the *pretrained* model, before any
    fine-tuning (pretrained encoder + the seeded head). The rule of LayerMagGrad, scored at
    another state; with ``rewind=pretrained`` the dense fine-tune is not run at all."""

    at = "pretrained"


class Taylor(MagnitudeGrad):
    """Taylor (Molchanov et al. 2019): ``S = sum_t (W * G_t)^2``, the squared first-order estimate
    of the loss change when a weight is removed, summed over batches."""

    def batch_term(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.mul_(weight).square_()


class FisherOBD(MagnitudeGrad):
    """Optimal Brain Damage with the empirical Fisher diagonal (LeCun et al. 1990):
    ``S = 1/2 W^2 * (1/T) sum_t G_t^2``, the second-order loss increase of removing a weight
    with the Hessian diagonal estimated by the mean squared batch gradient over ``T`` batches.

    With batch gradients and the weights fixed during scoring this is :class:`Taylor` divided by
    ``2T``: the same ranking in every comparison group, hence the same masks. (OBD with the
    per-example Fisher, ``sum_i g_i^2``, would differ, at one backward pass per example.)"""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(name, **kwargs)
        if self.accumulate != "sum_abs":
            raise ConfigError("fisher_obd averages squared gradients itself; leave scoring.accumulate at sum_abs.")

    def update(self, name: str, weight: torch.Tensor, grad: torch.Tensor | None) -> None:
        self.scores[name].addcmul_(grad, grad)

    def finalize(self, name: str, weight: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        return score.div_(max(self.batches_seen, 1)).mul_(weight.square()).mul_(0.5)
