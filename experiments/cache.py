"""Disk used by the stage cache, and pruning it.

    python experiments/cache.py [--cache-dir outputs/cache]                 # usage per stage
    python experiments/cache.py --prune --older-than 14 [--stage runs,scores] [--dry-run]

Entries are content-addressed: a pruned one is rebuilt when a run needs it again, never wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from deepcuts.cache.admin import STAGES, prune, usage  # noqa: E402


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DEEPCUTS_CACHE", "outputs/cache")),
                        help="the cache folder (default: $DEEPCUTS_CACHE or outputs/cache, as train.py)")
    parser.add_argument("--prune", action="store_true", help="delete entries (default: only show usage)")
    parser.add_argument("--older-than", type=float, default=0.0, metavar="DAYS",
                        help="with --prune: only entries built more than DAYS ago (default 0: all)")
    parser.add_argument("--stage", default=",".join(STAGES),
                        help=f"with --prune: comma-separated stages (default: {','.join(STAGES)})")
    parser.add_argument("--dry-run", action="store_true", help="with --prune: list, delete nothing")
    args = parser.parse_args(argv)
    if not args.cache_dir.is_dir():
        parser.error(f"no cache folder {args.cache_dir} (set --cache-dir or $DEEPCUTS_CACHE)")
    stages = tuple(s.strip() for s in args.stage.split(",") if s.strip())
    if bad := sorted(set(stages) - set(STAGES)):
        parser.error(f"unknown stage(s) {bad}; use {', '.join(STAGES)}")
    if args.prune:
        removed = prune(args.cache_dir, stages, args.older_than, args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(removed)} entries, {_mb(sum(b for _, b in removed))}")
    for row in usage(args.cache_dir):
        age = "" if row["entries"] == 0 else f", built {row['newest_days']:.1f}-{row['oldest_days']:.1f} days ago"
        print(f"{row['stage']:>7}: {row['entries']:4d} entries, {_mb(row['bytes']):>10}{age}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
