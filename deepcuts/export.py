"""Take a pruned model away: a plain transformers folder with the masks folded in."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from deepcuts.masks import remove_masks
from deepcuts.store import write_tensors


def export_pruned(model, folder: Path) -> Path:
    """Write the encoder with ``prune.remove`` applied (pruned weights stored as exact zeros),
    loadable by ``BertModel.from_pretrained(folder)`` without DeepCuts, plus the task head."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clone = copy.deepcopy(model).cpu()
    remove_masks(clone)
    clone.bert.save_pretrained(folder)
    write_tensors(folder / "head.safetensors", {k: v for k, v in clone.head.state_dict().items()})
    (folder / "task.json").write_text(json.dumps(dict(model.task), indent=2))
    return folder


@torch.no_grad()
def zero_count(model, masks: dict[str, torch.Tensor]) -> int:
    """How many entries that a mask prunes are non-zero in ``model`` (must be 0)."""
    params = dict(model.named_parameters())
    total = 0
    for name, mask in masks.items():
        p = params.get(name)
        if p is None:  # still reparametrised: the effective weight is orig * mask
            module_name, _, pname = name.rpartition(".")
            module = model.get_submodule(module_name)
            p = getattr(module, f"{pname}_orig") * getattr(module, f"{pname}_mask")
        total += int(torch.count_nonzero(p.detach().cpu()[~mask.bool()]))
    return total
