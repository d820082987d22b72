"""Take a pruned model away: a transformers folder with the masks folded in (or, structured, the
smaller model).

The folder holds the encoder (``config.json`` + weights; a masked one loads with
``AutoModel.from_pretrained(folder)`` without DeepCuts, whatever the architecture; a structured one,
whose per-layer sizes no transformers config expresses, only with :func:`load_exported`), ``head.safetensors`` (the task head's
``weight`` and ``bias``), ``task.json`` (the task: type, labels or score range) and ``head.json``
(how the head reads the encoder: ``arch``, ``backbone``, ``pooling``, ``inputs``, ``layout``),
the tokenizer's files and ``data.json`` (how the task's GLUE-format files are read: columns,
header, metrics), so ``predict.py`` needs the folder and a file only. :func:`load_exported` puts
encoder and head together again.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from deepcuts.cache.store import read_tensors, write_tensors
from deepcuts.pruning.masks import detach_masked_views, remove_masks

HEAD_FILE, TASK_FILE, HEAD_SPEC_FILE, DATA_FILE = "head.safetensors", "task.json", "head.json", "data.json"
STRUCTURE_KEY = "deepcuts_structure"  # config.json: per-layer heads_kept, neurons_kept, head_size
DATA_KEYS = ("name", "folder", "eval_file", "text_columns", "label_column", "header", "columns", "task", "metrics",
             "monitor", "monitor_mode", "max_length", "eval_batch_size", "precision")  # precision: the run's


def export_pruned(model, folder: Path, tokenizer=None, data: dict | None = None) -> Path:
    """Write the encoder with ``prune.remove`` applied (pruned weights stored as exact zeros;
    masked models load with ``AutoModel.from_pretrained(folder)``, structured ones with
    :func:`load_exported`), plus the task head and what is needed to apply it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    detach_masked_views(model)  # a masked weight computed with grad cannot be deep-copied
    clone = copy.deepcopy(model).cpu()
    remove_masks(clone)
    clone.encoder.save_pretrained(folder)
    write_tensors(folder / HEAD_FILE, clone.head.state_dict())
    (folder / TASK_FILE).write_text(json.dumps(dict(model.task), indent=2))
    spec = {"arch": model.arch, "backbone": model.backbone, "pooling": model.pooling,
            "inputs": list(model.inputs), "layout": dict(model.layout)}
    (folder / HEAD_SPEC_FILE).write_text(json.dumps(spec, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if data is not None:  # the data YAML's reading settings (resolved), for predict.py
        (folder / DATA_FILE).write_text(json.dumps({k: data[k] for k in DATA_KEYS if k in data}, indent=2))
    return folder


class ExportedModel(nn.Module):
    """An exported encoder + head: ``forward`` gives what the GlueModel gave (class logits, or the
    regression score in the task's range)."""

    def __init__(self, encoder: nn.Module, head: nn.Linear, task: dict, spec: dict) -> None:
        super().__init__()
        self.encoder, self.head, self.task, self.spec = encoder, head, dict(task), dict(spec)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        from deepcuts.models.module import pool, task_output

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        output = self.encoder(**{k: given[k] for k in self.spec["inputs"] if given[k] is not None})
        return task_output(self.head(pool(output, attention_mask, self.spec["pooling"])), self.task)


def _load_structured(folder: Path, config, structure: dict, spec: dict, kwargs: dict) -> nn.Module:
    """A structured export: the full-size encoder built from its config (no download), shrunk to
    the recorded per-layer head counts and FFN widths, then its saved weights loaded (strict)."""
    from transformers import AutoModel

    from deepcuts.pruning.structured import shrink_to

    encoder = AutoModel.from_config(config, dtype=torch.float32, **kwargs)
    prefix = spec["backbone"] + "."
    layout = {k: v.removeprefix(prefix) for k, v in spec["layout"].items()}
    shrink_to(encoder, structure, layout, config.num_attention_heads)
    index = folder / "model.safetensors.index.json"  # sharded: the index names the shards
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state = {}
    for name in files:
        state.update(read_tensors(folder / name))
    encoder.load_state_dict(state, strict=True)
    return encoder


def load_exported(folder: Path) -> ExportedModel:
    """An export folder back as a model, in eval mode: the one call for any export, masked or
    structured (whose heads and neurons were removed: ``AutoModel.from_pretrained`` cannot load
    it, its config's sizes are the original ones). A folder written before ``head.json``
    existed is a BERT with its pooler (the only architecture then)."""
    from transformers import AutoConfig, AutoModel

    from deepcuts.models.encoders import model_class_for, pooler_kwargs

    folder = Path(folder)
    spec_file = folder / HEAD_SPEC_FILE
    spec = (json.loads(spec_file.read_text()) if spec_file.is_file() else
            {"arch": "bert", "backbone": "bert", "pooling": "pooler",
             "inputs": ["input_ids", "attention_mask", "token_type_ids"]})
    config = AutoConfig.from_pretrained(folder)
    kwargs = pooler_kwargs(model_class_for(config), spec["pooling"])
    structure = getattr(config, STRUCTURE_KEY, None)
    if structure is None:
        encoder = AutoModel.from_pretrained(folder, config=config, dtype=torch.float32, **kwargs)
    else:  # heads and neurons removed: per-layer shapes no transformers config can express
        encoder = _load_structured(folder, config, structure, spec, kwargs)
    state = read_tensors(folder / HEAD_FILE)
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    task = json.loads((folder / TASK_FILE).read_text())
    return ExportedModel(encoder, head, task, spec).eval()
