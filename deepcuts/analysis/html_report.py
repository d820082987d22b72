"""The comparison report as one offline HTML page (``report.html`` beside ``report.md``).

Per data set: the methods and the sanity controls with 95% intervals, the paired differences
against the baselines with their verdicts, an interactive metric-vs-ratio plot with 95% error
bars, and strategy x strategy heatmaps of mask overlap (kept IoU, from the runs' masks). It takes
the parts :func:`deepcuts.analysis.report.write_report` computed; nothing is recomputed here but
the mask overlaps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deepcuts.analysis.html import Heatmap, LinePlot, Section, Table, write_html
from deepcuts.analysis.report_keys import metric_column, shown_metrics
from deepcuts.analysis.report_plots import achieved_differs

log = logging.getLogger(__name__)
PAIRED_SHOWN = ["ratio", "strategy", "baseline", "seeds", "mean_diff", "t_low", "t_high",
                "boot_low", "boot_high", "wins", "verdict"]


def _label(row: dict, keys: Sequence[str]) -> str:
    """``strategy · key=value ...`` for a plot series (sweep keys have dots: a dict, not a tuple)."""
    extra = [f"{k}={row[k]}" for k in keys if row.get(k) not in (None, "", "—")
             and not (isinstance(row[k], float) and pd.isna(row[k]))]
    return " · ".join([str(row["strategy"]), *extra])


def _summary_table(part: pd.DataFrame, sweep: Sequence[str], metric: str) -> pd.DataFrame:
    others = [m for m in shown_metrics(part) if m != metric]
    return pd.DataFrame({
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


def _line_plot(data: str, part: pd.DataFrame, runs: pd.DataFrame, sweep: Sequence[str],
               metric: str, references: Sequence[Any] = ()) -> LinePlot:
    """The monitored metric vs ratio (the achieved one where it differs from the requested one),
    the dense model and the constant predictor (majority class / dev mean) as lines."""
    keys = [k for k in ("selection", *sweep) if k in part and part[k].astype(str).nunique() > 1]
    series = [_label(r, keys) for r in part.to_dict("records")]
    achieved = achieved_differs(part)
    x = part["achieved_ratio_mean" if achieved else "ratio"].astype(float)
    frame = pd.DataFrame({
        "series": series, "x": x, "y": part["pruned_mean"],
        "lo": part["pruned_mean"] - part["pruned_ci95"], "hi": part["pruned_mean"] + part["pruned_ci95"],
    })
    dense = runs.groupby("seed")["dense"].mean().mean() if not runs.empty else float("nan")
    hlines = {} if pd.isna(dense) else {"dense (mean over seeds)": float(dense)}
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
    """Per data set, one kept-IoU heatmap per (model, ratio), averaged over seeds."""
    from deepcuts.analysis import mask_iou
    from deepcuts.analysis import plots_iou as P

    tables, _, _ = mask_iou.pair_tables(folders)
    if tables["tensor_iou"].empty:
        return {}
    summary = P.pair_summary(tables)
    out: dict[str, list[Heatmap]] = {}
    for (data, model, ratio), pairs in summary.groupby(P.GROUP, sort=True):
        names = sorted(set(pairs["strategy_a"]) | set(pairs["strategy_b"]))
        kept = P._pair_matrix(pairs, names, "iou_kept")
        chance = float(pairs["iou_kept_random"].mean())
        seeds = int(pairs["n_seeds"].max())
        out.setdefault(str(data), []).append(Heatmap(
            title=f"{data} · {model} · ratio {ratio:g}: kept-weight IoU of the masks "
                  f"(mean over tensors and {seeds} seed(s); two random masks: {chance:.3f})",
            z=kept.to_numpy(dtype=float).tolist(), x=names, y=names, colorbar="kept IoU",
        ))
    return out


def write_html_report(written: dict[str, Any], folders: Sequence[Path], out: Path,
                      masks: bool = True) -> Path:
    """``report.html`` in ``out`` from the parts ``write_report`` returned."""
    summary, paired, runs = written["summary"], written["paired"], written["runs"]
    sweep = list(written["sweep_keys"])
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
        items.append(Table(f"Methods: pruned dev {metric}", _summary_table(methods, sweep, metric),
                           note="Mean over seeds with its 95% t-interval; last epoch and dense "
                                "model beside it."))
        if not controls.empty:
            items.append(Table("Sanity controls", _summary_table(controls, sweep, metric),
                               note="Random masks and per-tensor shuffles of a method's masks."))
        pairs = paired[paired["data"].astype(str) == str(data)] if not paired.empty else paired
        if not pairs.empty:
            shown = [c for c in [*PAIRED_SHOWN[:3], *sweep, *PAIRED_SHOWN[3:]] if c in pairs]
            items.append(Table("Paired differences (method − baseline, same seeds)",
                               pairs[shown].reset_index(drop=True),
                               note="t: t-interval; boot: seeded bootstrap over seeds (10,000 "
                                    "resamples); wins: seeds where the method is better."))
        refs = written.get("references", {}).get(str(data), [])
        items.extend(line.replace("`", "") for r in refs
                     for line in [*(f"Reference: {x}." for x in r.lines), *r.notes])
        items.append(_line_plot(str(data), part, data_runs, sweep, metric, refs))
        items.extend(heatmaps.get(str(data), []))
        sections.append(Section(f"{data} ({metric})", items))
    if written["unfinished"]:
        sections.append(Section("Unfinished or failed runs", [", ".join(map(str, written["unfinished"]))]))
    n_runs = len(runs)
    intro = (f"{n_runs} complete runs under {', '.join(map(str, folders))}. Baselines: "
             f"{', '.join(written['baselines'])}.")
    return write_html(Path(out) / "report.html", "DeepCuts comparison report", sections, intro)
