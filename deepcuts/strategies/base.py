"""The scoring callback and the hook context managers every gradient strategy shares.

A :class:`Strategy` is a Lightning callback attached to a scoring pass (see ``deepcuts.scoring.passes``):
the pass runs forward/backward on each batch with no optimiser step, and the callback turns the
gradients (and captured activations) into one score buffer per prunable tensor, accumulated in
place. Hooks are registered in context managers and removed on exit, also on an exception.

What a strategy may declare (class attributes) and override, from the simplest to the most
involved: ``data_free_scores`` (no data: magnitude, random); ``batch_term`` (a signed per-batch
term, accumulated as ``sum_t |term|``: most gradient scores); ``update`` (any other accumulator,
e.g. a sum of squares) and ``finalize`` (a last step per tensor, e.g. a square root or a mean);
``needs_grad = False`` (a forward-only pass: Wanda); ``passes`` with ``pass_context`` (several
passes per batch, each under its own context: SmoothGrad's noise, Integrated Gradients' scaled
weights); ``at = "pretrained"`` (scored before fine-tuning: SNIP); ``from_dense = True`` (scores
traced during the dense fine-tune, no scoring pass: movement); ``units`` (a score per output unit of
a Linear, module name -> ``[out_features]``, for structured pruning's ``group_score: native``:
Grad-CAM's channel weight). The comparison group is the YAML's
``scope``: ``layer`` (within each tensor), ``row`` (within each output row) or ``global``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from torch import nn

from deepcuts.config.errors import ConfigError

ACCUMULATE = ("sum_abs", "abs_of_mean")
SCOPES = ("layer", "row", "global")  # comparison groups: each tensor, each output row, all tensors
AT = ("finetuned", "pretrained")


def module_of(model: nn.Module, param_name: str) -> tuple[str, nn.Module]:
    module_name = param_name.rpartition(".")[0]
    return module_name, model.get_submodule(module_name)


@contextlib.contextmanager
def forward_hooks(modules: dict[str, nn.Module], make_hook) -> Iterator[None]:
    """Register ``make_hook(name)`` as a forward hook on every module; remove all on exit."""
    handles = [m.register_forward_hook(make_hook(name)) for name, m in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Strategy(pl.Callback):
    """Base class: a score per prunable tensor, from weights alone or from a scoring pass.

    Subclasses that need data implement :meth:`batch_term` (the signed per-batch product whose
    absolute value is accumulated) and may add hooks in :meth:`hooks`.
    """

    needs_data = True
    needs_grad = True  # False: a forward-only scoring pass (no backward)
    at = "finetuned"  # the state scored by default: finetuned (after the dense fine-tune) or pretrained
    from_dense = False  # True: scores traced during the dense fine-tune; no scoring pass
    default_batches = 1000
    passes = 1  # forward/backward passes per batch (eta for SmoothGrad, m for Integrated Gradients)
    control = False  # a sanity control (random, shuffled): reported apart from the methods
    of: str | None = None  # a control that reuses another strategy's scores names it here
    unit_scores = False  # True: fills ``units`` (per output unit) for structure.group_score=native

    def __init__(
        self, name: str, scope: str = "layer", accumulate: str = "sum_abs", seed: int = 0
    ) -> None:
        if scope not in SCOPES:
            raise ConfigError(f"strategy.scope must be one of {SCOPES}, got {scope!r}.")
        if accumulate not in ACCUMULATE:
            raise ConfigError(f"scoring.accumulate must be one of {ACCUMULATE}, got {accumulate!r}.")
        self.name, self.scope, self.accumulate, self.seed = name, scope, accumulate, seed
        self.scores: dict[str, torch.Tensor] = {}
        self.units: dict[str, torch.Tensor] = {}  # optional per-output-unit scores (see CAM)
        self.params: dict[str, nn.Parameter] = {}
        self.batches_seen = 0
        self._stack: contextlib.ExitStack | None = None

    # -- data-free strategies override this -------------------------------------------------
    def data_free_scores(self, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def mask_transform(self):
        """A control's change to the masks built from the scores (e.g. shuffled); None: as built."""
        return None

    # -- gradient strategies override these -------------------------------------------------
    def hooks(self, model: nn.Module, params: dict[str, nn.Parameter]) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def before_batch(self, model: nn.Module, batch: dict) -> None:
        """Called before the scoring passes of a batch (e.g. to note the attention mask)."""

    def pass_context(self, params: dict[str, nn.Parameter], k: int) -> contextlib.AbstractContextManager:
        """The context the ``k``-th pass over a batch runs in (0 <= k < passes)."""
        return contextlib.nullcontext()

    def batch_term(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The signed per-batch score of one tensor, e.g. ``W * G`` (may reuse ``grad``)."""
        raise NotImplementedError

    def update(self, name: str, weight: torch.Tensor, grad: torch.Tensor | None) -> None:
        """Fold one batch into ``self.scores[name]``: ``sum_t |term|`` (or ``sum_t term`` for
        ``abs_of_mean``). ``grad`` is the batch gradient, averaged over the passes (None for a
        forward-only strategy)."""
        term = self.batch_term(name, weight, grad)
        self.scores[name].add_(term.abs_() if self.accumulate == "sum_abs" else term)

    def finalize(self, name: str, weight: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """The last step on a tensor's accumulated score (default: none)."""
        return score

    # -- Lightning callback hooks ------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self.params = pl_module.prunable
        self.scores = {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name, p in params.items()}
        self.units = {}
        self.batches_seen = 0
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.hooks(pl_module.model, params))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before_batch(pl_module.model, batch)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for name, p in pl_module.prunable.items():
            grad = None
            if self.needs_grad:
                if p.grad is None:
                    raise RuntimeError(f"no gradient reached {name!r} in the scoring pass.")
                grad = p.grad.div_(self.passes) if self.passes > 1 else p.grad
            self.update(name, p.detach(), grad)
        self.batches_seen += 1

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        self._close()
        if self.accumulate == "abs_of_mean":
            for score in [*self.scores.values(), *self.units.values()]:
                score.abs_().div_(max(self.batches_seen, 1))
        self.scores = {name: self.finalize(name, self.params[name].detach(), s) for name, s in self.scores.items()}

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()

    def _close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
