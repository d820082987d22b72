"""Comparison report over finished runs (the paper's Figures 6-8 and their table).

    python experiments/report.py RUN_FOLDER [RUN_FOLDER ...] [--out OUT_FOLDER] [--baselines A,B]
                                 [--pair-by KEY=REFERENCE ...]

Folders are searched recursively for ``results.json``; ``--out`` defaults to ``FIRST/report``.
Writes report.csv (summary), paired.csv (paired differences against the baselines), timing.csv,
report.md, report.html and one plot per data set; ``--pair-by structure.kind=none`` also pairs runs that differ only in that
config key against its reference value, by seed (paired_structure.kind.csv and a report section).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from deepcuts.analysis.compare import DEFAULT_BASELINES, PairByError  # noqa: E402
from deepcuts.analysis.render.report import write_report  # noqa: E402


def _pair(text: str) -> tuple[str, str]:
    key, sep, reference = text.partition("=")
    if not sep or not key.strip() or not reference.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=REFERENCE, e.g. structure.kind=none, "
                                         f"got {text!r}")
    return key.strip(), reference.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, metavar="RUN_FOLDER",
                        help="a run or sweep folder, searched recursively")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.csv, paired.csv, report.md and <data>.png go "
                             "(default: FIRST/report)")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES),
                        help="comma-separated strategies every other strategy is paired against "
                             f"(default: {','.join(DEFAULT_BASELINES)})")
    parser.add_argument("--pair-by", action="append", type=_pair, default=[],
                        metavar="KEY=REFERENCE",
                        help="also pair runs that differ only in config key KEY with those having "
                             "KEY=REFERENCE, by seed (e.g. structure.kind=none; repeatable): "
                             "writes paired_<KEY>.csv and a report section")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to W&B")
    parser.add_argument("--no-masks", action="store_true",
                        help="skip the mask-overlap heatmaps in report.html (they read every mask file)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")  # exit status 2
    out = args.out or args.folders[0] / "report"
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    try:
        written = write_report(args.folders, out, baselines=baselines, masks=not args.no_masks,
                               pair_by=args.pair_by)
    except PairByError as err:
        parser.error(f"--pair-by: {err}")  # exit status 2, nothing written
    tables = [written["csv"], written["paired_csv"], *written["paired_across_csv"].values()]
    print(f"wrote {', '.join(map(str, tables))}, {written['markdown']} and "
          f"{len(written['plots'])} plot(s)")
    if args.wandb:
        from deepcuts.analysis.render.wandb import log_folder

        print(f"logged to W&B: {log_folder(out, 'report')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
