"""Group keys and their values, for every analysis: a key a run has no value for, a total order
over mixed sweep values, a value's table text, rows grouped by keys, and which keys a table or
plot shows. It imports no other analysis module but :mod:`deepcuts.analysis.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from deepcuts.analysis.stats import higher_is_better

__all__ = ["HIDDEN_METRICS", "MISSING", "NONE", "PHASES", "fmt", "groups", "metric_column",
           "metric_names", "norm", "row_key", "shown_keys", "shown_metrics", "sort_value"]

PHASES = ("pruned", "pruned_last", "dense", "dense_last")  # selected / last epoch, after / before
NONE = "—"  # a sweep key a run has no value for (no config.yaml, or an older config)
HIDDEN_METRICS = ("loss",)  # in report.csv, not in the Markdown tables or the plots


class _Missing:
    """A run without a value for a key; sorts last, equals only itself."""

    def __repr__(self) -> str:
        return NONE


MISSING = _Missing()


def norm(value: Any) -> Any:
    """A hashable, comparable stand-in: NaN and None (no value) become MISSING."""
    if value is None or value is MISSING or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return value


def sort_value(value: Any) -> tuple:
    """Numbers by value, then text, then missing: a total order over mixed sweep values."""
    value = norm(value)
    if value is MISSING:
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def fmt(value: Any) -> str:
    """A sweep value for a table cell."""
    value = norm(value)
    if value is MISSING:
        return NONE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def row_key(row: Any, keys: Sequence[str]) -> tuple:
    """A row's values of ``keys``, missing ones as MISSING (so they group together)."""
    return tuple(norm(row[k]) for k in keys)


def groups(df: pd.DataFrame, keys: Sequence[str]) -> dict[tuple, pd.DataFrame]:
    """Rows grouped by ``keys``, missing values a group of their own (pandas would drop them)."""
    index: dict[tuple, list] = {}
    for i, row in zip(df.index, df.to_dict("records"), strict=True):
        index.setdefault(row_key(row, keys), []).append(i)
    return {k: df.loc[idx] for k, idx in index.items()}


def shown_keys(part: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The keys worth a column in this part: model / ratio_basis when mixed, sweep keys with a
    value here."""
    return [k for k in keys if k in ("model", "ratio_basis")
            or (k not in ("data", "strategy", "ratio", "metric", "selection")
                and any(norm(v) is not MISSING for v in part[k]))]


def shown_metrics(part: pd.DataFrame) -> list[str]:
    """The metrics a table or plot of this part of the summary shows: the monitor(s) first, then
    every other metric with a value (scores before errors, the main dev set before extra ones
    like ``mismatched/acc``); ``loss`` is left out (it stays in report.csv)."""
    monitors = sorted(part["metric"].astype(str).unique())
    found = {c[len("pruned_"):-len("_mean")] for c in part.columns
             if c.startswith("pruned_") and c.endswith("_mean") and c != "pruned_mean"
             and not c.startswith("pruned_last_") and part[c].notna().any()}
    others = sorted((m for m in found if m not in monitors
                     and m.rsplit("/", 1)[-1] not in HIDDEN_METRICS),
                    key=lambda m: ("/" in m, not higher_is_better(m), m))
    return [*monitors, *others]


def metric_column(part: pd.DataFrame, phase: str, metric: str, stat: str = "mean") -> str:
    """The summary column of ``metric`` at ``phase`` (``pruned``, ``dense``, ...): the per-metric
    one, else the monitor's own (old summaries, or a part with a single monitor)."""
    column = f"{phase}_{metric}_{stat}"
    if column in part.columns:
        return column
    return f"{phase}_{stat}"


def metric_names(columns: Iterable[str], phase: str) -> list[str]:
    """Metric names of one phase among ``<phase>_<m>`` columns (``pruned_last_x`` is not a
    ``pruned`` metric)."""
    longer = [p for p in PHASES if p != phase and p.startswith(phase + "_")]
    return sorted({c[len(phase) + 1:] for c in columns if c.startswith(phase + "_")
                   and c not in PHASES and not any(c.startswith(p + "_") for p in longer)})
