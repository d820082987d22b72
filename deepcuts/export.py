"""Take a pruned model away: a plain transformers folder with the masks folded in."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from deepcuts.masks import remove_masks
from deepcuts.store import write_tensors


def export_pruned(model, folder: Path) -> Path:
    """Write the encoder with ``prune.remove`` applied (pruned weights stored as exact zeros),
    loadable by ``BertModel.from_pretrained(folder)`` without DeepCuts, plus the task head."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clone = copy.deepcopy(model).cpu()
    remove_masks(clone)
    clone.encoder.save_pretrained(folder)
    write_tensors(folder / "head.safetensors", clone.head.state_dict())
    (folder / "task.json").write_text(json.dumps(dict(model.task), indent=2))
    return folder
