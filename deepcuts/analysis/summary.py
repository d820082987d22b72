"""The report's summary: per data x strategy x ratio (and every sweep value) the pruned and dense
metrics over seeds, and what its figures draw -- one line per strategy and sweep values, one
dense line per model and dense-stage setting -- so that the PNG and the HTML page show the same
lines with the same labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from deepcuts.analysis import stats
from deepcuts.analysis.compare import prepare
from deepcuts.analysis.keys import (
    MISSING,
    PHASES,
    fmt,
    groups,
    metric_names,
    norm,
    shown_keys,
    sort_value,
)
from deepcuts.analysis.runs import config_key, dense_input, row_order

__all__ = ["STATS", "DenseLine", "Series", "dense_lines", "series", "summarise"]

STATS = ["seeds", "seeds_nan", "pruned_mean", "pruned_std", "pruned_ci95", "pruned_last_mean",
         "pruned_last_std", "dense_mean", "dense_std", "dense_last_mean", "dense_last_std",
         "achieved_ratio_mean"]


def _per_metric_columns(df: pd.DataFrame) -> list[str]:
    return [f"{p}_{m}" for p in PHASES for m in metric_names(df.columns, p)]


def summarise(df: pd.DataFrame, sweep: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group: seeds (and ``seeds_nan``, those whose pruned metric is NaN and so left out of
    the means), mean and sample std (ddof=1; NaN for one seed) of the monitor metric at the
    selected and last epoch, pruned and dense, the t half-width of the pruned mean's 95%
    interval, the mean achieved ratio, and ``<phase>_<metric>_mean/_std`` for every metric."""
    if df.empty:
        return pd.DataFrame(columns=["data", "strategy", "ratio", "metric", "selection", "control", *STATS])
    runs, keys, _ = prepare(df, sweep)
    metrics = _per_metric_columns(runs)
    rows = []
    for part in groups(runs, keys).values():
        first = part.iloc[0]
        row = {k: first[k] for k in keys}
        row["control"] = bool(part["control"].astype(bool).any())
        row["seeds"] = int(part["seed"].nunique())
        for col in [*PHASES, *metrics]:
            values = pd.to_numeric(part[col], errors="coerce")
            row[f"{col}_mean"] = float(values.mean())
            row[f"{col}_std"] = float(values.std())
        finite = int(pd.to_numeric(part["pruned"], errors="coerce").notna().sum())
        row["seeds_nan"] = len(part) - finite  # e.g. a collapsed STS-B model: Pearson undefined
        row["pruned_ci95"] = stats.t_halfwidth(row["pruned_std"], finite)
        row["achieved_ratio_mean"] = float(pd.to_numeric(part["achieved_ratio"]).mean())
        rows.append(row)
    extra = [f"{c}_{s}" for c in metrics for s in ("mean", "std")]
    rows.sort(key=lambda r: row_order(r, keys))
    return pd.DataFrame(rows, columns=[*keys, "control", *STATS, *extra])


# --- what a figure draws ----------------------------------------------------------------------


def labels(row: Any, keys: Sequence[str]) -> list[str]:
    """Legend parts: the model as its name, every other key as ``key=value``; no value, no part."""
    return [fmt(row[k]) if k == "model" else f"{k}={fmt(row[k])}" for k in keys if norm(row[k]) is not MISSING]


def _legend_keys(summary: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    shown = shown_keys(summary, keys)
    if "selection" in summary and summary["selection"].astype(str).nunique() > 1:
        shown.append("selection")
    return shown


@dataclass
class Series:
    """One line of a metric-vs-ratio figure: a strategy and its sweep values over ratios."""

    label: str
    control: bool
    rows: pd.DataFrame  # summary rows, by ratio


def series(summary: pd.DataFrame, keys: Sequence[str]) -> list[Series]:
    """The lines of one data set's figure (``summary``: its summary rows; ``keys``: the group
    keys): one per strategy and sweep values, labelled ``strategy · model · key=value`` with the
    keys that vary among these rows."""
    shown = _legend_keys(summary, keys)
    line_keys = [k for k in keys if k not in ("data", "ratio", "metric")]
    out = []
    for _, rows in sorted(groups(summary, line_keys).items(), key=lambda kv: tuple(sort_value(v) for v in kv[0])):
        rows = rows.sort_values("ratio")
        first = rows.iloc[0]
        out.append(Series(" · ".join([str(first["strategy"]), *labels(first, shown)]),
                          bool(first["control"]), rows))
    return out


@dataclass
class DenseLine:
    label: str
    value: float


def dense_lines(summary: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str],
                col: str = "dense") -> list[DenseLine]:
    """The dense models' level of ``col`` (a run-table column, ``dense`` for the monitor): one
    line per model and value of every shown sweep key that feeds the dense fine-tune (the same
    dense model whatever the strategy or ratio), each the mean over seeds of the per-seed mean.
    ``runs``: this data set's runs."""
    shown = _legend_keys(summary, keys)
    dense_keys = [k for k in shown if k in ("model", "selection")
                  or (k not in ("ratio_basis", "strategy") and dense_input(config_key(k)))]
    if col not in runs:
        return []
    per_seed: dict[tuple, list[float]] = {}
    for key, part in groups(runs, [*dense_keys, "seed"]).items():
        per_seed.setdefault(key[:-1], []).append(float(pd.to_numeric(part[col], errors="coerce").mean()))
    out = []
    for key, values in sorted(per_seed.items(), key=lambda kv: tuple(map(sort_value, kv[0]))):
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            name = " · ".join(labels(dict(zip(dense_keys, key, strict=True)), dense_keys))
            out.append(DenseLine(f"dense · {name}" if name else "dense", sum(finite) / len(finite)))
    return out
