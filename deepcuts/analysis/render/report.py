"""The comparison report's files: pruned dev metric per data x strategy x ratio over seeds
(Figures 6-8), split by every config value a sweep varied, paired differences against baselines,
``--pair-by`` sections, end-to-end time, one figure per data set and an HTML page; also written at
the end of a Hydra multirun by :class:`ReportCallback`.

Everything is computed by the computation modules (:mod:`~deepcuts.analysis.runs`,
:mod:`~deepcuts.analysis.summary`, :mod:`~deepcuts.analysis.compare`,
:mod:`~deepcuts.analysis.timing`, :mod:`~deepcuts.analysis.reference`); this module writes it. It
reads nothing but the outputs contract (``results.json`` and ``config.yaml`` in each run folder),
so it works on copied or old sweeps and never imports torch. Unfinished or failed runs are listed,
never dropped. Paths are printed relative to the report's folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deepcuts.analysis.compare import (
    DEFAULT_BASELINES,
    paired_across_all,
    paired_differences,
    prepare,
)
from deepcuts.analysis.reference import dev_references, with_references
from deepcuts.analysis.render.markdown import (
    render_markdown,
    render_paired_across,
    timing_markdown,
    unfinished_markdown,
)
from deepcuts.analysis.render.plots import plot_ratio
from deepcuts.analysis.runs import collect_runs, column, group_keys, shown_path, sweep_keys
from deepcuts.analysis.summary import summarise
from deepcuts.analysis.timing import stage_times

__all__ = ["ReportCallback", "write_report"]


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", str(name))


def write_report(folders: Iterable[str | os.PathLike], out: str | os.PathLike,
                 baselines: Sequence[str] = DEFAULT_BASELINES, html: bool = True,
                 masks: bool = True, pair_by: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Write report.csv (summary, every metric, ``reference_<metric>``: the constant predictor's
    dev score), paired.csv, timing.csv, report.md, ``<data>.png`` (a panel per metric) and
    (``html``) report.html, with mask-overlap heatmaps when ``masks``, under ``out``; each
    ``pair_by`` (key, reference) adds ``paired_<key>.csv`` and a section. Print the Markdown and
    return its parts:

    ``{"csv", "paired_csv", "markdown", "html", "timing_csv": Path, "plots": {data: Path},
    "paired_across_csv": {key: Path}, "unfinished": {Path: why}, "summary", "paired", "runs",
    "timing": DataFrame, "paired_across": {key: DataFrame}, "sweep_keys", "group_keys",
    "baselines": [str], "references": {data: [Reference]}}``.

    Raises :class:`deepcuts.analysis.compare.PairByError` (nothing written) for a bad ``pair_by``.
    """
    folders = [Path(f) for f in folders]
    out = Path(out)
    baselines = [str(b) for b in baselines]
    df, unfinished = collect_runs(folders)
    sweep = sweep_keys(df)
    if df.empty:
        runs, keys = df, group_keys(df, sweep)
    else:
        runs, keys, _ = prepare(df, sweep)
    across = paired_across_all(df, pair_by, sweep)  # PairByError before anything is written
    summary = summarise(df, sweep)
    paired = paired_differences(df, baselines, sweep)
    times = stage_times(df, keys)  # every job, identical ones once: reruns are measurements too
    shown = [shown_path(f, out) for f in folders]
    unfinished_shown = {shown_path(p, out): why for p, why in unfinished.items()}
    out.mkdir(parents=True, exist_ok=True)
    table = runs.drop(columns=["config", "results"]).reset_index(drop=True)
    written: dict[str, Any] = {
        "csv": out / "report.csv", "paired_csv": out / "paired.csv", "markdown": out / "report.md",
        "timing_csv": out / "timing.csv", "plots": {}, "paired_across_csv": {},
        "unfinished": unfinished, "unfinished_shown": unfinished_shown, "folders_shown": shown,
        "summary": summary, "paired": paired, "runs": table, "timing": times,
        "paired_across": {key: t for key, _, t in across}, "sweep_keys": sweep,
        "group_keys": keys, "baselines": baselines,
    }
    references = dev_references(runs)
    written["references"] = references
    with_references(summary, references).to_csv(written["csv"], index=False)
    paired.to_csv(written["paired_csv"], index=False)
    times.to_csv(written["timing_csv"], index=False)
    text = render_markdown(summary, paired, keys=keys, sweep=sweep, baselines=baselines,
                           folders=shown, unfinished=unfinished_shown, n_runs=len(runs),
                           n_dupes=len(df) - len(runs), references=references)
    for key, reference, t in across:
        path = out / f"paired_{_safe(key)}.csv"
        t.to_csv(path, index=False)
        written["paired_across_csv"][key] = path
        col = key if key in t.columns else column(key)
        text += "\n" + render_paired_across(t, key, reference, col)
    text += ("\n## End-to-end time per run, as if nothing were cached (minutes, this machine)\n\n"
             "Per row and seed: the dense fine-tune and the scoring from the jobs that built them, "
             "plus the row's own masked fine-tune; identical jobs (one run key) count once.\n\n"
             + timing_markdown(times, keys))
    text += "\n" + unfinished_markdown(unfinished_shown)
    written["markdown"].write_text(text)
    for data, part in summary.groupby("data", sort=True):
        path = out / (_safe(data) + ".png")
        plot_ratio(str(data), part, table[table["data"].astype(str) == data], keys, path,
                   references=references.get(str(data), []))
        written["plots"][data] = path
    if html:
        from deepcuts.analysis.render.html_report import write_html_report  # reads masks: torch

        written["html"] = write_html_report(written, folders, out, masks=masks)
    print(text, end="", flush=True)
    return written


class ReportCallback(Callback):
    """Hydra callback: a multirun ends by writing and printing its report (``<sweep>/report``).

    Registered in ``conf/hydra/default.yaml``: ``callbacks: {report: {_target_:
    deepcuts.analysis.render.report.ReportCallback}}``; ``note`` (e.g. set by an experiment
    config) is printed under the report, to say how to read it.
    """

    def __init__(self, note: str | None = None) -> None:
        self.note = note

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_dir():
            print(f"report: sweep folder {sweep} does not exist; no run to report.", flush=True)
            return
        written = write_report([sweep], sweep / "report")
        print(f"report: {written['markdown']}, {written['html']}", flush=True)
        if self.note:
            print(self.note.strip(), flush=True)
