"""Recovery table (issue 15): each recovery recipe against the single shot, paired by seed.

    python experiments/recovery_table.py RUN_DIR [RUN_DIR ...] --out DIR
                                         [--reference single_shot] [--target cola=0.85 ...]

Run folders are searched recursively for results.json (+ the config.yaml beside it); one row per
data x model x ratio x strategy x recipe (config ``recipe_name``, or a label from results.json's
``recipe``): seeds, pruned dev metric (mean, 95% t-interval), dense mean, % of dense, the paired
difference to the reference recipe, masked epochs, wall time, and with ``--target DATA=FRACTION``
whether the mean % of dense reaches it. Writes DIR/recovery.md and DIR/recovery.csv (atomically)
and prints the Markdown. Exit status 2 (nothing written) when no run is found, the reference
recipe has no run, or a target is malformed; folders without results.json are skipped with a
warning. See deepcuts/analysis/recovery.py (the table) and
deepcuts/analysis/render/recovery.py (the files).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from deepcuts.analysis.recovery import DEFAULT_REFERENCE, RecoveryError, parse_target  # noqa: E402
from deepcuts.analysis.render.recovery import write_recovery  # noqa: E402


def _target(text: str) -> tuple[str, float]:
    try:
        return parse_target(text)
    except RecoveryError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, metavar="RUN_DIR",
                        help="a run or sweep folder, searched recursively")
    parser.add_argument("--out", type=Path, required=True,
                        help="where recovery.md and recovery.csv go")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE,
                        help="the recipe_name every other recipe is paired against "
                             f"(default: {DEFAULT_REFERENCE})")
    parser.add_argument("--target", action="append", type=_target, default=[],
                        metavar="DATA=FRACTION",
                        help="the fraction of the dense metric to keep, e.g. cola=0.85 "
                             "(repeatable): adds a 'target met' column")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    targets = dict(args.target)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    command = "python experiments/recovery_table.py " + shlex.join(argv)
    try:
        written = write_recovery(args.folders, args.out, reference=args.reference,
                                 targets=targets, command=command)
    except RecoveryError as err:
        parser.error(str(err))  # exit status 2, nothing written
    print(f"wrote {written['markdown']} and {written['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
