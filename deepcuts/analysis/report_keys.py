"""Group keys and their values for the comparison report: a key a run has no value for, a total
order over mixed sweep values, a value's table text, rows grouped by keys, and which keys a
table or plot shows.

Shared by :mod:`deepcuts.analysis.report` (statistics), :mod:`~deepcuts.analysis.report_markdown`
and :mod:`~deepcuts.analysis.report_plots`; it imports none of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

NONE = "—"  # a sweep key a run has no value for (no config.yaml, or an older config)


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
