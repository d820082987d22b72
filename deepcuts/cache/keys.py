"""The content a config cannot see, for cache keys: library versions, data files, initial weights.

The settings part of a key is the stage's own fields (:mod:`deepcuts.pipeline.stage`) and the
code part the import closure of the code it runs (:mod:`deepcuts.cache.code`); nothing here is
bumped by hand.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import torch

from deepcuts.cache.store import file_sha256

LIBRARIES = ("torch", "transformers", "tokenizers", "pytorch-lightning", "datasets", "torchmetrics", "numpy")


def library_versions() -> dict[str, str | None]:
    """The installed versions of the libraries whose numerics a fine-tune depends on."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state dict (the model's initial state)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:24]


def files_sha256(folder: Path, names: list[str]) -> dict[str, str | None]:
    """The sha256 of each named file in ``folder`` (None when absent): edited data never hits an
    old entry, and a copy of the same files (another machine, another mtime) still does."""
    return {name: file_sha256(folder / name) if (folder / name).is_file() else None for name in names}
