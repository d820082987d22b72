"""How much disk the stage cache uses, and pruning it.

The cache (``cache_dir``, default ``outputs/cache``) is content-addressed: deleting an entry never
gives a wrong result, only a rebuild the next time a run needs it. Entries are ``<stage>/<key>/``
folders (the stages of ``deepcuts.pipeline.stages`` and finished ``runs``) beside a ``<key>.lock``
file (held while it is built) and a ``<key>.use`` file (held shared by every job that reads it,
for the job's whole duration), and tokenised data sets under ``data/``. An entry is pruned only
when it can take both exclusively, so a job building or using it is never disturbed (the entry
is skipped instead).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from pathlib import Path

STAGES = ("dense", "teacher", "rewind", "scores", "runs", "data")  # tests check it against the stage classes


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def entries(root: Path, stage: str) -> list[Path]:
    """The entry folders of a stage (temporary build folders, ``.<key>.*``, excluded)."""
    folder = Path(root) / stage
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def usage(root: Path) -> list[dict]:
    """One row per stage: entries, bytes, and the oldest / newest entry's age in days."""
    now, rows = time.time(), []
    for stage in STAGES:
        found = entries(root, stage)
        ages = [(now - p.stat().st_mtime) / 86400 for p in found]
        rows.append({"stage": stage, "entries": len(found), "bytes": sum(_size(p) for p in found),
                     "oldest_days": max(ages) if ages else None, "newest_days": min(ages) if ages else None})
    return rows


def prune(root: Path, stages: tuple[str, ...] = STAGES, older_than_days: float = 0.0,
          dry_run: bool = False) -> list[tuple[Path, int]]:
    """Delete the entries of ``stages`` built more than ``older_than_days`` ago (0: all), with
    their lock files, and leftover temporary folders of killed builds (over a day old); returns
    ``(path, bytes)`` of what was (or, ``dry_run``, would be) deleted. An entry whose lock is held
    is skipped."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown cache stage(s) {sorted(unknown)}; use {', '.join(STAGES)}.")
    cutoff, removed = time.time() - older_than_days * 86400, []
    for stage in stages:
        folder = Path(root) / stage
        if not folder.is_dir():
            continue
        for tmp in folder.glob(".*"):  # a build killed before it published its entry
            if tmp.is_dir() and tmp.stat().st_mtime < time.time() - 86400:
                removed.append((tmp, _size(tmp)))
                if not dry_run:
                    shutil.rmtree(tmp, ignore_errors=True)
        for entry in entries(root, stage):
            if entry.stat().st_mtime > cutoff:
                continue
            size = _size(entry)
            if dry_run:
                removed.append((entry, size))
                continue
            locks = [folder / f"{entry.name}.use", folder / f"{entry.name}.lock"]
            with contextlib.ExitStack() as held:
                try:
                    for path in locks:
                        fh = held.enter_context(open(path, "a"))
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a job is building or using it now
                shutil.rmtree(entry, ignore_errors=True)
                removed.append((entry, size))
                for path in locks:  # still locked: a waiting reader sees its file gone and retries
                    path.unlink(missing_ok=True)
    return removed
