"""The comparison report: pruned dev metric per data x strategy x ratio over seeds (Figures 6-8),
split by every config value a sweep varied, with paired differences against baselines.

This module collects the runs and their sweep keys, computes the summary and the paired
differences, and writes the report (:func:`write_report`, also at the end of a Hydra multirun
via :class:`ReportCallback`). The Markdown is rendered by :mod:`deepcuts.analysis.report_markdown`,
the figures by :mod:`deepcuts.analysis.report_plots`, the HTML page by
:mod:`deepcuts.analysis.html_report`; :mod:`deepcuts.analysis.report_keys` holds what they share
(missing values, their order and text, grouping by keys).

It reads nothing but the outputs contract (``results.json`` and ``config.yaml`` in each run
folder), so it works on copied or old sweeps and never imports torch. Unfinished or failed runs
are listed, never dropped.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from deepcuts.analysis import stats
from deepcuts.analysis.reference import Reference, dev_references, with_references
from deepcuts.analysis.report_keys import (
    MISSING,
    PHASES,
    _metric_names,
    fmt,
    groups,
    norm,
    row_key,
    sort_value,
)
from deepcuts.analysis.report_markdown import DEV_FLAG, render_markdown
from deepcuts.analysis.report_plots import plot_ratio
from deepcuts.analysis.timing import stage_times, timing_markdown
from deepcuts.config.nested import flatten

__all__ = ["DEFAULT_BASELINES", "DEV_FLAG", "Reference", "ReportCallback", "collect_runs",
           "dev_references", "group_keys", "paired_differences", "read_config", "summarise",
           "sweep_keys", "write_report"]

RESULTS = "results.json"
CONFIG = "config.yaml"  # the resolved config, written beside results.json
RUN_MARKERS = ("config.yaml", "masks.safetensors")  # files that make a folder a run folder
FIELDS = ("data", "model", "strategy", "ratio", "ratio_basis", "seed", "monitor", "achieved_ratio")
EXTRA = ("scope", "keep_fraction", "prunable_sparsity")
PHASE_FIELD = {"pruned": "pruned", "pruned_last": "pruned_last_epoch", "dense": "dense",
               "dense_last": "dense_last_epoch"}
STATS = ["seeds", "seeds_nan", "pruned_mean", "pruned_std", "pruned_ci95", "pruned_last_mean",
         "pruned_last_std", "dense_mean", "dense_std", "dense_last_mean", "dense_last_std",
         "achieved_ratio_mean"]
PAIRED = ["baseline", "baseline_variant", "higher_is_better", "seeds", "paired_seeds",
          "unpaired_seeds", "method_mean", "baseline_mean", "mean_diff", "t_low", "t_high",
          "boot_low", "boot_high", "wins", "covers_zero", "verdict"]
DEFAULT_BASELINES = ("layer_mag_grad", "layer_mag_weight")

# Config keys that never split runs: bookkeeping, paths, logging, and the results' own fields.
IGNORED = {"seed", "output_dir", "cache_dir", "cache", "resume", "save_model", "data.root",
           "data.cache_dir", "data.num_workers", "trainer.enable_progress_bar",
           "trainer.log_every_n_steps", "trainer.enable_model_summary",
           "ratio", "ratio_basis", "selection"}
IGNORED_PREFIXES = ("logger.", "hydra.")
SWEEP_BASE = ("data", "model", "ratio_basis", "strategy", "ratio")  # where sweep keys are sought
SHADOWED = {*FIELDS, *EXTRA, *PHASES, "selection", "control", "metric", "higher_is_better", "path",
            "mtime", "config"}  # run columns a config key's column must not overwrite


def _state(folder: Path) -> dict | str:
    """The run's results if it finished, else why it does not count."""
    path = folder / RESULTS
    if not path.is_file():
        return "no results.json (unfinished or killed)"
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable results.json ({err})"
    if not isinstance(res, dict):
        return "results.json is not a JSON object"
    if res.get("status") != "complete":
        return f"status {res.get('status')!r}"
    missing = [k for k in (*FIELDS, "dense", "pruned") if k not in res]
    return f"results.json lacks {', '.join(missing)}" if missing else res


def _run_folders(folder: Path) -> Iterable[Path]:
    """Every folder below ``folder`` holding results or a run's other files. Runs do not nest, so
    their subfolders (``.hydra``, logs, a wandb ``config.yaml``) are not searched."""
    for root, dirs, files in os.walk(folder):
        if ".hydra" in dirs or RESULTS in files or any(m in files for m in RUN_MARKERS):
            dirs[:] = []
            yield Path(root)
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "wandb")


def _metric(metrics: Any, name: str) -> float:
    value = metrics.get(name) if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def read_config(run: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``config.yaml`` flattened to dotted keys; None when absent or unreadable."""
    path = Path(run) / CONFIG
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a broken config only costs the run its sweep keys
        return None
    return flatten(cfg) if isinstance(cfg, dict) else None


def _control(res: dict) -> bool:
    """Sanity controls (random masks, shuffled masks); old runs lack the field."""
    if "control" in res:
        return bool(res["control"])
    name = str(res.get("strategy"))
    return name == "random" or name.startswith("shuffled")


def collect_runs(folders: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[Path]]:
    """One row per complete run under ``folders`` (searched recursively) and the unfinished ones.

    Columns: the results fields, ``selection`` ("dev" for old runs), ``control``, ``metric`` (the
    monitor), ``higher_is_better``, the monitor value per phase (``pruned``, ``pruned_last``,
    ``dense``, ``dense_last``), every metric per phase (``pruned_<m>`` ...), ``path``, ``mtime``,
    ``config`` (flattened dict or None) and one column per sweep key (see :func:`sweep_keys`).
    """
    rows, unfinished, seen = [], [], set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"no such run folder: {folder}")
        for run in _run_folders(folder):
            if run.resolve() in seen:
                continue
            seen.add(run.resolve())
            res = _state(run)
            if isinstance(res, str):
                unfinished.append(run)
                continue
            monitor = res["monitor"]
            config = read_config(run)
            mode = None
            if config and config.get("data.monitor") == monitor:
                mode = config.get("data.monitor_mode")
            row = {
                **{k: res.get(k) for k in (*FIELDS, *EXTRA)},
                "ratio": float(res["ratio"]),
                "seed": int(res["seed"]),
                "selection": res.get("selection") or "dev",  # old runs: the best dev epoch
                "control": _control(res),
                "metric": monitor,
                "higher_is_better": stats.higher_is_better(monitor, mode),
            }
            for phase, source in PHASE_FIELD.items():
                metrics = res.get(source)
                row[phase] = _metric(metrics, monitor)
                for name in metrics if isinstance(metrics, dict) else ():
                    row[f"{phase}_{name}"] = _metric(metrics, name)
            rows.append({**row, "path": str(run), "mtime": (run / RESULTS).stat().st_mtime,
                         "config": config})
    fixed = [*FIELDS, *EXTRA, "selection", "control", "metric", "higher_is_better", *PHASES]
    names = sorted({n for r in rows for p in PHASES for n in r
                    if n.startswith(p + "_") and n not in fixed})
    per_metric = [f"{p}_{m}" for p in PHASES for m in _metric_names(names, p)]
    df = pd.DataFrame(rows, columns=[*fixed, *per_metric, "path", "mtime", "config"])
    df["config"] = df["config"].astype(object)
    return _with_sweep_columns(df, sweep_keys(df)), unfinished


def _config_value(config: Any, key: str) -> Any:
    """A run's value of a config key: explicit null is "null", no value is None."""
    if not isinstance(config, dict) or key not in config:
        return None
    value = config[key]
    return "null" if value is None else value


def _column(key: str) -> str:
    """The DataFrame column of a config key; one shadowing a results column gets ``config.``."""
    return f"config.{key}" if key in SHADOWED else key


def _config_key(column: str) -> str:
    """The config key behind a sweep column (inverse of :func:`_column`)."""
    key = column[len("config."):]
    return key if column.startswith("config.") and key in SHADOWED else column


def sweep_keys(df: pd.DataFrame) -> list[str]:
    """Config keys (as column names) that take more than one value within some (data, model,
    ratio_basis, ratio) group -- within a strategy too for ``strategy.`` keys: a sweep over them
    must not be averaged away, and runs that differ in them are never paired.

    A key absent from one run's config but present in another's counts as differing (e.g.
    ``scheduler=none`` vs ``linear_warmup``); runs without a ``config.yaml`` add nothing.
    Bookkeeping keys (paths, logging, cache, progress bars) and seed-bound keys (equal to the
    run's seed in every run having them, e.g. ``strategy.seed``) are ignored. Non-``strategy.``
    keys come first, then ``strategy.`` ones, each sorted by name.
    """
    if df.empty or "config" not in df:
        return []
    rows = [r for r in df.to_dict("records") if isinstance(r["config"], dict)]
    seed_bound: dict[str, bool] = {}
    for row in rows:
        for key, value in row["config"].items():
            if key in IGNORED or key.startswith(IGNORED_PREFIXES):
                continue
            is_seed = (isinstance(value, int) and not isinstance(value, bool)
                       and value == row["seed"])
            seed_bound[key] = seed_bound.get(key, True) and is_seed
    candidates = [k for k, bound in seed_bound.items() if not bound]
    values: dict[str, dict[tuple, set]] = {k: {} for k in candidates}
    for row in rows:
        for key in candidates:
            # a strategy's own settings vary across strategies by design; any other key that
            # differs within a data x ratio cell would make method and baseline runs unpaired
            base = tuple(norm(row[k]) for k in SWEEP_BASE
                         if k != "strategy" or key.startswith("strategy."))
            values[key].setdefault(base, set()).add(norm(_config_value(row["config"], key)))
    keys = [k for k, groups in values.items() if any(len(v) > 1 for v in groups.values())]
    return [_column(k) for k in sorted(keys, key=lambda k: (k.startswith("strategy."), k))]


def _with_sweep_columns(df: pd.DataFrame, sweep: Sequence[str]) -> pd.DataFrame:
    """``df`` with one object column per sweep key (None where a run has no value)."""
    df = df.copy()
    for col in sweep:
        key = _config_key(col)
        df[col] = pd.Series([_config_value(c, key) for c in df["config"]], index=df.index,
                            dtype=object)
    return df


def group_keys(df: pd.DataFrame, sweep: Sequence[str] | None = None) -> list[str]:
    """data, strategy, ratio, metric, selection and the sweep keys; plus model / ratio_basis when
    the runs mix them, so different models (or ratios counted on different bases) are never
    averaged together."""
    mixed = [k for k in ("model", "ratio_basis") if df[k].astype(str).nunique() > 1]
    sweep = sweep_keys(df) if sweep is None else sweep
    return ["data", *mixed, "strategy", "ratio", "metric", "selection", *sweep]


def _latest(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One run per seed and group (sweep keys included): a rerun replaces the older one."""
    kept: dict[tuple, Any] = {}
    for i, row in zip(df.index, df.to_dict("records"), strict=True):
        key = (*row_key(row, keys), row["seed"])
        if key not in kept or df.at[kept[key], "mtime"] <= row["mtime"]:
            kept[key] = i
    return df.loc[sorted(kept.values(), key=lambda i: (_row_order(df.loc[i], keys), i))]


def _row_order(row: Any, keys: Sequence[str]) -> tuple:
    return (*(sort_value(row[k]) for k in keys), sort_value(row.get("seed")))


def _sorted(rows: list[dict], keys: Sequence[str], columns: list[str]) -> pd.DataFrame:
    rows = sorted(rows, key=lambda r: _row_order(r, keys))
    return pd.DataFrame(rows, columns=columns)


def _prepare(df: pd.DataFrame, sweep: Sequence[str] | None) -> tuple[pd.DataFrame, list[str],
                                                                     list[str]]:
    """(kept runs with sweep columns, group keys, sweep keys)."""
    sweep = sweep_keys(df) if sweep is None else list(sweep)
    df = _with_sweep_columns(df, sweep)
    keys = group_keys(df, sweep)
    return _latest(df, keys), keys, sweep


def _per_metric_columns(df: pd.DataFrame) -> list[str]:
    return [f"{p}_{m}" for p in PHASES for m in _metric_names(df.columns, p)]


def summarise(df: pd.DataFrame, sweep: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group: seeds (and ``seeds_nan``, those whose pruned metric is NaN and so left out of
    the means), mean and sample std (ddof=1; NaN for one seed) of the monitor metric at
    the selected and last epoch, pruned and dense, the t half-width of the pruned mean's 95%
    interval, the mean achieved ratio, and ``<phase>_<metric>_mean/_std`` for every metric."""
    if df.empty:
        return pd.DataFrame(columns=["data", "strategy", "ratio", "metric", "selection",
                                     "control", *STATS])
    runs, keys, _ = _prepare(df, sweep)
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
    return _sorted(rows, keys, [*keys, "control", *STATS, *extra])


def _variant(row: Any, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={fmt(row[k])}" for k in keys if norm(row[k]) is not MISSING)


def paired_differences(df: pd.DataFrame, baselines: Sequence[str] = DEFAULT_BASELINES,
                       sweep: Sequence[str] | None = None) -> pd.DataFrame:
    """Each strategy group against each baseline: per-seed ``method - baseline`` of the pruned
    (selected-epoch) monitor metric over the seeds both have.

    A group pairs with the baseline's runs of the same data, model, ratio basis, ratio, metric,
    selection and non-``strategy.`` sweep values (same seed = same dense model, data order and
    head); a baseline swept over ``strategy.`` keys gives one row per variant
    (``baseline_variant``). A baseline is never paired with itself.
    """
    columns = ["data", "strategy", "ratio", "metric", "selection", "control", *PAIRED]
    if df.empty:
        return pd.DataFrame(columns=columns)
    runs, keys, sweep = _prepare(df, sweep)
    own = [k for k in sweep if k.startswith("strategy.")]
    cell = [k for k in keys if k != "strategy" and k not in own]
    by_cell: dict[tuple, pd.DataFrame] = {}
    for b in runs["strategy"].astype(str).unique():
        part = runs[runs["strategy"].astype(str) == b]
        for key, rows in groups(part, cell).items():
            by_cell[(b, *key)] = rows
    out = []
    for group in groups(runs, keys).values():
        first = group.iloc[0]
        method = dict(zip(group["seed"].astype(int).tolist(), group["pruned"].astype(float),
                          strict=True))
        higher = bool(first["higher_is_better"])
        source = str(first["strategy"]).removeprefix("shuffled_")  # a control vs what it shuffles
        for b in [*baselines, *([source] if source != str(first["strategy"]) else [])]:
            base = by_cell.get((b, *row_key(first, cell)))
            if str(first["strategy"]) == b or base is None:
                continue
            for variant in groups(base, own).values():
                ref = dict(zip(variant["seed"].astype(int).tolist(),
                               variant["pruned"].astype(float), strict=True))
                p = stats.paired(method, ref, higher)
                out.append({
                    **{k: first[k] for k in keys}, "control": bool(group["control"].any()),
                    "baseline": b, "baseline_variant": _variant(variant.iloc[0], own),
                    "higher_is_better": higher, "seeds": p.n,
                    "paired_seeds": " ".join(map(str, p.seeds)),
                    "unpaired_seeds": " ".join(map(str, p.unpaired)),
                    "method_mean": _mean([method[s] for s in p.seeds]),
                    "baseline_mean": _mean([ref[s] for s in p.seeds]),
                    "mean_diff": p.mean, "t_low": p.t_low, "t_high": p.t_high,
                    "boot_low": p.boot_low, "boot_high": p.boot_high, "wins": p.wins,
                    "covers_zero": p.covers_zero,
                    "verdict": p.verdict(str(first["strategy"]), b),
                })
    return _sorted(out, [*keys, "baseline", "baseline_variant"],
                   [*keys, "control", *PAIRED])


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def write_report(folders: Iterable[str | os.PathLike], out: str | os.PathLike,
                 baselines: Sequence[str] = DEFAULT_BASELINES, html: bool = True,
                 masks: bool = True, pair_by: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Write report.csv (summary, every metric, ``reference_<metric>``: the constant predictor's
    dev score), paired.csv, report.md, ``<data>.png`` (a panel per metric) and (``html``)
    report.html, with mask-overlap heatmaps when ``masks``, under ``out``; print the Markdown
    and return its parts:

    ``{"csv", "paired_csv", "markdown", "html": Path, "plots": {data: Path}, "unfinished":
    [Path], "summary", "paired", "runs": DataFrame, "sweep_keys", "group_keys": [str],
    "baselines", "references": {data: [Reference]}}``; each ``pair_by`` (key, reference) adds
    ``paired_<key>.csv`` and a section
    (:mod:`deepcuts.analysis.pair_by`; ``"paired_across"``, ``"paired_across_csv"``: by key).
    """
    folders = [Path(f) for f in folders]
    baselines = [str(b) for b in baselines]
    df, unfinished = collect_runs(folders)
    sweep = sweep_keys(df)
    if df.empty:
        runs, keys = df.drop(columns="config"), group_keys(df, sweep)
    else:
        kept, keys, _ = _prepare(df, sweep)
        runs = kept.drop(columns="config").reset_index(drop=True)
    summary = summarise(df, sweep)
    paired = paired_differences(df, baselines, sweep)
    from deepcuts.analysis.pair_by import paired_across_all, write_paired_across

    across = paired_across_all(df, pair_by, sweep)  # PairByError before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {
        "csv": out / "report.csv", "paired_csv": out / "paired.csv",
        "markdown": out / "report.md", "plots": {}, "unfinished": unfinished,
        "summary": summary, "paired": paired, "runs": runs, "sweep_keys": sweep,
        "group_keys": keys, "baselines": baselines,
    }
    references = dev_references(runs)
    written["references"] = references
    with_references(summary, references).to_csv(written["csv"], index=False)
    paired.to_csv(written["paired_csv"], index=False)
    n_dupes = len(df) - len(runs)
    text = render_markdown(summary, paired, keys=keys, sweep=sweep, baselines=baselines,
                           folders=folders, unfinished={p: _state(p) for p in unfinished},
                           n_runs=len(runs), n_dupes=n_dupes, references=references)
    written["paired_across_csv"], section = write_paired_across(across, out)
    text += section  # "## Paired across `key` (reference `value`)", one per pair_by
    written["paired_across"] = {key: table for key, _, table in across}
    times = stage_times(folders)
    times.to_csv(out / "timing.csv", index=False)
    text += ("\n## End-to-end time per run, as if nothing were cached (minutes, this machine)\n\n"
             + timing_markdown(times))
    written["markdown"].write_text(text)
    written["timing"] = times
    for data, part in summary.groupby("data", sort=True):
        path = out / (re.sub(r"[^\w.-]", "_", str(data)) + ".png")
        plot_ratio(str(data), part, runs[runs["data"].astype(str) == data], keys, path,
                   references=references.get(str(data), []))
        written["plots"][data] = path
    if html:
        from deepcuts.analysis.html_report import write_html_report

        written["html"] = write_html_report(written, folders, out, masks=masks)
    print(text, end="", flush=True)
    return written


class ReportCallback(Callback):
    """Hydra callback: a multirun ends by writing and printing its report (``<sweep>/report``).

    Register it in the hydra config: ``callbacks: {report: {_target_:
    deepcuts.analysis.report.ReportCallback}}``; ``note`` (e.g. set by an experiment config) is
    printed under the report, to say how to read it.
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
