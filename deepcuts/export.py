"""Export a pruned model further: ``python -m deepcuts.export --onnx FOLDER [--check FILE]``.

FOLDER is an export folder (``<run>/pruned_model`` of a run made with ``save_model=true``);
``--onnx`` writes ``FOLDER/model.onnx`` (:func:`deepcuts.models.onnx.export_onnx`), checked
against PyTorch with ONNX Runtime on real examples of the task: FILE, by default the task's dev
file (data.json's ``folder`` / ``eval_file`` under ``$GLUE_DIR``, or the repository's GLUE copy).
Exit status 2, with one line saying why and nothing written, on bad input or a failed check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepcuts.config.errors import ConfigError


def _check_file(folder: Path, data: dict, given: str | None) -> Path:
    from deepcuts.data.tsv import resolve_root

    if given:
        return Path(given)
    if not data.get("folder") or not data.get("eval_file"):
        raise ConfigError(f"{folder}/data.json does not name the task's dev file (an export from before it did): "
                          "give one with --check FILE.")
    path = resolve_root(None) / data["folder"] / data["eval_file"]
    if not path.is_file():
        raise ConfigError(f"the task's dev file {data['folder']}/{data['eval_file']} is not under $GLUE_DIR "
                          f"({path}): set GLUE_DIR or give --check FILE.")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepcuts.export", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", metavar="FOLDER", required=True, help="an export folder: write FOLDER/model.onnx")
    parser.add_argument("--check", metavar="FILE", help="a GLUE-format file of the task to check the graph on "
                        "(default: the task's dev file)")
    parser.add_argument("--limit", type=int, default=None, help="check on the first N examples (default 256)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18; torchscript: at most 17)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="torch's exporter: dynamo (default) or torchscript (deprecated by torch; its graph "
                        "ran faster under ONNX Runtime on our CPU, benchmark S13)")
    args = parser.parse_args(argv)
    try:
        from deepcuts.models import onnx
        from deepcuts.models.predict import check_export, read_examples

        folder = Path(args.onnx)
        data = check_export(folder)
        file = _check_file(folder, data, args.check)
        limit = min(args.limit or onnx.CHECK_EXAMPLES, onnx.CHECK_EXAMPLES)
        texts, _ = read_examples(file, data, has_labels=False, limit=limit)
        meta = onnx.export_onnx(folder, texts, opset=args.opset or onnx.DEFAULT_OPSET, exporter=args.exporter)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {folder / meta['file']} ({meta['exporter']} exporter, opset {meta['opset']}, inputs {', '.join(meta['inputs'])}); "
          f"ONNX Runtime equals PyTorch within {meta['max_abs_diff']:.2g} on {meta['checked_examples']} "
          f"examples of {file.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
