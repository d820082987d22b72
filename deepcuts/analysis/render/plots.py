"""The comparison report's figure per data set (``<data>.png``): every pruned dev metric vs
compression ratio (a panel per metric, the monitored one on top), one line per strategy and sweep
values, with the dense models and the constant predictor as horizontal lines; the achieved ratio
on the x axis where it differs from the requested one.

It draws the lines :func:`deepcuts.analysis.summary.series` and
:func:`~deepcuts.analysis.summary.dense_lines` give (the HTML page draws the same ones);
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deepcuts.analysis import stats
from deepcuts.analysis.keys import metric_column, shown_metrics
from deepcuts.analysis.summary import dense_lines, series

__all__ = ["achieved_differs", "plot_ratio"]

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
    for line in series(summary, keys):
        rows = line.rows
        if own:
            ci = rows["pruned_ci95"]
        else:
            ci = pd.Series([stats.t_halfwidth(float(s), int(n)) for s, n in
                            zip(rows[std_col], rows["seeds"], strict=True)], index=rows.index)
        ax.errorbar(rows[x_col], rows[mean_col], yerr=ci.fillna(0.0), marker="o", capsize=3,
                    label=line.label, linestyle=":" if line.control else "-")
    styles = ["--", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    for i, dense in enumerate(dense_lines(summary, runs, keys, dense_col)):
        ax.axhline(dense.value, linestyle=styles[i % len(styles)], color="gray", alpha=0.8,
                   label=dense.label)
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

