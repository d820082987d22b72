"""Evaluate an exported pruned model on a GLUE-format file and write its predictions as TSV.

The export folder (``<run>/pruned_model`` of a run made with ``save_model=true``) holds all that
is needed: the model (:func:`deepcuts.models.export.load_exported`), the tokenizer, and ``data.json``
(how the task's files are read, its metrics, and the precision the run evaluated in). A file with
the label column is scored with every metric of ``data.json``; a file without it (a GLUE test
file) gets predictions only. The PyTorch runtime evaluates in the run's precision (autocast for
``bf16-mixed``), so its metrics are the run's; ``runtime="onnx"`` runs the export's float32 ONNX
graph with ONNX Runtime, and needs torch only to score a labelled file (torchmetrics).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepcuts.cache.files import atomic_path
from deepcuts.config.errors import ConfigError
from deepcuts.data.batching import in_file_order, sorted_batches
from deepcuts.data.tsv import parse_labels, read_tsv
from deepcuts.models.onnx_runtime import ONNX_FILE, ONNX_META, OnnxRunner

if TYPE_CHECKING:  # torch only where the PyTorch runtime or a metric needs it
    import torch

# the export's files (as deepcuts.models.export writes them; that module imports torch)
HEAD_FILE, TASK_FILE, DATA_FILE = "head.safetensors", "task.json", "data.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # one of them
TOKENIZER_FILE = "tokenizer_config.json"  # save_pretrained always writes it
EXPORT_FILES = {"torch": ("config.json", HEAD_FILE, TASK_FILE, DATA_FILE, TOKENIZER_FILE),
                "onnx": (ONNX_FILE, ONNX_META, TASK_FILE, DATA_FILE, TOKENIZER_FILE)}
RUNTIMES = tuple(EXPORT_FILES)
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
DEFAULT_BATCH_SIZE = 128


def default_out(file: Path, data: dict) -> Path:
    """``<task>-<file stem>.predictions.tsv`` in the current folder (``stsb-dev.predictions.tsv``)."""
    return Path(f"{data.get('name', 'task')}-{Path(file).stem}.predictions.tsv")


def check_export(folder: Path, runtime: str = "torch") -> dict:
    """The export's ``data.json``, after checking ``folder`` holds every file ``runtime`` reads
    (``torch``: config, weights, head; ``onnx``: the graph)."""
    folder = Path(folder)
    hint = "it must be the pruned_model folder of a run made with save_model=true"
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r}: one of {', '.join(RUNTIMES)}.")
    if not folder.is_dir():
        raise ConfigError(f"export folder {folder} does not exist; {hint}.")
    if runtime == "onnx":
        hint = f"export the graph with python -m deepcuts.export --onnx {folder} (or run with save_model=onnx)"
    missing = [name for name in EXPORT_FILES[runtime] if not (folder / name).is_file()]
    if runtime == "torch" and not any((folder / w).is_file() for w in WEIGHTS):
        missing.append(WEIGHTS[0])
    if missing:
        inside = ""
        if (folder / "pruned_model" / TASK_FILE).is_file():
            inside = " (this looks like a run folder: pass its pruned_model folder)"
        elif missing == [DATA_FILE]:  # an export from before data.json existed
            inside = " (an export from before data.json existed: run the job again; resume redoes it)"
        raise ConfigError(f"{folder} is not an export folder: it has no {', '.join(missing)}; "
                          f"{hint}{inside}.")
    try:
        return json.loads((folder / DATA_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{folder / DATA_FILE} is not valid JSON: {err}") from None


def file_layout(path: Path, data: dict) -> tuple[bool, list[str] | None]:
    """``(header, columns)`` to read ``path`` with, as the run read its task's files. A task read
    without a header (CoLA) still reads a file whose first line names its text columns (as GLUE's
    test files do) by that header."""
    if not path.is_file():
        raise ConfigError(f"file {path} does not exist.")
    header, columns = bool(data.get("header", True)), data.get("columns")
    if header:
        return True, columns
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().rstrip("\r\n").split("\t")
    if set(data["text_columns"]) <= set(first):
        return True, None
    if columns and len(first) != len(columns):
        raise ConfigError(
            f"{path} has {len(first)} tab-separated fields in its first row, but the export's task "
            f"({data.get('name')}) reads files without a header as the columns {list(columns)}: "
            f"give a file in that layout, or one whose header names {list(data['text_columns'])}."
        )
    return False, columns


def require_columns(have: list[str], path: Path, needed: list[str], data: dict) -> None:
    """Every ``needed`` column must be in the file as read."""
    missing = [c for c in needed if c not in have]
    if missing:
        raise ConfigError(
            f"{path} has no column(s) {missing}; it has {list(have)}. The export's task "
            f"({data.get('name')}) reads {list(data['text_columns'])} (and {data['label_column']!r} "
            "for metrics): give a file of that task in its GLUE layout."
        )


def pick_device(name: str | None) -> torch.device:
    """``name`` as a torch device; None: CUDA when available, else the CPU."""
    import torch

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise ConfigError(f"device {name!r} is not a device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available here; use --device cpu.")
    return device


def build_metrics(data: dict) -> dict[str, Any]:
    """Every metric of ``data.json``, instantiated (torchmetrics objects)."""
    from hydra.utils import instantiate

    metrics = {}
    for name, spec in (data.get("metrics") or {}).items():
        target = str((spec or {}).get("_target_", "")) if isinstance(spec, dict) else ""
        if not target.startswith("torchmetrics."):  # an export is data: never run code it names
            raise ConfigError(f"data.json metric {name!r} names {target!r}; only torchmetrics classes are built.")
        try:
            metrics[name] = instantiate(spec)
        except Exception as err:  # hydra wraps the real cause; its message names the target
            raise ConfigError(f"data.json metric {name!r} could not be built: {err}") from None
    return metrics


def read_examples(file: Path, data: dict, has_labels: bool | None,
                  limit: int | None) -> tuple[list[list[str]], list | None]:
    """``(texts per text column, labels or None)`` of ``file``'s first ``limit`` rows."""
    raw = read_tsv(file, *file_layout(file, data))
    if limit is not None and limit < len(raw):
        raw = raw.select(range(limit))  # the first rows, as max_eval_samples takes them
    label_column = data["label_column"]
    require_columns(raw.column_names, file, list(data["text_columns"]), data)
    texts = [[str(t) for t in raw[c]] for c in data["text_columns"]]
    if not (label_column in raw.column_names if has_labels is None else has_labels):
        return texts, None
    require_columns(raw.column_names, file, [label_column], data)
    try:
        labels = parse_labels(raw[label_column], data["task"], file, label_column)
    except ConfigError as err:
        raise ConfigError(f"{err} To predict without scoring, ignore the labels (--no-labels).") from None
    return texts, labels


def autocast_dtype(precision: str):
    """The autocast dtype of a Lightning precision (None: float32, no autocast)."""
    import torch

    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def run_model(folder: Path, texts: list[list[str]], data: dict, batch_size: int,
              device: torch.device, precision: str = "32") -> np.ndarray:
    """The export's outputs (logits, or scores) for the examples, in file order, under the run's
    precision (autocast for ``bf16-mixed`` / ``16-mixed``, as Lightning evaluated). Batches are
    length-sorted (:func:`deepcuts.data.batching.sorted_batches`)."""
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from deepcuts.models.export import load_exported

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoded = tokenizer(*texts, truncation=True, max_length=int(data.get("max_length", 128)))
    features = [{k: v[i] for k, v in encoded.items()} for i in range(len(texts[0]))]
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    model = load_exported(folder).to(device)
    dtype = autocast_dtype(precision)
    batches = sorted_batches([len(f["input_ids"]) for f in features], batch_size)  # padding only to similar lengths
    outputs = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for rows in batches:
            batch = collate([features[i] for i in rows]).to(device)
            output = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            outputs.append(output.float().cpu())
    return in_file_order(torch.cat(outputs).numpy(), batches)


def score(output: np.ndarray, labels: list, data: dict) -> dict[str, float]:
    """Every metric of ``data.json`` on the outputs, as the run computed it (class ids for
    classification, the scores for regression)."""
    import torch

    regression = data["task"]["type"] == "regression"
    output = torch.from_numpy(np.asarray(output, dtype=np.float32))
    predicted = output if regression else output.argmax(-1)
    target = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    scores = {}
    for name, metric in build_metrics(data).items():
        metric.update(predicted, target)
        scores[name] = float(metric.compute())
    return scores


def predict(
    folder: Path,
    file: Path,
    out: Path | None = None,
    batch_size: int | None = None,
    has_labels: bool | None = None,
    limit: int | None = None,
    device: str | None = None,
    runtime: str = "torch",
    precision: str | None = None,
    threads: int | None = None,
) -> dict:
    """Predict every example of ``file`` (its first ``limit`` rows if given) with the export in
    ``folder``, score them when labelled, and write the predictions TSV to ``out`` atomically
    (default: :func:`default_out`).

    ``has_labels``: None scores the file if it has the label column, True requires it, False
    ignores it. ``device``: None is CUDA when available, else the CPU. ``runtime``: ``torch``
    (the export's weights, in ``precision``: None is the run's, recorded in data.json) or
    ``onnx`` (the export's float32 ONNX graph on ONNX Runtime's CPU provider, ``threads``
    intra-op threads). Returns ``{"metrics", "n", "out", "has_labels", "task",
    "label_column", "runtime", "precision"}``; metrics are empty without labels.
    """
    folder, file = Path(folder), Path(file)
    data = check_export(folder, runtime)
    if precision is None:
        precision = str(data.get("precision") or "32") if runtime == "torch" else "32"
    precision = {"32-true": "32", "fp32": "32", "bf16": "bf16-mixed"}.get(str(precision), str(precision))
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}.")
    if runtime == "onnx" and precision != "32":
        raise ConfigError("the ONNX graph runs in float32: drop --precision, or use --runtime torch.")
    out = Path(out) if out is not None else default_out(file, data)
    if out.resolve() == file.resolve():
        raise ConfigError(f"the output {out} is the input file; choose another --out.")
    if batch_size is None:
        batch_size = data.get("eval_batch_size") or DEFAULT_BATCH_SIZE
    if int(batch_size) <= 0 or (limit is not None and int(limit) <= 0):
        raise ConfigError("the batch size and the limit must be positive numbers.")
    texts, labels = read_examples(file, data, has_labels, None if limit is None else int(limit))
    if runtime == "onnx":
        if device not in (None, "cpu"):
            raise ConfigError("--runtime onnx runs on the CPU provider: drop --device.")
        runner = OnnxRunner(folder, threads)
        output = runner.outputs(texts, int(batch_size), int(data.get("max_length", 128)))
    else:
        output = run_model(folder, texts, data, int(batch_size), pick_device(device), precision)
    metrics = score(output, labels, data) if labels is not None else {}
    with atomic_path(out) as tmp:
        write_predictions(tmp, output, data["task"], labels)
    return {"metrics": metrics, "n": len(output), "out": out, "has_labels": labels is not None,
            "task": data.get("name"), "label_column": data["label_column"], "runtime": runtime,
            "precision": precision}


def write_predictions(path: Path, output: np.ndarray, task: dict, labels: list | None) -> None:
    """One row per example: index, prediction (score or class id), logits, label."""
    output = np.asarray(output, dtype=np.float32)
    regression = task["type"] == "regression"
    fields = ["index", "prediction"]
    if not regression:
        fields += [f"logit_{k}" for k in range(output.shape[-1])]
    if labels is not None:
        fields.append("label")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(fields)
        classes = None if regression else output.argmax(-1).tolist()
        for i, row in enumerate(output.tolist()):
            values = [f"{row:.9g}"] if regression else [classes[i], *(f"{v:.9g}" for v in row)]
            writer.writerow([i, *values, *([labels[i]] if labels is not None else [])])


def format_metrics(metrics: dict[str, float]) -> str:
    """One ``name value`` line per metric, names aligned."""
    width = max((len(name) for name in metrics), default=0)
    return "\n".join(f"{name:<{width}}  {value:.4f}" for name, value in metrics.items())
