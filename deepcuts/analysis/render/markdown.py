"""The comparison report as Markdown (``report.md``): per data set the methods and the sanity
controls (mean ± std over seeds), the paired differences against the baselines with their
intervals and verdicts, the sections paired across one key (``--pair-by``), the end-to-end time
per run, and the unfinished or failed runs.

It renders the tables :mod:`deepcuts.analysis.summary`, :mod:`deepcuts.analysis.compare` and
:mod:`deepcuts.analysis.timing` computed; nothing is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from deepcuts.analysis import stats
from deepcuts.analysis.keys import (
    HIDDEN_METRICS,
    NONE,
    fmt,
    groups,
    metric_column,
    shown_keys,
    shown_metrics,
)

__all__ = ["DEV_FLAG", "render_markdown", "render_paired_across", "timing_markdown",
           "unfinished_markdown"]

DEV_FLAG = "selected on the reported set"


def render_markdown(summary: pd.DataFrame, paired: pd.DataFrame, *, keys: Sequence[str],
                    sweep: Sequence[str], baselines: Sequence[str], folders: Sequence[str],
                    unfinished: dict[str, str], n_runs: int, n_dupes: int,
                    references: dict[str, list[Any]] | None = None) -> str:
    """The report's text up to the paired differences. ``keys``: the group keys, ``sweep``: the
    sweep keys among them, ``folders``: the run folders as the report shows them,
    ``unfinished``: each unfinished or failed run (as shown) and why it does not count,
    ``n_runs``: the runs counted, ``n_dupes``: older duplicate runs ignored, ``references``: per
    data set the constant predictor's dev scores (:class:`deepcuts.analysis.reference.Reference`),
    a line under each table. :func:`unfinished_markdown` ends the report."""
    references = references or {}
    where = ", ".join(f"`{f}`" for f in folders)
    lines = ["# DeepCuts comparison report", ""]
    if summary.empty:
        lines += [f"No complete run under {where}; {len(unfinished)} unfinished or failed.", ""]
    else:
        dev = (summary["selection"] == "dev").any()
        lines += [f"{n_runs} complete runs under {where}; pruned dev metric as mean ± sample std "
                  "over seeds, at the epoch the run's `selection` chose and at the last epoch."
                  + (f" Selection `dev` (also every run that predates `selection`) is {DEV_FLAG}: "
                     "the epoch was chosen on the dev set the metric is reported on."
                     if dev else "")
                  + " Every metric of the task is shown, the monitored one first ("
                  + ", ".join(f"`{m}`" for m in HIDDEN_METRICS) + " only in report.csv); under "
                  "each table, what a constant predictor scores on the dev set (the majority "
                  "class, or the dev mean for regression).", ""]
        lines += ["Sweep keys (config values that differ within a data × model × ratio cell, "
                  "`strategy.*` ones within a strategy; rows are split by them and only runs "
                  "with equal values are paired): "
                  + (", ".join(f"`{k}`" for k in sweep) + f"; `{NONE}`: the run has no value "
                     "(no `config.yaml`, or a config without the key)." if sweep else "none."),
                  ""]
    if n_dupes:
        lines += [f"{n_dupes} older duplicate run(s) of the same seed and settings were ignored.",
                  ""]
    for data, part in summary.groupby("data", sort=True):
        metric = ", ".join(sorted(part["metric"].astype(str).unique()))
        lines += [f"## {data} ({metric})", ""] + _summary_section(
            part, keys, metric, _reference_lines(references.get(str(data), [])))

    lines += ["## Paired differences", ""]
    names = ", ".join(f"`{b}`" for b in baselines) or "none"
    if not summary.empty:
        lines += [f"Against the baselines {names}: per seed, method − baseline of the pruned "
                  "metric at the selected epoch, over the seeds both have (same seed = same "
                  "dense model, data order and head); its mean, the 95% Student-t interval, the "
                  f"95% percentile bootstrap ({stats.RESAMPLES:,} resamples, seed "
                  f"{stats.BOOTSTRAP_SEED}) and the seeds the method wins (strictly better; "
                  "lower is better for mse/loss). A difference is detected only when both "
                  "intervals exclude 0; when every seed gives the same difference there is no "
                  "interval (\"all seeds equal\"). Two runs of a seed are paired only when they "
                  "came from the same dense model (results.json `stage_keys.dense`); a seed left "
                  "out is named with why. A `shuffled_<x>` control is also paired with `<x>`, the "
                  "method whose masks it shuffles.", ""]
        tested = int((paired["covers_zero"].notna()).sum()) if not paired.empty else 0
        if tested:
            lines += [f"{tested} comparisons have an interval, each at 95% with no correction for "
                      f"multiplicity: if no strategy differed, about {0.05 * tested:.1f} of them "
                      "would still exclude 0 by chance.", ""]
    present = set(summary["strategy"].astype(str)) if not summary.empty else set()
    absent = [b for b in baselines if b not in present]
    if absent and not summary.empty:
        lines += ["No runs of baseline(s) " + ", ".join(f"`{b}`" for b in absent) + ".", ""]
    if paired.empty:
        lines += ["No pairs.", ""]
    for data, part in paired.groupby("data", sort=True):
        metric = ", ".join(sorted(part["metric"].astype(str).unique()))
        lines += [f"### {data} ({metric}): paired differences", ""] + _paired_section(part, keys)
    return "\n".join(lines) + "\n"


def unfinished_markdown(unfinished: dict[str, str]) -> str:
    """The report's last section: each unfinished or failed run (as shown) and why."""
    lines = [f"## Unfinished or failed runs ({len(unfinished)})", ""]
    lines += [f"- `{p}`: {why}" for p, why in unfinished.items()] or ["None."]
    return "\n".join(lines) + "\n"


def _summary_section(part: pd.DataFrame, keys: Sequence[str], metric: str,
                     reference: Sequence[str] = ()) -> list[str]:
    """Per row: achieved ratio, every metric pruned (the monitor first), the monitor at the last
    epoch, every metric of the dense model, the seeds; ``reference`` under each table."""
    head, align, ident = _row_head(part, keys)
    metrics = shown_metrics(part)
    single = part["metric"].astype(str).nunique() == 1
    head += ["achieved ratio", *(f"pruned {m}" for m in metrics), f"pruned {metric} (last epoch)",
             *(f"dense {m}" for m in metrics), "seeds"]
    align += ["---:"] * (3 + 2 * len(metrics))

    def col(r: Any, phase: str, m: str) -> str:
        if single and m == metric:  # the monitor: the columns the statistics were made on
            return _pm(r[f"{phase}_mean"], r[f"{phase}_std"])
        return _pm(r.get(metric_column(part, phase, m)), r.get(metric_column(part, phase, m,
                                                                             "std")))

    lines = _dev_note(part)
    for title, rows in _split(part):
        if title == "Sanity controls" and rows.empty:
            continue
        cells = [[*ident(r), f"{r['achieved_ratio_mean']:.2f}",
                  *(col(r, "pruned", m) for m in metrics),
                  _pm(r["pruned_last_mean"], r["pruned_last_std"]),
                  *(col(r, "dense", m) for m in metrics), _seeds(r)]
                 for _, r in rows.iterrows()]
        lines += [f"### {title}", ""]
        lines += _table(head, align, cells) if cells else ["None.", ""]
        lines += [*reference, ""] if reference and cells else []
    return lines


def _reference_lines(refs: Sequence[Any]) -> list[str]:
    """One line per dev set with a constant-predictor reference, one per dev set without."""
    out = [f"Reference, {line}." for r in refs for line in r.lines]
    out += [note for r in refs for note in r.notes]
    if not refs:
        out = ["No reference line: no run folder names its dev set."]
    return [line + "  " if i < len(out) - 1 else line for i, line in enumerate(out)]


def _paired_section(part: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    head, align, ident = _row_head(part, keys)
    head += ["baseline", "seeds", "mean diff", "95% t-interval", "95% bootstrap", "wins",
             "verdict"]
    align += ["---", "---:", "---:", "---", "---", "---:", "---"]
    return _paired_tables(part, head, align, lambda r: [*ident(r), _reference_name(r), *_paired_cells(r)])


def _paired_tables(part: pd.DataFrame, head: list[str], align: list[str], row_cells) -> list[str]:
    """The dev note, then a "#### Methods" / "#### Sanity controls" table of paired rows each."""
    lines = _dev_note(part)
    for title, rows in _split(part):
        if not rows.empty:
            lines += [f"#### {title}", ""] + _table(head, align, [row_cells(r) for _, r in rows.iterrows()])
    return lines


def _reference_name(r: Any) -> str:
    """A paired row's reference: the baseline, with its variant when it has one."""
    return r["baseline"] + (f" ({r['baseline_variant']})" if r["baseline_variant"] else "")


def _paired_cells(r: Any) -> list[str]:
    """A paired row's statistics: seeds, mean difference, t and bootstrap intervals, wins, verdict."""
    mean = "n/a" if pd.isna(r["mean_diff"]) else f"{r['mean_diff']:+.4f}"
    return [str(r["seeds"]), mean, _interval(r["t_low"], r["t_high"]), _interval(r["boot_low"], r["boot_high"]),
            f"{r['wins']}/{r['seeds']}", str(r["verdict"])]


def _row_head(part: pd.DataFrame, keys: Sequence[str]) -> tuple[list[str], list[str], Any]:
    """Header, alignment and a cell maker for a row's identity: [model, ratio_basis,] strategy,
    ratio, the sweep values, selection (the order rows are sorted in)."""
    shown = shown_keys(part, keys)
    lead = [k for k in shown if k in ("model", "ratio_basis")]
    sweep = [k for k in shown if k not in lead]
    head = [*lead, "strategy", "ratio", *sweep, "selection"]
    align = ["---"] * (len(lead) + 1) + ["---:"] + ["---"] * (len(sweep) + 1)

    def cells(r: Any) -> list[str]:
        return [*(fmt(r[k]) for k in lead), str(r["strategy"]), f"{r['ratio']:g}",
                *(fmt(r[k]) for k in sweep), _selection(r["selection"])]

    return head, align, cells


def _dev_note(part: pd.DataFrame) -> list[str]:
    n = int((part["selection"] == "dev").sum())
    if not n:
        return []
    return [f"> **Note:** {n} row(s) below used selection `dev`, {DEV_FLAG}: the pruned metric "
            "is the best epoch on the dev set it is reported on, so it is optimistic; the "
            "last-epoch column is not selected.", ""]


def _split(part: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    control = part["control"].astype(bool)
    return [("Methods", part[~control]), ("Sanity controls", part[control])]


def _seeds(r: Any) -> str:
    """The seed count, naming those whose metric is NaN (left out of the mean)."""
    nan = int(r.get("seeds_nan", 0) or 0)
    return f"{r['seeds']} ({nan} NaN, not in the mean)" if nan else str(r["seeds"])


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.4f} ± " + ("n/a" if pd.isna(std) else f"{std:.4f}")


def _interval(low: float, high: float) -> str:
    return "—" if pd.isna(low) else f"[{low:+.4f}, {high:+.4f}]"


def _selection(value: Any) -> str:
    return f"dev ({DEV_FLAG})" if value == "dev" else fmt(value)


def _table(head: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


# --- paired across one key (--pair-by) --------------------------------------------------------


def render_paired_across(table: pd.DataFrame, key: str, reference: str, col: str) -> str:
    """The section "## Paired across `key` (reference `reference`)" of report.md: per data set
    a table like the paired differences'. ``col``: the key's column in ``table``."""
    prefix = (key.rpartition(".")[0] or key) + ".*"
    variants = not table.empty and bool(
        (table[["variant", "baseline_variant"]].astype(str) != "").any(axis=None))
    lines = [f"## Paired across `{key}` (reference `{reference}`)", "",
             f"Per seed, the pruned metric at the selected epoch of the runs with another `{key}` "
             f"minus that of the runs with `{key}={reference}` and everything else equal (data, "
             "model, strategy, ratio, selection, every other sweep key), over the seeds both "
             "have and, unless the key feeds the dense fine-tune, came from the same dense model"
             + (f"; `{prefix}` settings that only some values of `{key}` have are shown as the "
                "variant and do not block pairing" if variants else "")
             + ". Mean, 95% t-interval, 95% bootstrap and wins (this value better) as in the "
             "paired differences; achieved ratio: this value's mean vs the reference's over the "
             "paired seeds; 0 seeds: no reference run with these settings.", ""]
    if table.empty:
        return "\n".join([*lines, "No pairs: no run has another value of the key beside a "
                          "reference run.", ""]) + "\n"
    cell = list(table.columns[:list(table.columns).index(col)])  # the columns before the key
    for data, part in table.groupby("data", sort=True):
        metric = ", ".join(sorted(part["metric"].astype(str).unique()))
        lines += [f"### {data} ({metric}): paired across `{key}`", ""]
        lines += _across_section(part, cell, col, key)
    return "\n".join(lines).rstrip("\n") + "\n"


def _across_section(part: pd.DataFrame, cell: Sequence[str], col: str, key: str) -> list[str]:
    head, align, ident = _row_head(part, cell)
    variant = bool((part["variant"].astype(str) != "").any())
    head += [f"`{key}`", *(["variant"] if variant else []), "reference", "achieved ratio",
             "seeds", "mean diff", "95% t-interval", "95% bootstrap", "wins", "verdict"]
    align += ["---"] * (2 + variant) + ["---:"] * 3 + ["---"] * 2 + ["---:", "---"]
    return _paired_tables(part, head, align, lambda r: [
        *ident(r), fmt(r[col]), *([str(r["variant"])] if variant else []), _reference_name(r), _ratios(r),
        *_paired_cells(r)])


def _ratios(r: Any) -> str:
    a, b = r["achieved_ratio_mean"], r["baseline_achieved_ratio_mean"]
    return "n/a" if pd.isna(a) or pd.isna(b) else f"{a:.2f} vs {b:.2f}"


# --- end-to-end time ---------------------------------------------------------------------------


def _minutes(seconds: pd.Series) -> str:
    values = pd.to_numeric(seconds, errors="coerce") / 60
    if values.isna().any():
        return "n/a"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def timing_markdown(times: pd.DataFrame, keys: Sequence[str]) -> str:
    """Per report group (``keys``: the group keys), mean ± sd over seeds of each stage's minutes
    (:func:`deepcuts.analysis.timing.stage_times`)."""
    if times.empty:
        return "No complete runs.\n"
    lines = []
    for data, part in times.groupby("data", sort=True):
        head, align, ident = _row_head(part, keys)
        head = ["data", *head, "seeds", "dense", "scoring", "masked fine-tune", "end-to-end (min)"]
        align = ["---", *align, "---:", "---:", "---:", "---:", "---:"]
        cells = []
        for rows in groups(part, keys).values():  # in the order the computation sorted them
            first = rows.iloc[0]
            skipped = " (skipped)" if rows["dense_skipped"].astype(bool).all() else ""
            cells.append([str(data), *ident(first), str(len(rows)),
                          _minutes(rows["dense_s"]) + skipped, _minutes(rows["scoring_s"]),
                          _minutes(rows["pruned_s"]), _minutes(rows["end_to_end_s"])])
        lines += _table(head, align, cells)
    return "\n".join(lines)

