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
--runtime onnx runs EXPORT_FOLDER/model.onnx (python -m deepcuts.export --onnx EXPORT_FOLDER, or a
run with save_model=onnx). The predictions TSV has the columns index (the example's row in FILE, from 0), prediction (the
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
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="torch: the export's weights with PyTorch (default); onnx: its model.onnx "
                        "with ONNX Runtime on the CPU (needs no torch to run the graph; torch only to "
                        "score a labelled file)")
    parser.add_argument("--precision", choices=("32", "bf16-mixed", "16-mixed"),
                        help="--runtime torch: evaluate in this precision (default: the run's, from "
                        "data.json, so the metrics are the run's)")
    parser.add_argument("--threads", type=int, help="--runtime onnx: ONNX Runtime's intra-op threads")
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
                         device=args.device, runtime=args.runtime, precision=args.precision,
                         threads=args.threads)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result['task']}: {result['n']} examples from {args.file} ({result['runtime']}, "
          f"precision {result['precision']})")
    if result["has_labels"]:
        print(format_metrics(result["metrics"]))
    else:
        why = "labels ignored (--no-labels)" if args.no_labels else f"no {result['label_column']!r} column"
        print(f"{why}: predictions only, no metrics")
    print(f"predictions: {result['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
