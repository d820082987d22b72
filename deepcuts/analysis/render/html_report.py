"""The comparison report as one offline HTML page (``report.html`` beside ``report.md``).

Per data set: the methods and the sanity controls with 95% intervals, the paired differences
against the baselines with their verdicts, an interactive metric-vs-ratio plot with 95% error
bars, and strategy x strategy heatmaps of mask overlap (kept IoU, from the runs' masks). It takes
the parts :func:`deepcuts.analysis.render.report.write_report` computed; nothing is recomputed here but
the mask overlaps. Its plot draws the lines the PNG draws
(:func:`deepcuts.analysis.summary.series`, :func:`~deepcuts.analysis.summary.dense_lines`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deepcuts.analysis import mask_iou
from deepcuts.analysis.keys import metric_column, shown_metrics
from deepcuts.analysis.render.html import Heatmap, LinePlot, Section, Table, write_html
from deepcuts.analysis.render.plots import achieved_differs
from deepcuts.analysis.summary import dense_lines, series

__all__ = ["write_html_report"]

log = logging.getLogger(__name__)
PAIRED_SHOWN = ["baseline", "baseline_variant", "seeds", "mean_diff", "t_low", "t_high", "boot_low",
                "boot_high", "wins", "verdict"]


def _lead(part: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """model / ratio_basis when the runs mix them (as the Markdown tables show them)."""
    return [k for k in ("model", "ratio_basis") if k in keys and part[k].astype(str).nunique() > 1]


def _summary_table(part: pd.DataFrame, sweep: Sequence[str], metric: str, lead: Sequence[str]) -> pd.DataFrame:
    others = [m for m in shown_metrics(part) if m != metric]
    return pd.DataFrame({
        **{k: part[k].astype(str) for k in lead},
        "strategy": part["strategy"].astype(str),
        "ratio": part["ratio"],
        **{k: part[k] for k in ("selection", *sweep) if k in part},
        "seeds": part["seeds"],
        f"pruned {metric}": part["pruned_mean"],
        "95% CI low": part["pruned_mean"] - part["pruned_ci95"],
        "95% CI high": part["pruned_mean"] + part["pruned_ci95"],
        "last epoch": part["pruned_last_mean"],
        **{f"pruned {m}": part[metric_column(part, "pruned", m)] for m in others},
        f"dense {metric}": part["dense_mean"],
        **{f"dense {m}": part[metric_column(part, "dense", m)] for m in others
           if f"dense_{m}_mean" in part},
        "achieved ratio": part["achieved_ratio_mean"],
    }).reset_index(drop=True)


def _line_plot(data: str, part: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str],
               metric: str, references: Sequence[Any] = ()) -> LinePlot:
    """The monitored metric vs ratio (the achieved one where it differs from the requested one),
    the dense models and the constant predictor (majority class / dev mean) as lines: the lines
    and labels of the PNG."""
    achieved = achieved_differs(part)
    x_col = "achieved_ratio_mean" if achieved else "ratio"
    frames = [pd.DataFrame({"series": line.label, "x": line.rows[x_col].astype(float),
                            "y": line.rows["pruned_mean"],
                            "lo": line.rows["pruned_mean"] - line.rows["pruned_ci95"],
                            "hi": line.rows["pruned_mean"] + line.rows["pruned_ci95"]})
              for line in series(part, keys)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["series", "x", "y", "lo", "hi"])
    hlines = {f"{d.label} (mean over seeds)": d.value for d in dense_lines(part, runs, keys)}
    for ref in references:
        if metric in ref.values:
            hlines[f"{ref.label} ({metric} {ref.values[metric]:.3g})"] = float(ref.values[metric])
    requested = ", ".join(f"{r:g}" for r in sorted(part["ratio"].astype(float).unique()))
    return LinePlot(
        title=f"{data}: pruned dev {metric} vs compression ratio (mean over seeds, 95% t-interval)",
        frame=frame, y_label=f"dev {metric}", hlines=hlines,
        x_label=(f"achieved compression ratio (requested c = {requested})" if achieved
                 else "compression ratio"),
    )


def _mask_heatmaps(folders: Sequence[Path]) -> dict[str, list[Heatmap]]:
    """Per data set, one kept-IoU heatmap per (model, ratio, variant), averaged over seeds."""
    tables, _, _ = mask_iou.pair_tables(folders)
    out: dict[str, list[Heatmap]] = {}
    for grid in mask_iou.kept_iou_grids(tables):
        variant = f" · {grid.variant}" if grid.variant else ""
        out.setdefault(str(grid.data), []).append(Heatmap(
            title=f"{grid.data} · {grid.model} · ratio {grid.ratio:g}{variant}: kept-weight IoU of "
                  f"the masks (mean over tensors and {grid.seeds} seed(s); two random masks: "
                  f"{grid.chance:.3f})",
            z=grid.z, x=grid.names, y=grid.names, colorbar="kept IoU"))
    return out


def write_html_report(written: dict[str, Any], folders: Sequence[Path], out: Path,
                      masks: bool = True) -> Path:
    """``report.html`` in ``out`` from the parts ``write_report`` returned."""
    summary, paired, runs = written["summary"], written["paired"], written["runs"]
    sweep, keys = list(written["sweep_keys"]), list(written["group_keys"])
    heatmaps: dict[str, list[Heatmap]] = {}
    if masks and not runs.empty:
        try:
            heatmaps = _mask_heatmaps(folders)
        except (ValueError, OSError) as err:  # masks of different models, unreadable files
            log.warning("report.html: no mask heatmaps (%s)", err)
    sections = []
    for data, part in summary.groupby("data", sort=True):
        metric = ", ".join(sorted(part["metric"].astype(str).unique()))
        data_runs = runs[runs["data"].astype(str) == str(data)]
        items: list[Any] = []
        if (part["selection"].astype(str) == "dev").any():
            items.append("Some rows chose their epoch on the dev set they report (selection=dev, "
                         "the paper's practice): their numbers are optimistic.")
        methods, controls = part[~part["control"].astype(bool)], part[part["control"].astype(bool)]
        lead = _lead(part, keys)
        items.append(Table(f"Methods: pruned dev {metric}", _summary_table(methods, sweep, metric, lead),
                           note="Mean over seeds with its 95% t-interval; last epoch and dense "
                                "model beside it."))
        if not controls.empty:
            items.append(Table("Sanity controls", _summary_table(controls, sweep, metric, lead),
                               note="Random masks and per-tensor shuffles of a method's masks."))
        pairs = paired[paired["data"].astype(str) == str(data)] if not paired.empty else paired
        if not pairs.empty:
            shown = [c for c in [*lead, "strategy", "ratio", *sweep, *PAIRED_SHOWN] if c in pairs]
            items.append(Table("Paired differences (method − baseline, same seeds)",
                               pairs[shown].reset_index(drop=True),
                               note="t: t-interval; boot: seeded bootstrap over seeds (10,000 "
                                    "resamples); wins: seeds where the method is better."))
        refs = written.get("references", {}).get(str(data), [])
        items.extend(line.replace("`", "") for r in refs
                     for line in [*(f"Reference: {x}." for x in r.lines), *r.notes])
        items.append(_line_plot(str(data), part, data_runs, keys, metric, refs))
        if masks and not heatmaps.get(str(data)):
            items.append("No mask-overlap heatmap: fewer than two runs of one data, model, ratio, "
                         "variant and seed have a masks.safetensors here.")
        items.extend(heatmaps.get(str(data), []))
        sections.append(Section(f"{data} ({metric})", items))
    if written["unfinished_shown"]:
        sections.append(Section("Unfinished or failed runs",
                                [f"{p}: {why}" for p, why in written["unfinished_shown"].items()]))
    intro = (f"{len(runs)} complete runs under {', '.join(written['folders_shown'])}. Baselines: "
             f"{', '.join(written['baselines'])}.")
    return write_html(Path(out) / "report.html", "DeepCuts comparison report", sections, intro)
