"""Smooth-Cut (LayerSmoothGrad) and its CAM combinations: gradients averaged over eta noisy passes,
with Gaussian noise added to the output of every prunable Linear through forward hooks."""

from __future__ import annotations

import contextlib

import torch

from deepcuts.config.errors import ConfigError
from deepcuts.strategies.base import Strategy, forward_hooks, module_of
from deepcuts.strategies.gradcam import ActivationMeans


class OutputNoise:
    """Forward hooks adding ``N(0, sigma^2)`` to a module's output (the paper's eq. 8), drawn from
    a generator of its own so the training RNG is untouched and the same seed gives the same noise.

    Token outputs ``[B, L, H]`` get noise at real tokens only: padded positions never reach the
    loss, and drawing for them cost up to a fifth of a SmoothGrad pass (benchmarks, S2)."""

    def __init__(self, sigma: float, seed: int) -> None:
        self.sigma, self.seed = float(sigma), seed
        self.enabled = True
        self.generators: dict[torch.device, torch.Generator] = {}
        self.real: tuple[torch.Tensor, ...] | None = None  # (rows, cols) of real tokens
        self.real_shape: torch.Size | None = None

    def set_batch(self, batch: dict) -> None:
        """Find the real tokens once per batch (one host sync), not in every hook call."""
        mask = batch.get("attention_mask")
        self.real = self.real_shape = None
        if mask is not None and mask.dim() == 2 and not bool(mask.all()):
            self.real, self.real_shape = mask.bool().nonzero(as_tuple=True), mask.shape

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device]

    def make_hook(self, module_name: str):
        def hook(module, inputs, output):
            if not self.enabled or self.sigma == 0:
                return None
            g = self._generator(output.device)
            if output.dim() == 3 and self.real is not None and output.shape[:2] == self.real_shape:
                shape = (self.real[0].numel(), output.shape[-1])
                noise = torch.randn(shape, generator=g, device=output.device, dtype=output.dtype)
                return output.index_put(self.real, noise.mul_(self.sigma), accumulate=True)
            noise = torch.randn(output.shape, generator=g, device=output.device, dtype=output.dtype)
            return output + self.sigma * noise

        return hook


class SmoothGrad(Strategy):
    """Smooth-Cut (LayerSmoothGrad): ``S = sum_t |W * G~_t|`` with
    ``G~_t = (1/eta) sum_k dL_t^(k)/dW`` over ``eta`` passes of batch ``t``, each with fresh noise
    ``N(0, sigma^2)`` on every prunable Linear's output (paper eq. 9)."""

    default_batches = 100

    def __init__(self, name: str, eta: int = 10, sigma: float = 1e-3, **kwargs) -> None:
        super().__init__(name, **kwargs)
        if int(eta) <= 0:
            raise ConfigError(f"strategy.eta (noisy passes per batch) must be >= 1, got {eta}.")
        if float(sigma) < 0:
            raise ConfigError(f"strategy.sigma (noise std) must be >= 0, got {sigma}.")
        self.passes = int(eta)
        self.noise = OutputNoise(sigma, self.seed)

    def hooks(self, model, params):
        modules = dict(module_of(model, name) for name in params)
        return forward_hooks(modules, self.noise.make_hook)

    def before_batch(self, model, batch) -> None:
        self.noise.set_batch(batch)

    def batch_term(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.mul_(weight)


class SmoothGradCAM(SmoothGrad):
    """LayerSmoothGradCAM: ``S = sum_t |W * G~_t * (a_bar_t + shift)[:, None]|``, shift 0, with
    ``a_bar_t`` from one clean (noise-free, no-grad) forward pass over batch ``t``."""

    def __init__(self, name: str, shift: float = 0.0, include_padding: bool = False, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.shift = float(shift)
        self.activations = ActivationMeans(include_padding)

    def hooks(self, model, params):
        stack = contextlib.ExitStack()
        stack.enter_context(self.activations.hooks(model, params))  # sees the clean output first
        stack.enter_context(super().hooks(model, params))
        return stack

    def before_batch(self, model, batch) -> None:
        super().before_batch(model, batch)
        self.activations.set_batch(batch)
        self.noise.enabled, self.activations.enabled = False, True
        try:
            with torch.no_grad():
                model.loss(batch)
        finally:
            self.noise.enabled, self.activations.enabled = True, False

    def batch_term(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return self.activations.weight_rows(name, grad.mul_(weight), self.shift)


class SmoothGradCAMShift(SmoothGradCAM):
    """LayerSmoothGradCAMShift: ``S = sum_t |W * G~_t * (a_bar_t + lambda)[:, None]|``, lambda 10."""

    def __init__(self, name: str, shift: float = 10.0, **kwargs) -> None:
        super().__init__(name, shift=shift, **kwargs)
