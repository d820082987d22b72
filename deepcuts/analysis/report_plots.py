"""The comparison report's figure per data set (``<data>.png``): every pruned dev metric vs
compression ratio (a panel per metric, the monitored one on top), one line per strategy and sweep
values, with the dense models and the constant predictor as horizontal lines; the achieved ratio
on the x axis where it differs from the requested one.

It plots the summary :mod:`deepcuts.analysis.report` computed; matplotlib is imported only when
a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deepcuts.analysis import stats
from deepcuts.analysis.report_keys import (
    MISSING,
    fmt,
    groups,
    metric_column,
    norm,
    shown_keys,
    shown_metrics,
    sort_value,
)

ACHIEVED_TOLERANCE = 0.02  # relative: achieved ratios further from the requested ones go on x


def achieved_differs(summary: pd.DataFrame) -> bool:
    """Whether some row's mean achieved ratio is more than 2% off its requested ratio (e.g.
    MiniLM counted on a bert_base basis: requested 2, achieved 1.44 on the whole model)."""
    achieved = pd.to_numeric(summary.get("achieved_ratio_mean"), errors="coerce")
    if achieved is None or achieved.isna().all():
        return False
    ratio = pd.to_numeric(summary["ratio"], errors="coerce")
    return bool(((achieved - ratio).abs() > ACHIEVED_TOLERANCE * ratio.abs()).fillna(False).any())


def plot_ratio(data: str, summary: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str],
               path: Path, references: Sequence[Any] = ()) -> Any:
    """Every metric vs compression ratio, one panel per metric (the monitored one on top, the
    others in a grid below), a line per strategy and sweep values (error bars: 95% t-interval of
    the mean over seeds, none for one seed), controls dotted, dense dashed gray, the constant
    predictor (``references``: :class:`deepcuts.analysis.reference.Reference`) dashed black. The x
    axis is the achieved ratio when it differs from the requested one (rows still grouped by the
    requested ratio). ``summary`` and ``runs``: this data set's rows; ``keys``: the group keys.
    Returns the matplotlib Figure (saved to ``path``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = shown_metrics(summary)
    others = len(metrics) - 1
    cols = 1 if not others else 2
    rows = 1 + math.ceil(others / 2)
    fig = Figure(figsize=(7.2 if cols == 1 else 12.0, 4.8 + 4.0 * (rows - 1)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, cols)
    axes = [fig.add_subplot(grid[0, :])]
    axes += [fig.add_subplot(grid[1 + i // 2, i % 2]) for i in range(others)]
    achieved = achieved_differs(summary)
    for i, (ax, metric) in enumerate(zip(axes, metrics, strict=True)):
        _panel(ax, metric, summary, runs, keys, references, achieved, monitor=i == 0)
    monitor = ", ".join(sorted(summary["metric"].astype(str).unique()))
    what = "pruned dev " + (monitor if not others else f"{monitor} and every other metric")
    axes[0].set_title(f"{data}: {what} vs compression ratio (95% CI over seeds)")
    fig.tight_layout()  # before the legend, so a legend beside the axes does not squeeze them
    ax = axes[0]
    if len(ax.get_legend_handles_labels()[1]) > 6:  # many lines: legend beside the axes
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _panel(ax: Any, metric: str, summary: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str],
           references: Sequence[Any], achieved: bool, monitor: bool) -> None:
    """One metric's panel: a line per strategy, the dense model(s), the reference."""
    single = summary["metric"].astype(str).nunique() == 1
    own = single and metric == str(summary["metric"].iloc[0])  # the monitor's own columns
    mean_col = "pruned_mean" if own else metric_column(summary, "pruned", metric)
    std_col = "pruned_std" if own else metric_column(summary, "pruned", metric, "std")
    dense_col = "dense" if own or f"dense_{metric}" not in runs.columns else f"dense_{metric}"
    x_col = "achieved_ratio_mean" if achieved else "ratio"
    shown = shown_keys(summary, keys)
    if summary["selection"].astype(str).nunique() > 1:
        shown.append("selection")
    line_keys = [k for k in keys if k not in ("data", "ratio", "metric")]
    for _, line in sorted(groups(summary, line_keys).items(),
                          key=lambda kv: tuple(sort_value(v) for v in kv[0])):
        line = line.sort_values("ratio")
        first = line.iloc[0]
        label = " · ".join([str(first["strategy"]), *_labels(first, shown)])
        if own:
            ci = line["pruned_ci95"]
        else:
            ci = pd.Series([stats.t_halfwidth(float(s), int(n)) for s, n in
                            zip(line[std_col], line["seeds"], strict=True)], index=line.index)
        ax.errorbar(line[x_col], line[mean_col], yerr=ci.fillna(0.0), marker="o", capsize=3,
                    label=label, linestyle=":" if bool(first["control"]) else "-")
    dense_keys = [k for k in shown if k not in ("ratio_basis", "selection")
                  and not k.startswith("strategy.")]
    per_seed: dict[tuple, list[float]] = {}
    for key, part in groups(runs, [*dense_keys, "seed"]).items():
        per_seed.setdefault(key[:-1], []).append(pd.to_numeric(part[dense_col]).mean())
    styles = ["--", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    for i, (key, values) in enumerate(sorted(per_seed.items(),
                                             key=lambda kv: tuple(map(sort_value, kv[0])))):
        level = pd.Series(values, dtype=float).mean()
        if not pd.isna(level):
            name = " · ".join(_labels(dict(zip(dense_keys, key, strict=True)), dense_keys))
            ax.axhline(level, linestyle=styles[i % len(styles)], color="gray", alpha=0.8,
                       label=f"dense · {name}" if name else "dense")
    drawn = _reference_lines(ax, metric, references)
    if drawn and not monitor:  # the strategies' legend is on the top panel
        ax.legend(handles=drawn, fontsize="small")
    requested = sorted(float(r) for r in summary["ratio"].unique())
    bases = sorted(runs["ratio_basis"].astype(str).unique())
    basis = f" (ratio_basis: {', '.join(bases)})" if bases else ""
    if achieved:
        ticks = [float(pd.to_numeric(summary.loc[summary["ratio"] == r, x_col]).mean())
                 for r in requested]
        ax.set_xticks(ticks, [f"{t:.2f}\n(c={r:g})" for t, r in zip(ticks, requested,
                                                                     strict=True)])
        ax.set_xlabel("achieved compression ratio (requested c = "
                      + ", ".join(f"{r:g}" for r in requested) + ")" + basis)
    else:
        ax.set_xticks(requested)
        ax.set_xlabel("compression ratio" + basis)
    ax.set_ylabel(f"dev {metric}")
    if not monitor:
        ax.set_title(f"{metric}", fontsize="medium")
    ax.grid(alpha=0.3)


def _reference_lines(ax: Any, metric: str, references: Sequence[Any]) -> list[Any]:
    """The constant predictor's score as a dashed black line; one far off the data (more than
    half the data's span beyond it, e.g. Pearson 0 under 0.7-0.85) is named in a corner
    instead, so the lines stay readable."""
    low, high = ax.get_ylim()
    span = high - low
    notes, drawn = [], []
    for ref in references:
        value = ref.values.get(metric)
        if value is None or not math.isfinite(value):
            continue
        label = f"{ref.label}: {value:.3g}"
        if low - 0.5 * span <= value <= high + 0.5 * span:
            drawn.append(ax.axhline(value, linestyle=(0, (4, 2)), color="black", linewidth=1.2,
                                    label=label))
        else:
            notes.append(f"{label} ({'below' if value < low else 'above'} the axis)")
    if notes:
        ax.text(0.01, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize="small",
                va="bottom", ha="left", color="black",
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
    return drawn


def _labels(row: Any, keys: Sequence[str]) -> list[str]:
    """Legend parts: a sweep key as ``key=value``, model / selection as the value; no value, no
    part."""
    return [f"{k}={fmt(row[k])}" if "." in k else fmt(row[k]) for k in keys
            if norm(row[k]) is not MISSING]
