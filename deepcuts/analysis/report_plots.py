"""The comparison report's figure per data set (``<data>.png``): pruned dev metric vs compression
ratio, one line per strategy and sweep values, with the dense models as horizontal lines.

It plots the summary :mod:`deepcuts.analysis.report` computed; matplotlib is imported only when
a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deepcuts.analysis.report_keys import MISSING, fmt, groups, norm, shown_keys, sort_value


def plot_ratio(data: str, summary: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str],
               path: Path) -> None:
    """Metric vs compression ratio, a line per strategy and sweep values (error bars: 95%
    t-interval of the mean over seeds, none for one seed), controls dotted, dense dashed.
    ``summary`` and ``runs``: this data set's rows; ``keys``: the group keys."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = shown_keys(summary, keys)
    if summary["selection"].astype(str).nunique() > 1:
        shown.append("selection")
    line_keys = [k for k in keys if k not in ("data", "ratio", "metric")]
    for _, line in sorted(groups(summary, line_keys).items(),
                          key=lambda kv: tuple(sort_value(v) for v in kv[0])):
        line = line.sort_values("ratio")
        first = line.iloc[0]
        label = " · ".join([str(first["strategy"]), *_labels(first, shown)])
        ax.errorbar(line["ratio"], line["pruned_mean"], yerr=line["pruned_ci95"].fillna(0.0),
                    marker="o", capsize=3, label=label,
                    linestyle=":" if bool(first["control"]) else "-")
    dense_keys = [k for k in shown if k not in ("ratio_basis", "selection")
                  and not k.startswith("strategy.")]
    per_seed: dict[tuple, list[float]] = {}
    for key, part in groups(runs, [*dense_keys, "seed"]).items():
        per_seed.setdefault(key[:-1], []).append(pd.to_numeric(part["dense"]).mean())
    styles = ["--", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    for i, (key, values) in enumerate(sorted(per_seed.items(),
                                             key=lambda kv: tuple(map(sort_value, kv[0])))):
        level = pd.Series(values, dtype=float).mean()
        if not pd.isna(level):
            name = " · ".join(_labels(dict(zip(dense_keys, key, strict=True)), dense_keys))
            ax.axhline(level, linestyle=styles[i % len(styles)], color="gray", alpha=0.8,
                       label=f"dense · {name}" if name else "dense")
    metric = ", ".join(sorted(summary["metric"].astype(str).unique()))
    ax.set_xticks(sorted(summary["ratio"].unique()))
    bases = sorted(runs["ratio_basis"].astype(str).unique())
    # the requested ratio; on a model smaller than the basis the achieved one is in the table
    ax.set_xlabel("compression ratio" + (f" (ratio_basis: {', '.join(bases)})" if bases else ""))
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{data}: pruned dev {metric} vs compression ratio (95% CI over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before the legend, so a legend beside the axes does not squeeze them
    if len(ax.get_legend_handles_labels()[1]) > 6:  # many lines: legend beside the axes
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _labels(row: Any, keys: Sequence[str]) -> list[str]:
    """Legend parts: a sweep key as ``key=value``, model / selection as the value; no value, no
    part."""
    return [f"{k}={fmt(row[k])}" if "." in k else fmt(row[k]) for k in keys
            if norm(row[k]) is not MISSING]
