"""The comparison report: pruned dev metric per data x strategy x ratio over seeds (Figures 6-8),
split by every config value a sweep varied, with paired differences against baselines.

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

RESULTS = "results.json"
CONFIG = "config.yaml"  # the resolved config, written beside results.json
RUN_MARKERS = ("config.yaml", "masks.safetensors")  # files that make a folder a run folder
FIELDS = ("data", "model", "strategy", "ratio", "ratio_basis", "seed", "monitor", "achieved_ratio")
EXTRA = ("scope", "keep_fraction", "prunable_sparsity")
PHASES = ("pruned", "pruned_last", "dense", "dense_last")  # selected / last epoch, after / before
PHASE_FIELD = {"pruned": "pruned", "pruned_last": "pruned_last_epoch", "dense": "dense",
               "dense_last": "dense_last_epoch"}
STATS = ["seeds", "pruned_mean", "pruned_std", "pruned_ci95", "pruned_last_mean",
         "pruned_last_std", "dense_mean", "dense_std", "dense_last_mean", "dense_last_std",
         "achieved_ratio_mean"]
PAIRED = ["baseline", "baseline_variant", "higher_is_better", "seeds", "paired_seeds",
          "unpaired_seeds", "method_mean", "baseline_mean", "mean_diff", "t_low", "t_high",
          "boot_low", "boot_high", "wins", "covers_zero", "verdict"]
DEFAULT_BASELINES = ("layer_mag_grad", "layer_mag_weight")
DEV_FLAG = "selected on the reported set"
NONE = "—"  # a sweep key a run has no value for (no config.yaml, or an older config)

# Config keys that never split runs: bookkeeping, paths, logging, and the results' own fields.
IGNORED = {"seed", "output_dir", "cache_dir", "cache", "resume", "save_model", "data.root",
           "data.cache_dir", "data.num_workers", "trainer.enable_progress_bar",
           "trainer.log_every_n_steps", "trainer.enable_model_summary",
           "ratio", "ratio_basis", "selection"}
IGNORED_PREFIXES = ("logger.", "hydra.")
SWEEP_BASE = ("data", "model", "ratio_basis", "strategy", "ratio")  # where sweep keys are sought
SHADOWED = {*FIELDS, *EXTRA, *PHASES, "selection", "control", "metric", "higher_is_better", "path",
            "mtime", "config"}  # run columns a config key's column must not overwrite


class _Missing:
    """A run without a value for a key; sorts last, equals only itself."""

    def __repr__(self) -> str:
        return NONE


MISSING = _Missing()


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


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"optimizer.lr": 5e-05, ...}``; lists become JSON text (hashable)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, (list, tuple)):
        return {prefix[:-1]: json.dumps(node)}
    return {prefix[:-1]: node}


def read_config(run: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``config.yaml`` flattened to dotted keys; None when absent or unreadable."""
    path = Path(run) / CONFIG
    if not path.is_file():
        return None
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a broken config only costs the run its sweep keys
        return None
    return _flatten(cfg) if isinstance(cfg, dict) else None


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
            for phase, field in PHASE_FIELD.items():
                metrics = res.get(field)
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


def _metric_names(columns: Iterable[str], phase: str) -> list[str]:
    """Metric names of one phase among ``<phase>_<m>`` columns (``pruned_last_x`` is not a
    ``pruned`` metric)."""
    longer = [p for p in PHASES if p != phase and p.startswith(phase + "_")]
    return sorted({c[len(phase) + 1:] for c in columns if c.startswith(phase + "_")
                   and c not in PHASES and not any(c.startswith(p + "_") for p in longer)})


def _norm(value: Any) -> Any:
    """A hashable, comparable stand-in: NaN and None (no value) become MISSING."""
    if value is None or value is MISSING or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return value


def _sort_value(value: Any) -> tuple:
    """Numbers by value, then text, then missing: a total order over mixed sweep values."""
    value = _norm(value)
    if value is MISSING:
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


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
    ratio_basis, strategy, ratio) group: a sweep over them must not be averaged away.

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
        base = tuple(_norm(row[k]) for k in SWEEP_BASE)
        for key in candidates:
            values[key].setdefault(base, set()).add(_norm(_config_value(row["config"], key)))
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


def _key(row: dict, keys: Sequence[str]) -> tuple:
    return tuple(_norm(row[k]) for k in keys)


def _groups(df: pd.DataFrame, keys: Sequence[str]) -> dict[tuple, pd.DataFrame]:
    """Rows grouped by ``keys``, missing values a group of their own (pandas would drop them)."""
    index: dict[tuple, list] = {}
    for i, row in zip(df.index, df.to_dict("records"), strict=True):
        index.setdefault(_key(row, keys), []).append(i)
    return {k: df.loc[idx] for k, idx in index.items()}


def _latest(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One run per seed and group (sweep keys included): a rerun replaces the older one."""
    kept: dict[tuple, Any] = {}
    for i, row in zip(df.index, df.to_dict("records"), strict=True):
        key = (*_key(row, keys), row["seed"])
        if key not in kept or df.at[kept[key], "mtime"] <= row["mtime"]:
            kept[key] = i
    return df.loc[sorted(kept.values(), key=lambda i: (_row_order(df.loc[i], keys), i))]


def _row_order(row: Any, keys: Sequence[str]) -> tuple:
    return (*(_sort_value(row[k]) for k in keys), _sort_value(row.get("seed")))


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
    """Per group: seeds, mean and sample std (ddof=1; NaN for one seed) of the monitor metric at
    the selected and last epoch, pruned and dense, the t half-width of the pruned mean's 95%
    interval, the mean achieved ratio, and ``<phase>_<metric>_mean/_std`` for every metric."""
    if df.empty:
        return pd.DataFrame(columns=["data", "strategy", "ratio", "metric", "selection",
                                     "control", *STATS])
    runs, keys, _ = _prepare(df, sweep)
    metrics = _per_metric_columns(runs)
    rows = []
    for part in _groups(runs, keys).values():
        first = part.iloc[0]
        row = {k: first[k] for k in keys}
        row["control"] = bool(part["control"].astype(bool).any())
        row["seeds"] = int(part["seed"].nunique())
        for col in [*PHASES, *metrics]:
            values = pd.to_numeric(part[col], errors="coerce")
            row[f"{col}_mean"] = float(values.mean())
            row[f"{col}_std"] = float(values.std())
        finite = int(pd.to_numeric(part["pruned"], errors="coerce").notna().sum())
        row["pruned_ci95"] = stats.t_halfwidth(row["pruned_std"], finite)
        row["achieved_ratio_mean"] = float(pd.to_numeric(part["achieved_ratio"]).mean())
        rows.append(row)
    extra = [f"{c}_{s}" for c in metrics for s in ("mean", "std")]
    return _sorted(rows, keys, [*keys, "control", *STATS, *extra])


def _variant(row: Any, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={_fmt(row[k])}" for k in keys if _norm(row[k]) is not MISSING)


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
    for b in baselines:
        part = runs[runs["strategy"].astype(str) == b]
        for key, rows in _groups(part, cell).items():
            by_cell[(b, *key)] = rows
    out = []
    for group in _groups(runs, keys).values():
        first = group.iloc[0]
        method = dict(zip(group["seed"].astype(int).tolist(), group["pruned"].astype(float),
                          strict=True))
        higher = bool(first["higher_is_better"])
        for b in baselines:
            base = by_cell.get((b, *_key(first, cell)))
            if str(first["strategy"]) == b or base is None:
                continue
            for variant in _groups(base, own).values():
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


def _fmt(value: Any) -> str:
    """A sweep value for a table cell."""
    value = _norm(value)
    if value is MISSING:
        return NONE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.4f} ± " + ("n/a" if pd.isna(std) else f"{std:.4f}")


def _interval(low: float, high: float) -> str:
    return "—" if pd.isna(low) else f"[{low:+.4f}, {high:+.4f}]"


def _selection(value: Any) -> str:
    return f"dev ({DEV_FLAG})" if value == "dev" else _fmt(value)


def _table(head: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _shown(part: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The keys worth a column in this part: model / ratio_basis when mixed, sweep keys with a
    value here."""
    return [k for k in keys if k in ("model", "ratio_basis")
            or (k not in ("data", "strategy", "ratio", "metric", "selection")
                and any(_norm(v) is not MISSING for v in part[k]))]


def _row_head(part: pd.DataFrame, keys: Sequence[str]) -> tuple[list[str], list[str], Any]:
    """Header, alignment and a cell maker for a row's identity: [model, ratio_basis,] strategy,
    ratio, the sweep values, selection (the order rows are sorted in)."""
    shown = _shown(part, keys)
    lead = [k for k in shown if k in ("model", "ratio_basis")]
    sweep = [k for k in shown if k not in lead]
    head = [*lead, "strategy", "ratio", *sweep, "selection"]
    align = ["---"] * (len(lead) + 1) + ["---:"] + ["---"] * (len(sweep) + 1)

    def cells(r: Any) -> list[str]:
        return [*(_fmt(r[k]) for k in lead), str(r["strategy"]), f"{r['ratio']:g}",
                *(_fmt(r[k]) for k in sweep), _selection(r["selection"])]

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


def _summary_section(part: pd.DataFrame, keys: Sequence[str], metric: str) -> list[str]:
    head, align, ident = _row_head(part, keys)
    head += ["achieved ratio", f"pruned {metric}", f"pruned {metric} (last epoch)",
             f"dense {metric}", "seeds"]
    align += ["---:"] * 5
    lines = _dev_note(part)
    for title, rows in _split(part):
        if title == "Sanity controls" and rows.empty:
            continue
        cells = [[*ident(r), f"{r['achieved_ratio_mean']:.2f}",
                  _pm(r["pruned_mean"], r["pruned_std"]),
                  _pm(r["pruned_last_mean"], r["pruned_last_std"]),
                  _pm(r["dense_mean"], r["dense_std"]), str(r["seeds"])]
                 for _, r in rows.iterrows()]
        lines += [f"### {title}", ""]
        lines += _table(head, align, cells) if cells else ["None.", ""]
    return lines


def _paired_section(part: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    head, align, ident = _row_head(part, keys)
    head += ["baseline", "seeds", "mean diff", "95% t-interval", "95% bootstrap", "wins",
             "verdict"]
    align += ["---", "---:", "---:", "---", "---", "---:", "---"]
    lines = _dev_note(part)
    for title, rows in _split(part):
        if rows.empty:
            continue
        cells = []
        for _, r in rows.iterrows():
            base = r["baseline"] + (f" ({r['baseline_variant']})" if r["baseline_variant"] else "")
            mean = "n/a" if pd.isna(r["mean_diff"]) else f"{r['mean_diff']:+.4f}"
            cells.append([*ident(r), base, str(r["seeds"]), mean,
                          _interval(r["t_low"], r["t_high"]),
                          _interval(r["boot_low"], r["boot_high"]),
                          f"{r['wins']}/{r['seeds']}", str(r["verdict"])])
        lines += [f"#### {title}", ""] + _table(head, align, cells)
    return lines


def _markdown(summary: pd.DataFrame, paired: pd.DataFrame, keys: list[str], sweep: list[str],
              baselines: Sequence[str], folders: list[Path], unfinished: list[Path], n_runs: int,
              n_dupes: int) -> str:
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
                     if dev else ""), ""]
        lines += ["Sweep keys (config values that differ within a data × model × strategy × "
                  "ratio group; rows are split by them): "
                  + (", ".join(f"`{k}`" for k in sweep) + f"; `{NONE}`: the run has no value "
                     "(no `config.yaml`, or a config without the key)." if sweep else "none."),
                  ""]
    if n_dupes:
        lines += [f"{n_dupes} older duplicate run(s) of the same seed and settings were ignored.",
                  ""]
    for data, part in summary.groupby("data", sort=True):
        metric = ", ".join(sorted(part["metric"].astype(str).unique()))
        lines += [f"## {data} ({metric})", ""] + _summary_section(part, keys, metric)

    lines += ["## Paired differences", ""]
    names = ", ".join(f"`{b}`" for b in baselines) or "none"
    if not summary.empty:
        lines += [f"Against the baselines {names}: per seed, method − baseline of the pruned "
                  "metric at the selected epoch, over the seeds both have (same seed = same "
                  "dense model, data order and head); its mean, the 95% Student-t interval, the "
                  f"95% percentile bootstrap ({stats.RESAMPLES:,} resamples, seed "
                  f"{stats.BOOTSTRAP_SEED}) and the seeds the method wins (strictly better; "
                  "lower is better for mse/loss). A difference is detected only when both "
                  "intervals exclude 0.", ""]
    present = set(summary["strategy"].astype(str)) if not summary.empty else set()
    absent = [b for b in baselines if b not in present]
    if absent and not summary.empty:
        lines += ["No runs of baseline(s) " + ", ".join(f"`{b}`" for b in absent) + ".", ""]
    if paired.empty:
        lines += ["No pairs.", ""]
    for data, part in paired.groupby("data", sort=True):
        metric = ", ".join(sorted(part["metric"].astype(str).unique()))
        lines += [f"### {data} ({metric}): paired differences", ""] + _paired_section(part, keys)

    lines += [f"## Unfinished or failed runs ({len(unfinished)})", ""]
    lines += [f"- `{p}`: {_state(p)}" for p in unfinished] or ["None."]
    return "\n".join(lines) + "\n"


def _plot(data: str, summary: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str],
          path: Path) -> None:
    """Metric vs compression ratio, a line per strategy and sweep values (error bars: 95%
    t-interval of the mean over seeds, none for one seed), controls dotted, dense dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = _shown(summary, keys)
    if summary["selection"].astype(str).nunique() > 1:
        shown.append("selection")
    line_keys = [k for k in keys if k not in ("data", "ratio", "metric")]
    for _, line in sorted(_groups(summary, line_keys).items(),
                          key=lambda kv: tuple(_sort_value(v) for v in kv[0])):
        line = line.sort_values("ratio")
        first = line.iloc[0]
        label = " · ".join([str(first["strategy"]), *_labels(first, shown)])
        ax.errorbar(line["ratio"], line["pruned_mean"], yerr=line["pruned_ci95"].fillna(0.0),
                    marker="o", capsize=3, label=label,
                    linestyle=":" if bool(first["control"]) else "-")
    dense_keys = [k for k in shown if k not in ("ratio_basis", "selection")
                  and not k.startswith("strategy.")]
    per_seed: dict[tuple, list[float]] = {}
    for key, part in _groups(runs, [*dense_keys, "seed"]).items():
        per_seed.setdefault(key[:-1], []).append(pd.to_numeric(part["dense"]).mean())
    styles = ["--", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    for i, (key, values) in enumerate(sorted(per_seed.items(),
                                             key=lambda kv: tuple(map(_sort_value, kv[0])))):
        level = pd.Series(values, dtype=float).mean()
        if not pd.isna(level):
            name = " · ".join(_labels(dict(zip(dense_keys, key, strict=True)), dense_keys))
            ax.axhline(level, linestyle=styles[i % len(styles)], color="gray", alpha=0.8,
                       label=f"dense · {name}" if name else "dense")
    metric = ", ".join(sorted(summary["metric"].astype(str).unique()))
    ax.set_xticks(sorted(summary["ratio"].unique()))
    bases = sorted(runs["ratio_basis"].astype(str).unique()) if "ratio_basis" in runs else []
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
    return [f"{k}={_fmt(row[k])}" if "." in k else _fmt(row[k]) for k in keys
            if _norm(row[k]) is not MISSING]


def write_report(folders: Iterable[str | os.PathLike], out: str | os.PathLike,
                 baselines: Sequence[str] = DEFAULT_BASELINES, html: bool = True,
                 masks: bool = True) -> dict[str, Any]:
    """Write report.csv (summary), paired.csv, report.md, ``<data>.png`` and (``html``)
    report.html, with mask-overlap heatmaps when ``masks``, under ``out``; print the Markdown
    and return its parts:

    ``{"csv", "paired_csv", "markdown", "html": Path, "plots": {data: Path}, "unfinished":
    [Path], "summary", "paired", "runs": DataFrame, "sweep_keys", "group_keys": [str],
    "baselines"}``.
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {
        "csv": out / "report.csv", "paired_csv": out / "paired.csv",
        "markdown": out / "report.md", "plots": {}, "unfinished": unfinished,
        "summary": summary, "paired": paired, "runs": runs, "sweep_keys": sweep,
        "group_keys": keys, "baselines": baselines,
    }
    summary.to_csv(written["csv"], index=False)
    paired.to_csv(written["paired_csv"], index=False)
    n_dupes = len(df) - len(runs)
    text = _markdown(summary, paired, keys, sweep, baselines, folders, unfinished, len(runs),
                     n_dupes)
    written["markdown"].write_text(text)
    for data, part in summary.groupby("data", sort=True):
        path = out / (re.sub(r"[^\w.-]", "_", str(data)) + ".png")
        _plot(str(data), part, runs[runs["data"].astype(str) == data], keys, path)
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
