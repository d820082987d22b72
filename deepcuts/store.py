"""Files a run writes, always atomically, and the content-addressed stage cache.

A file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a killed job never leaves a ``results.json`` or a mask file that looks finished.

The cache holds shared stages (the dense fine-tune, the scores): an entry's key is the hash of
exactly the config that determines it, so a changed config can never hit a stale entry. An entry is
a folder with a ``manifest.json`` holding the sha256 of every file; one that fails the check is
rebuilt, not used. A lock file makes parallel jobs build an entry once and wait for each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def config_key(spec: dict) -> str:
    """A stable hash of a (JSON-able) config dict."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class StageCache:
    """``root/<stage>/<key>/`` folders of files, built once under a lock and checked on read."""

    def __init__(self, root: str | Path | None, enabled: bool = True) -> None:
        self.root = Path(root) if root else None
        self.enabled = enabled and self.root is not None
        self.hits: list[str] = []
        self.builds: list[str] = []

    def _valid(self, entry: Path) -> bool:
        manifest = entry / "manifest.json"
        if not manifest.is_file():
            return False
        try:
            files = json.loads(manifest.read_text())["files"]
            return all(_sha256(entry / name) == digest for name, digest in files.items())
        except (OSError, ValueError, KeyError):
            return False

    def lookup(self, stage: str, spec: dict) -> Path | None:
        """A complete entry for ``spec``, or None (never builds)."""
        if not self.enabled:
            return None
        entry = self.root / stage / config_key({"stage": stage, **spec})
        return entry if self._valid(entry) else None

    def get_or_build(
        self, stage: str, spec: dict, build: Callable[[Path], None], work: Path | None = None
    ) -> Path:
        """The folder of a complete entry; ``build(tmp_folder)`` writes its files when missing.

        With the cache off, ``build`` writes into ``work`` and that folder is returned.
        """
        if not self.enabled:
            assert work is not None, "a work folder is needed when the cache is off"
            work.mkdir(parents=True, exist_ok=True)
            build(work)
            self.builds.append(stage)
            return work
        key = config_key({"stage": stage, **spec})
        entry = self.root / stage / key
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(entry.parent / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second job waits here, then finds the entry
            if self._valid(entry):
                log.info("cache hit: %s/%s", stage, key)
                self.hits.append(stage)
                return entry
            if entry.exists():
                log.warning("cache entry %s is incomplete or corrupted: rebuilding it", entry)
                shutil.rmtree(entry)
            tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}."))
            try:
                (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
                build(tmp)
                files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
                (tmp / "manifest.json").write_text(json.dumps({"files": files}, indent=2))
                os.replace(tmp, entry)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            self.builds.append(stage)
            return entry
