"""Files a run writes, always atomically, and the content-addressed stage cache.

A file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a killed job never leaves a ``results.json`` or a mask file that looks finished.

The cache holds shared stages (the dense fine-tune, the scores, finished runs): an entry's key is
the hash of its spec (``deepcuts.cache.keys``: the config, code, library versions and initial weights
that determine it), so a change can never hit a stale entry; a miss logs how the nearest entry's
spec differs. An entry is a folder with a ``manifest.json`` holding the sha256 of every file (in
subfolders too); one that fails the check is rebuilt, not used. A lock file makes parallel jobs
build an entry once; where the lock is not honoured (NFS), two jobs may both build it, and the
second to finish keeps the first one's entry when it is valid and discards its own.
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

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from deepcuts.cache.files import atomic_path, write_json  # noqa: F401 - part of this module's API
from deepcuts.config.nested import flatten

log = logging.getLogger(__name__)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def tensor_metadata(path: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header."""
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def config_key(spec: dict) -> str:
    """A stable hash of a (JSON-able) config dict."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locked_open(path: Path, kind: int):
    """``path`` opened with an ``flock`` of ``kind`` held. A job that was waiting on a lock file
    removed meanwhile (by its holder, on release or when pruning) takes the lock again on the
    file now at ``path``."""
    while True:
        fh = open(path, "a")
        fcntl.flock(fh, kind)
        try:
            if os.path.samestat(os.fstat(fh.fileno()), os.stat(path)):
                return fh
        except FileNotFoundError:
            pass
        fh.close()


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; the file is removed on release, so no stale lock files
    pile up beside the entries."""
    fh = locked_open(path, fcntl.LOCK_EX)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # still holding the lock: a waiter sees it gone and retries
        fh.close()


class StageCache:
    """``root/<stage>/<key>/`` folders of files, built once under a lock and checked on read."""

    def __init__(self, root: str | Path | None, enabled: bool = True) -> None:
        self.root = Path(root) if root else None
        self.enabled = enabled and self.root is not None
        self.hits: list[str] = []
        self.builds: list[str] = []
        self._in_use: list = []  # shared locks on the entries this job reads, held until close()

    def __enter__(self) -> StageCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the entries this job used (the cache pruner may delete them again)."""
        for fh in self._in_use:
            fh.close()
        self._in_use = []

    def _hold(self, entry: Path) -> None:
        """A shared lock on ``<key>.use`` for the rest of the job: the pruner (deepcuts.cache.admin)
        takes it exclusively before deleting, so it never removes an entry a running job reads.
        Taken before the entry is checked, so an entry found valid stays there."""
        self._in_use.append(locked_open(entry.parent / f"{entry.name}.use", fcntl.LOCK_SH))

    def _valid(self, entry: Path) -> bool:
        manifest = entry / "manifest.json"
        if not manifest.is_file():
            return False
        try:
            files = json.loads(manifest.read_text())["files"]
            return all(file_sha256(entry / name) == digest for name, digest in files.items())
        except (OSError, ValueError, KeyError):
            return False

    def _explain_miss(self, stage: str, spec: dict) -> None:
        """Log why no entry matched: the spec keys in which the nearest cached entry differs."""
        want = flatten(json.loads(json.dumps(spec, default=str)))
        best: tuple[int, list[str]] | None = None
        for path in (self.root / stage).glob("*/spec.json"):
            try:
                have = flatten(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
            diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            if best is None or len(diff) < best[0]:
                best = (len(diff), diff)
        if best is None:
            log.info("building %s: no cached %s entry yet", stage, stage)
        else:
            shown = ", ".join(best[1][:6]) + (f" (+{len(best[1]) - 6} more)" if len(best[1]) > 6 else "")
            log.info("building %s: the nearest cached entry differs in %s", stage, shown)

    def lookup(self, stage: str, spec: dict) -> Path | None:
        """A complete entry for ``spec``, or None (never builds)."""
        if not self.enabled:
            return None
        entry = self.root / stage / config_key({"stage": stage, **spec})
        if not entry.is_dir():
            return None
        self._hold(entry)
        return entry if self._valid(entry) else None

    def peek(self, stage: str, spec: dict, name: str) -> Path | None:
        """The file ``name`` of ``spec``'s entry if it exists, unchecked (no hashing of the entry's
        other files): for bookkeeping such as the time a stage took, never for results."""
        if not self.enabled:
            return None
        path = self.root / stage / config_key({"stage": stage, **spec}) / name
        return path if path.is_file() else None

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
        self._hold(entry)
        with exclusive_lock(entry.parent / f"{key}.lock"):  # a second job waits here, then finds the entry
            if self._valid(entry):
                log.info("cache hit: %s/%s", stage, key)
                self.hits.append(stage)
                return entry
            if entry.exists():
                log.warning("cache entry %s is incomplete or corrupted: rebuilding it", entry)
                shutil.rmtree(entry, ignore_errors=True)
            else:
                self._explain_miss(stage, spec)
            tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}."))
            try:
                (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
                build(tmp)
                files = {
                    str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
                }
                (tmp / "manifest.json").write_text(json.dumps({"files": files}, indent=2))
                self._publish(tmp, entry)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            self.builds.append(stage)
            return entry

    def _publish(self, tmp: Path, entry: Path) -> None:
        """Move a built entry into place. Another job may have published the same entry since
        (the lock is not honoured on some shared file systems): keep a valid one, discard ours."""
        try:
            os.replace(tmp, entry)
            return
        except OSError:  # ENOTEMPTY / EEXIST: an entry appeared while we built ours
            if self._valid(entry):
                log.info("cache entry %s was built by another job meanwhile: using it", entry.name)
                return
        shutil.rmtree(entry, ignore_errors=True)  # the other job's entry is broken: replace it
        os.replace(tmp, entry)
