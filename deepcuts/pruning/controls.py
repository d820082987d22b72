"""Mask transforms: sanity controls (Frankle et al. 2021) that keep a method's budget but not its
choice, applied to the masks built from the compared run's own scores."""

from __future__ import annotations

import torch


class ShuffleMasks:
    """``M'_l = P_l(M_l)``: each tensor's mask permuted by a seeded random permutation ``P_l``, so
    every tensor keeps its count (the layer-wise budget a global selector chose) and only *which*
    entries are kept is lost."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def __call__(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + 30_011)
        out = {}
        for name in sorted(masks):  # a fixed order: the same seed always gives the same masks
            mask = masks[name]
            perm = torch.randperm(mask.numel(), generator=generator).to(mask.device)
            out[name] = mask.reshape(-1)[perm].view_as(mask)
        return out
