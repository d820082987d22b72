"""Evaluate a saved pruned model on a GLUE-format file:
``python predict.py outputs/.../pruned_model dev.tsv [--out predictions.tsv] [--batch-size N]``."""

from __future__ import annotations

import argparse
import os
import sys

from deepcuts.config.errors import ConfigError

DESCRIPTION = """\
Evaluate a saved pruned model on a GLUE-format file (dev, or a test file with or without labels):
print the task's metrics when the file has the label column, and write the predictions as TSV.
EXPORT_FOLDER is the pruned_model folder of a run made with save_model=true; FILE is read with
the settings of the run's task (columns, header), kept in EXPORT_FOLDER/data.json."""

EPILOG = """\
The predictions TSV has the columns index (the example's row in FILE, from 0), prediction (the
score, or the class id), logit_0..logit_K-1 (classification) and label (when FILE has labels).
Exit code 2 on bad input (missing folder or file, missing columns, unreadable labels)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="predict.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_folder", metavar="EXPORT_FOLDER", help="a run's pruned_model folder")
    parser.add_argument("file", metavar="FILE", help="a GLUE-format .tsv file of the run's task")
    parser.add_argument("--out", help="where to write the predictions TSV (default: "
                        "<task>-<FILE stem>.predictions.tsv in the current folder, e.g. "
                        "stsb-dev.predictions.tsv); written atomically")
    parser.add_argument("--batch-size", type=int, help="examples per forward pass (default: the "
                        "task's eval_batch_size, 128)")
    parser.add_argument("--limit", type=int, help="only the first N examples of FILE")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--no-labels", action="store_true",
                        help="ignore FILE's label column: predictions only, no metrics")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import datasets
    import transformers

    from deepcuts.models.predict import format_metrics, predict

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*will save all targets and predictions")
    try:
        result = predict(args.export_folder, args.file, out=args.out, batch_size=args.batch_size,
                         has_labels=False if args.no_labels else None, limit=args.limit,
                         device=args.device)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result['task']}: {result['n']} examples from {args.file}")
    if result["has_labels"]:
        print(format_metrics(result["metrics"]))
    else:
        why = "labels ignored (--no-labels)" if args.no_labels else f"no {result['label_column']!r} column"
        print(f"{why}: predictions only, no metrics")
    print(f"predictions: {result['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
