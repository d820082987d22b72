"""The constant predictor's score on each data set's dev set: the reference line under the
report's tables and in its plots (majority class for classification, the dev mean for regression).

Read from the dev file each run's ``config.yaml`` names, with the csv module (no torch), when the
file is on this machine; otherwise a note says why there is no line.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from deepcuts.analysis import stats
from deepcuts.analysis.keys import metric_names

CONFIG = "config.yaml"  # the resolved config a run writes beside results.json

# --- the constant predictor's score on the dev set (reference lines) ---------------------------

DEV_SPEC = ("root", "folder", "eval_file", "extra_eval_files", "header", "columns", "label_column",
            "task", "max_eval_samples")  # the data config keys that say which dev labels
NO_CORRELATION = ("pearson", "spearman", "spearmanr")  # undefined for a constant: shown as 0


@dataclass
class Reference:
    """What predicting one constant scores on a data set's dev set(s): the majority class
    (classification) or the dev mean (regression). ``values``: metric (as in results.json, e.g.
    ``acc``, ``mismatched/acc``) -> score; ``label``: a short legend text; ``lines``: one sentence
    per dev set; ``notes``: why a dev set (or the whole data set) has no reference."""

    data: str
    values: dict[str, float] = field(default_factory=dict)
    label: str = ""
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _glue_root(root: Any) -> Path:
    """``data.root`` as the run resolved it (:func:`deepcuts.data.tsv.resolve_root`, which imports
    torch): the path, else ``$GLUE_DIR``, else ``../shared/data/glue`` beside the repository."""
    if isinstance(root, str) and root and root != "null" and not root.startswith("${"):
        return Path(root).expanduser()
    if os.environ.get("GLUE_DIR"):
        return Path(os.environ["GLUE_DIR"]).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue"


def _data_config(run: Path) -> dict | None:
    """The run's ``data`` config, resolved where it can be (``root: ${oc.env:GLUE_DIR,null}``)."""
    path = run / CONFIG
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.load(path)
        data = cfg.get("data")
        if data is None:
            return None
        try:
            out = OmegaConf.to_container(data, resolve=True)
        except Exception:  # noqa: BLE001 - an interpolation only the run could resolve
            out = OmegaConf.to_container(data, resolve=False)
    except Exception:  # noqa: BLE001 - a broken config only costs the data set its reference
        return None
    return out if isinstance(out, dict) else None


def _dev_labels(path: Path, data: dict) -> list[str]:
    """The label column of one GLUE TSV (quoting off, as :func:`deepcuts.data.tsv.read_tsv`), the
    first ``max_eval_samples`` rows as the run evaluated them."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
                if any(c.strip() for c in r)]
    if data.get("header", True):
        names, rows = (rows[0] if rows else []), rows[1:]
    else:
        names = list(data.get("columns") or [])
    column = data.get("label_column")
    if column not in names:
        raise ValueError(f"no label column {column!r} in {path} (columns: {names})")
    i = names.index(column)
    values = [r[i].strip() for r in rows if len(r) > i]
    limit = data.get("max_eval_samples")
    if limit:
        values = values[:int(limit)]
    if not values:
        raise ValueError(f"{path} has no labelled rows")
    return values


def _label_ids(values: list[str], task: dict) -> list[int]:
    """Class ids, text labels through ``data.task.labels`` (names in id order, or name -> id)."""
    labels = task.get("labels")
    if isinstance(labels, Mapping):
        names = {str(k): int(v) for k, v in labels.items()}
    elif isinstance(labels, (list, tuple)):
        names = {str(k): i for i, k in enumerate(labels)}
    else:
        names = {}
    return [names[v] if v in names else int(float(v)) for v in values]


def _class_name(label: int, task: dict) -> str:
    labels = task.get("labels")
    if isinstance(labels, Mapping):
        names = [str(k) for k, v in labels.items() if v == label]
        return f"{names[0]} (id {label})" if names else str(label)
    if isinstance(labels, (list, tuple)) and 0 <= label < len(labels):
        return f"{labels[label]} (id {label})"
    return str(label)


def _constant_scores(values: list[str], task: dict, metrics: Sequence[str]) -> tuple[dict, str]:
    """(metric -> score of the constant predictor, the sentence saying which constant)."""
    n = len(values)
    if task.get("type") == "classification":
        ids = _label_ids(values, task)
        counts = Counter(ids)
        top = max(counts.values())
        majority = min(k for k, c in counts.items() if c == top)  # a tie: the smaller id
        share = top / n
        binary = set(ids) <= {0, 1} and task.get("num_labels", 2) == 2
        positive = counts.get(1, 0) / n
        out: dict[str, float] = {}
        for m in metrics:
            base = m.rsplit("/", 1)[-1].lower()
            if base in ("acc", "accuracy"):
                out[m] = share
            elif base in ("mcc", "matthews"):
                out[m] = 0.0
            elif base == "f1" and binary:  # F1 of class 1: precision p, recall 1 if always 1
                out[m] = 2 * positive / (1 + positive) if majority == 1 else 0.0
        what = (f"majority class (label {_class_name(majority, task)}, {100 * share:.1f}% of "
                f"{n} dev examples)")
        return out, what
    scores = [float(v) for v in values]
    mean = sum(scores) / n
    variance = sum((y - mean) ** 2 for y in scores) / n  # MSE of predicting the dev mean
    out = {}
    for m in metrics:
        base = m.rsplit("/", 1)[-1].lower()
        if base == "mse":
            out[m] = variance
        elif base == "rmse":
            out[m] = math.sqrt(variance)
        elif base in NO_CORRELATION:
            out[m] = 0.0
    return out, f"constant prediction of the dev mean ({mean:.3f} over {n} dev examples)"


def _scores_text(values: dict[str, float], task: dict) -> str:
    regression = task.get("type") != "classification"
    corr = [m for m in values if regression and m.rsplit("/", 1)[-1].lower() in NO_CORRELATION]
    parts = []
    for m, v in values.items():
        if m in corr:
            if m == corr[-1]:
                parts.append(" 0, ".join(corr) + " 0 (undefined for a constant prediction; "
                             "shown as no correlation)")
        elif regression and m.rsplit("/", 1)[-1].lower() == "mse":
            parts.append(f"{m} {v:.4g} (the dev label variance)")
        else:
            parts.append(f"{m} {v:.4g}")
    return ", ".join(parts)


def _reference(data: str, spec: dict, metrics: Sequence[str]) -> Reference:
    """The constant predictor's scores on the dev set(s) ``spec`` (a run's data config) names."""
    task = spec.get("task") if isinstance(spec.get("task"), dict) else {}
    kind = "majority class" if task.get("type") == "classification" else "constant (dev mean)"
    ref = Reference(data, label=kind)
    folder = _glue_root(spec.get("root")) / str(spec.get("folder") or "")
    extra = spec.get("extra_eval_files") if isinstance(spec.get("extra_eval_files"), dict) else {}
    sets = {"": spec.get("eval_file") or "dev.tsv", **{f"{k}/": v for k, v in extra.items()}}
    for prefix, file in sets.items():
        mine = [m for m in metrics if (m.startswith(prefix) if prefix else "/" not in m)]
        if not mine:
            continue
        path = folder / str(file)
        shown = (Path(str(spec.get("folder") or "")) / str(file)).as_posix()  # under data.root
        name = f"dev set `{prefix[:-1]}`" if prefix else "dev set"
        if not path.is_file():
            ref.notes.append(f"No reference line for the {name}: its file `{shown}` is not under "
                             "data.root on this machine (set data.root or $GLUE_DIR to the GLUE "
                             "folder).")
            continue
        try:
            scores, what = _constant_scores(_dev_labels(path, spec), task, mine)
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
            ref.notes.append(f"No reference line for the {name}: `{shown}` could not be read "
                             f"({str(err).replace(str(path), shown)}).")
            continue
        if scores:
            ref.values.update(scores)
            ref.lines.append(f"{what} in `{shown}`" + (f" ({prefix[:-1]})" if prefix else "")
                             + ": " + _scores_text(scores, task))
    return ref


def dev_references(runs: pd.DataFrame) -> dict[str, list[Reference]]:
    """Per data set, the constant predictor's dev scores for every metric of its runs (one
    :class:`Reference` per distinct dev-set config; usually one). The dev labels are read from
    the file each run's ``config.yaml`` names (``data.root`` / ``data.folder`` /
    ``data.eval_file``, plus ``data.extra_eval_files`` for ``<name>/<metric>`` keys) when it
    exists here; otherwise the Reference has no values and a note says why."""
    out: dict[str, list[Reference]] = {}
    if runs.empty:
        return out
    for data, part in runs.groupby(runs["data"].astype(str), sort=True):
        monitors = sorted(part["metric"].astype(str).unique())
        found = metric_names([c for c in part.columns if part[c].notna().any()], "pruned")
        metrics = [*monitors, *sorted((m for m in found if m not in monitors),  # as the tables
                                      key=lambda m: ("/" in m, not stats.higher_is_better(m), m))]
        specs: dict[str, dict] = {}
        for path in part["path"]:
            spec = _data_config(Path(path))
            if spec is not None:
                key = {k: spec.get(k) for k in DEV_SPEC}
                specs.setdefault(json.dumps(key, sort_keys=True, default=str), spec)
        if not specs:
            out[data] = [Reference(data, notes=["No reference line: no run has a `config.yaml`, "
                                                "so the dev set is unknown."])]
            continue
        out[data] = [_reference(data, s, metrics) for s in specs.values()]
    return out


def with_references(summary: pd.DataFrame, refs: dict[str, list[Reference]]) -> pd.DataFrame:
    """``summary`` plus ``reference_<metric>`` columns: the constant predictor's dev score where
    the data set has exactly one (NaN elsewhere)."""
    names = sorted({m for rs in refs.values() for r in rs for m in r.values})
    if summary.empty or not names:
        return summary
    out = summary.copy()
    for m in names:
        out[f"reference_{m}"] = [refs[str(d)][0].values.get(m, math.nan)
                                 if len(refs.get(str(d), [])) == 1 else math.nan
                                 for d in out["data"]]
    return out
