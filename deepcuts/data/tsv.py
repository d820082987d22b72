"""GLUE-format TSV files on disk: where they are, reading them (quoting off), their labels, and the
seeded held-out slice of train used for model selection. No tokenizer, no model."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from deepcuts.config.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GLUE_DIR = REPO_ROOT.parent / "shared" / "data" / "glue"


def resolve_root(root: str | None) -> Path:
    """``data.root``, else ``$GLUE_DIR``, else ``../shared/data/glue`` beside the repository."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("GLUE_DIR"):
        return Path(os.environ["GLUE_DIR"]).expanduser()
    return DEFAULT_GLUE_DIR


def read_tsv(path: Path, header: bool, columns: list[str] | None) -> datasets.Dataset:
    """Read one GLUE TSV with quoting off (sentences contain bare ``"``)."""
    if not path.is_file():
        raise ConfigError(
            f"data file {path} does not exist. Data is looked for in data.root, else $GLUE_DIR, "
            f"else {DEFAULT_GLUE_DIR}. Point to your GLUE folder with data.root=/path/to/glue "
            "or GLUE_DIR=/path/to/glue."
        )
    with open(path, encoding="utf-8") as fh:
        lines = [line for _, line in zip(range(2), fh, strict=False) if line.strip()]
    if len(lines) < (2 if header else 1):
        raise ConfigError(f"data file {path} is empty" + (" (a header but no rows)." if lines else "."))
    try:
        ds = datasets.load_dataset(
            "csv",
            data_files=str(path),
            sep="\t",
            quoting=csv.QUOTE_NONE,
            header=0 if header else None,
            names=list(columns) if columns else None,
            keep_default_na=False,
            split="train",
        )
    except Exception as err:  # pandas/arrow parse errors carry the useful detail
        raise ConfigError(f"could not read {path} as a tab-separated GLUE file: {err}") from err
    if len(ds) == 0:
        raise ConfigError(f"data file {path} has a header but no rows.")
    return ds


def check_columns(ds: datasets.Dataset, path: Path, needed: list[str]) -> None:
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise ConfigError(
            f"{path} has no column(s) {missing}; it has {ds.column_names}. Fix the task YAML's "
            "text_columns/label_column (or `columns` for files without a header)."
        )


def label_map(task: dict) -> dict[str, int] | None:
    """``data.task.labels`` as name -> class id: a list gives the class names in id order
    (``[entailment, not_entailment]``), a mapping gives them directly (``{entailment: 0, ...}``);
    None when the task has no label names (labels are class ids, or scores)."""
    labels = task.get("labels")
    if labels is None:
        return None
    if task.get("type") != "classification":
        raise ConfigError("data.task.labels names classes: it needs task.type: classification.")
    if isinstance(labels, Mapping):
        mapping = {str(name): value for name, value in labels.items()}
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        mapping = {str(name): i for i, name in enumerate(labels)}
    else:
        raise ConfigError(f"data.task.labels must be a list of class names in id order or a name -> id mapping, got {labels!r}.")
    n = task.get("num_labels")
    ids = sorted(set(mapping.values()))
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or ids != list(range(len(ids))) or n != len(ids):
        raise ConfigError(
            f"data.task.labels {labels!r} must give the class ids 0..num_labels-1 (num_labels: {n}), "
            "each at least once; e.g. labels: [entailment, not_entailment] with num_labels: 2.")
    return mapping


def parse_labels(values: list[Any], task: dict, path: Path, column: str) -> list:
    """Labels as numbers, checked against the task (class ids, or a score range); text labels
    through ``data.task.labels``."""
    names = label_map(task)
    if names is not None:
        return _named_labels(values, names, path, column)
    out = []
    for row, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            found = _found(values)
            hint = (f" This file's labels look like names ({found}): give the class names in id order as "
                    f"data.task.labels in the task's YAML, e.g. labels: [{', '.join(found.split(', ')[:2])}]."
                    if task["type"] == "classification" else "")
            raise ConfigError(f"{path}, row {row + 1}: {column}={value!r} is not a number.{hint}") from None
        if task["type"] == "classification":
            if number != int(number) or not 0 <= number < task["num_labels"]:
                raise ConfigError(
                    f"{path}, row {row + 1}: label {value!r} is not a class id in "
                    f"0..{task['num_labels'] - 1}."
                )
            out.append(int(number))
        else:
            if not task["min"] <= number <= task["max"]:
                raise ConfigError(
                    f"{path}, row {row + 1}: score {value!r} is outside "
                    f"[{task['min']}, {task['max']}]."
                )
            out.append(number)
    return out


def _found(values: list[Any], limit: int = 8) -> str:
    """The distinct labels of a column, in order of first appearance (the first ``limit``)."""
    seen = list(dict.fromkeys(str(v).strip() for v in values))
    return ", ".join(seen[:limit]) + (f", ... ({len(seen)} distinct)" if len(seen) > limit else "")


def _named_labels(values: list[Any], names: dict[str, int], path: Path, column: str) -> list[int]:
    out = []
    for row, value in enumerate(values):
        name = str(value).strip()
        if name not in names:
            raise ConfigError(
                f"{path}, row {row + 1}: {column}={value!r} is not one of data.task.labels "
                f"({', '.join(names)}). Labels in this file: {_found(values)}. Fix data.task.labels in the task's YAML.")
        out.append(names[name])
    return out


def holdout_indices(labels: list, task: dict, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded, stratified split of train into (train, holdout) indices for model selection.

    Strata are the classes (classification) or five equal-count score bins (regression), so the
    held-out slice has the train set's label distribution; each stratum gives ``round(f * n)``.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"selection_fraction must be in (0, 1), got {fraction}.")
    values = np.asarray(labels, dtype=float)
    if task["type"] == "classification":
        strata = values.astype(int)
    else:  # rank-based bins: equal counts even when scores cluster
        strata = np.floor(np.argsort(np.argsort(values, kind="stable"), kind="stable") * 5 / len(values)).astype(int)
    rng = np.random.default_rng(seed + 20_011)
    holdout: list[int] = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        take = int(np.floor(fraction * len(members) + 0.5))
        holdout.extend(rng.permutation(members)[:take].tolist())
    if not holdout or len(holdout) == len(values):
        raise ConfigError(
            f"selection_fraction={fraction} of {len(values)} train examples leaves an empty "
            "train or holdout set; use more data or another fraction."
        )
    chosen = set(holdout)
    return [i for i in range(len(values)) if i not in chosen], sorted(holdout)
