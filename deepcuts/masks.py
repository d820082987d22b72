"""Scores -> exact top-k masks, and applying / folding them with ``torch.nn.utils.prune``.

Mask building sees score tensors only; it knows nothing of strategies. Counts are exact:
a layer-wise mask keeps ``round(f * n)`` entries of each tensor, a global mask keeps
``round(f * P)`` entries over all tensors. Ties at the threshold are broken by position (lower
flat index kept first), so the same scores always give the same masks. ``torch.kthvalue`` is used
instead of a sort or ``torch.quantile`` (which refuses inputs above 16M elements).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune

from deepcuts.errors import ConfigError


def _check_finite(name: str, score: torch.Tensor) -> None:
    if not torch.isfinite(score).all():
        bad = int((~torch.isfinite(score)).sum())
        raise FloatingPointError(
            f"scoring produced {bad} NaN/inf values in the score of {name!r}; the masks cannot be "
            "built. Check the dense model's loss (a diverged fine-tune) or the strategy's settings."
        )


def topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask keeping exactly the ``k`` largest entries; ties kept in index order."""
    flat = score.reshape(-1)
    n = flat.numel()
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} entries")
    if k == n:
        return torch.ones_like(score, dtype=torch.bool)
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    threshold = torch.kthvalue(flat, n - k + 1).values  # the k-th largest value
    keep = flat > threshold
    missing = k - int(keep.sum())
    if missing:
        ties = torch.nonzero(flat == threshold).squeeze(1)[:missing]
        keep[ties] = True
    return keep.view_as(score)


def keep_count(fraction: float, n: int) -> int:
    if not 0 < fraction <= 1:
        raise ConfigError(f"keep_fraction must be in (0, 1], got {fraction}.")
    return min(n, int(math.floor(fraction * n + 0.5)))


def layer_masks(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Each tensor keeps ``round(fraction * numel)`` of its own entries."""
    masks = {}
    for name, score in scores.items():
        _check_finite(name, score)
        masks[name] = topk_mask(score, keep_count(fraction, score.numel()))
    return masks


def global_masks(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """One threshold over all tensors; exactly ``round(fraction * total)`` entries kept."""
    for name, score in scores.items():
        _check_finite(name, score)
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    keep = topk_mask(flat, keep_count(fraction, flat.numel()))
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = keep[start : start + score.numel()].view_as(score)
        start += score.numel()
    return masks


def build_masks(
    scores: dict[str, torch.Tensor], fraction: float, scope: str
) -> dict[str, torch.Tensor]:
    if scope == "layer":
        return layer_masks(scores, fraction)
    if scope == "global":
        return global_masks(scores, fraction)
    raise ConfigError(f"strategy scope must be 'layer' or 'global', got {scope!r}.")


def _split(name: str) -> tuple[str, str]:
    module_name, _, param = name.rpartition(".")
    return module_name, param


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach masks with ``prune.custom_from_mask``: the effective weight is ``orig * mask`` in
    every forward, so pruned entries get no gradient and stay zero whatever the optimiser does.
    The stored ``*_orig`` values are zeroed too, so nothing pruned survives in a checkpoint."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module_name, param = _split(name)
        module = modules.get(module_name)
        if module is None or not hasattr(module, param):
            raise ConfigError(f"mask {name!r} names no parameter of the model.")
        current = getattr(module, param)
        if tuple(current.shape) != tuple(mask.shape):
            raise ConfigError(
                f"mask {name!r} has shape {tuple(mask.shape)} but the parameter has "
                f"{tuple(current.shape)}: the masks come from a different model."
            )
        mask = mask.to(device=current.device, dtype=current.dtype)
        if prune.is_pruned(module) and hasattr(module, f"{param}_mask"):
            prune.remove(module, param)
        prune.custom_from_mask(module, param, mask)
        with torch.no_grad():
            getattr(module, f"{param}_orig").mul_(mask)


def remove_masks(model: nn.Module) -> None:
    """Fold masks into plain parameters (``prune.remove``): for export only."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to a model, keyed by parameter name, as boolean tensors."""
    return {
        name[: -len("_mask")]: buf.detach().bool().cpu()
        for name, buf in model.named_buffers()
        if name.endswith("_mask")
    }


def sparsity_rows(masks: dict[str, torch.Tensor]) -> list[dict]:
    """Per-tensor kept counts and fractions (the rows of ``sparsity.csv``)."""
    rows = []
    for name, mask in masks.items():
        kept = int(mask.sum())
        rows.append(
            {
                "parameter": name,
                "numel": mask.numel(),
                "kept": kept,
                "kept_fraction": kept / mask.numel(),
            }
        )
    return rows
