"""The prunable set, parameter counts, and compression ratio -> keep fraction.

The compression ratio follows ShrinkBench and the paper: ``c = total / non-zero`` over the whole
model, so with ``T`` total parameters, ``P`` prunable and ``N = T - P`` never pruned, keeping a
fraction ``f`` of the prunable ones gives ``c = T / (N + f P)``, i.e. ``f = (T / c - N) / P``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from deepcuts.errors import ConfigError

# bert-base-uncased with a 2-way head: the counts the paper's ratios refer to.
BERT_BASE_TOTAL = 109_483_778
BERT_BASE_PRUNABLE = 85_608_192


@dataclass(frozen=True)
class Budget:
    """How many parameters exist, how many may be pruned, and the basis the ratio refers to."""

    total: int
    prunable: int

    @property
    def unprunable(self) -> int:
        return self.total - self.prunable

    @property
    def max_ratio(self) -> float:
        """The ratio reached by pruning every prunable parameter (not reachable itself)."""
        return self.total / self.unprunable if self.unprunable else float("inf")

    def keep_fraction(self, ratio: float) -> float:
        """``f = (T/c - N) / P``; fails for a ratio the model cannot reach."""
        try:
            c = float(ratio)
        except (TypeError, ValueError):
            raise ConfigError(f"ratio must be a number such as 3 or 3.5, got {ratio!r}.") from None
        if not c > 1:
            raise ConfigError(
                f"ratio={ratio} is not a compression: it must be > 1 (total / non-zero parameters)."
            )
        f = (self.total / c - self.unprunable) / self.prunable
        if f <= 0:
            raise ConfigError(
                f"ratio={ratio} cannot be reached: with {self.unprunable:,} parameters that are never "
                f"pruned the maximum compression is {self.max_ratio:.3f} (exclusive). Choose a smaller "
                "ratio, or ratio_basis=model/bert_base to change the counts it refers to."
            )
        return min(f, 1.0)


BASES = {"bert_base": Budget(BERT_BASE_TOTAL, BERT_BASE_PRUNABLE)}


def prunable_parameters(
    model: nn.Module, include: list[str], exclude: list[str] = ()
) -> dict[str, nn.Parameter]:
    """Weights and biases of the ``nn.Linear`` modules whose names match ``include`` and no
    ``exclude`` pattern (shell-style patterns on module names, e.g. ``bert.encoder.layer.*``).

    Keys are the parameter names (``bert.encoder.layer.0.attention.self.query.weight``); pruned
    modules (``weight_orig``) are reported under their original names.
    """
    params: dict[str, nn.Parameter] = {}
    for pattern in include:
        hits = [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and fnmatch.fnmatchcase(name, pattern)
        ]
        if not hits:
            raise ConfigError(
                f"prune.include pattern {pattern!r} matches no nn.Linear module of the model. "
                "Module names look like 'bert.encoder.layer.0.attention.self.query'."
            )
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        for pname in ("weight", "bias"):
            p = getattr(module, f"{pname}_orig", None)
            if p is None:
                p = getattr(module, pname, None)
            if isinstance(p, nn.Parameter):
                params[f"{name}.{pname}"] = p
    return params


def count_parameters(model: nn.Module) -> int:
    """All parameters of the model (pruned modules count their ``*_orig`` once)."""
    return sum(p.numel() for p in model.parameters())


def model_budget(model: nn.Module, prunable: dict[str, nn.Parameter]) -> Budget:
    return Budget(count_parameters(model), sum(p.numel() for p in prunable.values()))


def budget_for(basis: str, model_budget_: Budget) -> Budget:
    """The budget a ratio refers to: the model's own counts, or a named reference model's."""
    if basis == "model":
        return model_budget_
    if basis in BASES:
        return BASES[basis]
    raise ConfigError(f"ratio_basis={basis!r} is unknown; use one of: model, {', '.join(BASES)}.")


@torch.no_grad()
def count_nonzero(model: nn.Module) -> int:
    """Non-zero entries of the *effective* parameters (weight_orig * mask for pruned modules)."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("_orig"):
                mask = getattr(module, name[: -len("_orig")] + "_mask")
                total += int(torch.count_nonzero(p * mask))
            else:
                total += int(torch.count_nonzero(p))
    return total
