"""The run table every analysis starts from: run folders found one way, the outputs contract read
one way, and the sweep keys (config values a sweep varied) computed one way.

A run folder holds ``results.json`` (status ``complete`` once the job finished) and the resolved
``config.yaml`` beside it (``masks.safetensors`` too, unless the folder was copied without it).
:func:`collect_runs` reads every run folder under some folders into one table; unfinished or
failed runs are returned with the reason, never dropped silently. Nothing here imports torch.

Sweep keys are config keys whose value differs between runs that would otherwise be compared:
rows are split by them and runs that differ in them are never paired. Result-neutral keys (how
progress is shown, where files go, the logger, ... : :data:`deepcuts.config.neutral.RESULT_NEUTRAL`,
the list the stage cache's keys use) never split cells.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from deepcuts.analysis import stats
from deepcuts.analysis.keys import PHASES, metric_names, norm, row_key, sort_value
from deepcuts.config.nested import flatten
from deepcuts.config.neutral import dense_input, neutral

__all__ = ["CONFIG", "FIELDS", "MASKS", "RESULTS", "by_seed", "collect_runs", "column",
           "config_key", "config_value", "dense_input", "dense_key", "group_keys", "identical_jobs_once",
           "ignored", "latest", "read_config", "row_order", "run_folders", "run_state",
           "shown_path", "stage_key", "sweep_keys", "with_sweep_columns"]

RESULTS = "results.json"
CONFIG = "config.yaml"  # the resolved config, written beside results.json
MASKS = "masks.safetensors"
RUN_MARKERS = (CONFIG, MASKS)  # files that make a folder a run folder even before results.json
FIELDS = ("data", "model", "strategy", "ratio", "ratio_basis", "seed", "monitor", "achieved_ratio")
EXTRA = ("scope", "keep_fraction", "prunable_sparsity")
PHASE_FIELD = {"pruned": "pruned", "pruned_last": "pruned_last_epoch", "dense": "dense",
               "dense_last": "dense_last_epoch"}
# Config keys that are columns of the run table already (its identity), or Hydra's own.
IDENTITY = {"seed", "ratio", "ratio_basis", "selection"}
IDENTITY_PREFIXES = ("hydra.",)
SWEEP_BASE = ("data", "model", "ratio_basis", "strategy", "ratio")  # where sweep keys are sought
SHADOWED = {*FIELDS, *EXTRA, *PHASES, "selection", "control", "metric", "higher_is_better", "path",
            "mtime", "config", "results", "run_key", "from_dense"}  # columns a config key must not overwrite
# results.json fields read when stage_keys is absent (results written before it was recorded)
STAGE_FALLBACK = {"dense": ("data", "model", "seed"),
                  "scores": ("data", "model", "strategy", "seed", "scoring_at")}


def ignored(key: str) -> bool:
    """A config key that never splits runs: result-neutral, or a column of the run table."""
    return neutral(key) or key in IDENTITY or key.startswith(IDENTITY_PREFIXES)


def run_state(folder: Path) -> dict | str:
    """The run's results if it finished, else why it does not count."""
    path = Path(folder) / RESULTS
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


def run_folders(folder: str | os.PathLike) -> Iterable[Path]:
    """Every folder below ``folder`` (itself included) holding results or a run's other files.
    Runs do not nest, so their subfolders (``.hydra``, logs, a wandb ``config.yaml``) are not
    searched; hidden folders and ``wandb`` never are. A folder with a ``config.yaml`` is a run
    folder: a stray one at a sweep's root would hide the runs below it (they would show as one
    unfinished run)."""
    for root, dirs, files in os.walk(folder):
        if ".hydra" in dirs or RESULTS in files or any(m in files for m in RUN_MARKERS):
            dirs[:] = []
            yield Path(root)
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "wandb")


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


def stage_key(res: Mapping, stage: str) -> tuple:
    """The cache entry a run's ``stage`` came from (results.json ``stage_keys``), or for results
    written before that was recorded, the fields that then decided it."""
    keys = res.get("stage_keys") if isinstance(res.get("stage_keys"), Mapping) else {}
    key = keys.get(stage)
    return (key,) if key else tuple(res.get(k) for k in STAGE_FALLBACK[stage])


def dense_key(res: Mapping) -> str | None:
    """The dense model's stage key, None when not recorded (old results) or not trained."""
    keys = res.get("stage_keys") if isinstance(res.get("stage_keys"), Mapping) else {}
    return keys.get("dense") or None


def _control(res: dict) -> bool:
    """Sanity controls (random masks, shuffled masks); old runs lack the field."""
    if "control" in res:
        return bool(res["control"])
    name = str(res.get("strategy"))
    return name == "random" or name.startswith("shuffled")


def _metric(metrics: Any, name: str) -> float:
    value = metrics.get(name) if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def _row(run: Path, res: dict) -> dict:
    monitor = res["monitor"]
    config = read_config(run)
    mode = config.get("data.monitor_mode") if config and config.get("data.monitor") == monitor else None
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
    return {**row, "path": str(run), "mtime": (run / RESULTS).stat().st_mtime, "config": config,
            "results": res, "run_key": res.get("run_key"), "from_dense": dense_key(res)}


def collect_runs(folders: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, dict[Path, str]]:
    """One row per complete run under ``folders`` (searched recursively; a folder found twice
    counts once), and the unfinished or failed ones with why they do not count.

    Columns: the results fields, ``selection`` ("dev" for old runs), ``control``, ``metric`` (the
    monitor), ``higher_is_better``, the monitor value per phase (``pruned``, ``pruned_last``,
    ``dense``, ``dense_last``), every metric per phase (``pruned_<m>`` ...), ``path``, ``mtime``,
    ``config`` (flattened dict or None), ``results`` (the parsed results.json), ``run_key``,
    ``from_dense`` (the dense model's stage key; None when not recorded) and one column per sweep
    key (:func:`sweep_keys`). Raises FileNotFoundError for a folder that does not exist.
    """
    rows, unfinished, seen = [], {}, set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"no such run folder: {folder}")
        for run in run_folders(folder):
            if run.resolve() in seen:
                continue
            seen.add(run.resolve())
            res = run_state(run)
            if isinstance(res, str):
                unfinished[run] = res
            else:
                rows.append(_row(run, res))
    fixed = [*FIELDS, *EXTRA, "selection", "control", "metric", "higher_is_better", *PHASES]
    names = sorted({n for r in rows for p in PHASES for n in r if n.startswith(p + "_") and n not in fixed})
    per_metric = [f"{p}_{m}" for p in PHASES for m in metric_names(names, p)]
    tail = ["path", "mtime", "config", "results", "run_key", "from_dense"]
    df = pd.DataFrame(rows, columns=[*fixed, *per_metric, *tail])
    for col in ("config", "results", "run_key", "from_dense"):
        df[col] = df[col].astype(object)
    return with_sweep_columns(df, sweep_keys(df)), unfinished


def config_value(config: Any, key: str) -> Any:
    """A run's value of a config key: explicit null is "null", no value is None."""
    if not isinstance(config, dict) or key not in config:
        return None
    value = config[key]
    return "null" if value is None else value


def column(key: str) -> str:
    """The table column of a config key; one shadowing a run-table column gets ``config.``."""
    return f"config.{key}" if key in SHADOWED else key


def config_key(col: str) -> str:
    """The config key behind a sweep column (inverse of :func:`column`)."""
    key = col[len("config."):]
    return key if col.startswith("config.") and key in SHADOWED else col


def sweep_keys(df: pd.DataFrame) -> list[str]:
    """Config keys (as column names) that take more than one value within some (data, model,
    ratio_basis, ratio) group -- within a strategy too for ``strategy.`` keys: a sweep over them
    must not be averaged away, and runs that differ in them are never paired.

    A key absent from one run's config but present in another's counts as differing (e.g.
    ``scheduler=none`` vs ``linear_warmup``); runs without a ``config.yaml`` add nothing.
    Result-neutral keys (:func:`deepcuts.config.neutral.neutral`), the run table's own columns
    (seed, ratio, ratio basis, selection) and seed-bound keys (equal to the run's seed in every
    run having them, e.g. ``strategy.seed``) are ignored. Non-``strategy.`` keys come first, then
    ``strategy.`` ones, each sorted by name.
    """
    if df.empty or "config" not in df:
        return []
    rows = [r for r in df.to_dict("records") if isinstance(r["config"], dict)]
    seed_bound: dict[str, bool] = {}
    for row in rows:
        for key, value in row["config"].items():
            if ignored(key):
                continue
            is_seed = isinstance(value, int) and not isinstance(value, bool) and value == row["seed"]
            seed_bound[key] = seed_bound.get(key, True) and is_seed
    candidates = [k for k, bound in seed_bound.items() if not bound]
    values: dict[str, dict[tuple, set]] = {k: {} for k in candidates}
    for row in rows:
        for key in candidates:
            # a strategy's own settings vary across strategies by design; any other key that
            # differs within a data x ratio cell would make method and baseline runs unpaired
            base = tuple(norm(row[k]) for k in SWEEP_BASE if k != "strategy" or key.startswith("strategy."))
            values[key].setdefault(base, set()).add(norm(config_value(row["config"], key)))
    keys = [k for k, cells in values.items() if any(len(v) > 1 for v in cells.values())]
    return [column(k) for k in sorted(keys, key=lambda k: (k.startswith("strategy."), k))]


def with_sweep_columns(df: pd.DataFrame, sweep: Sequence[str]) -> pd.DataFrame:
    """``df`` with one object column per sweep key (None where a run has no value)."""
    df = df.copy()
    for col in sweep:
        key = config_key(col)
        df[col] = pd.Series([config_value(c, key) for c in df["config"]], index=df.index, dtype=object)
    return df


def group_keys(df: pd.DataFrame, sweep: Sequence[str]) -> list[str]:
    """data, strategy, ratio, metric, selection and the sweep keys; plus model / ratio_basis when
    the runs mix them, so different models (or ratios counted on different bases) are never
    averaged together."""
    mixed = [k for k in ("model", "ratio_basis") if k in df and df[k].astype(str).nunique() > 1]
    return ["data", *mixed, "strategy", "ratio", "metric", "selection", *sweep]


def row_order(row: Any, keys: Sequence[str]) -> tuple:
    """The order rows of a table are sorted in: by ``keys``, then seed."""
    return (*(sort_value(row[k]) for k in keys), sort_value(row.get("seed")))


def latest(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One run per seed and group of ``keys``: a rerun replaces the older one (by the mtime of
    its results.json); sorted by ``keys`` and seed."""
    kept: dict[tuple, Any] = {}
    for i, row in zip(df.index, df.to_dict("records"), strict=True):
        key = (*row_key(row, keys), row["seed"])
        if key not in kept or df.at[kept[key], "mtime"] <= row["mtime"]:
            kept[key] = i
    return df.loc[sorted(kept.values(), key=lambda i: (row_order(df.loc[i], keys), i))]


def identical_jobs_once(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each ``run_key`` once (a job and its copy, e.g. restored into another sweep
    folder, are one job); runs without a run key (old results) are all kept."""
    seen: set[str] = set()
    keep = []
    for key in df["run_key"]:
        fresh = not isinstance(key, str) or key not in seen
        keep.append(fresh)
        if isinstance(key, str):
            seen.add(key)
    return df[pd.Series(keep, index=df.index, dtype=bool)]


def shown_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` as a report prints it: relative to ``base`` (the folder the report is written
    to) when one lies inside the other's parent tree, else the last two parts of the path; never
    a machine's absolute path."""
    path, base = Path(os.path.abspath(path)), Path(os.path.abspath(base))
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive
        rel = None
    if rel is not None and rel.count("..") <= 2:
        return Path(rel).as_posix()
    return Path(*path.parts[-2:]).as_posix() if len(path.parts) > 2 else path.name


def by_seed(runs: pd.DataFrame, col: str) -> dict[int, float]:
    """``{seed: value}`` of a numeric column (NaN where not a number)."""
    values = pd.to_numeric(runs[col], errors="coerce").astype(float)
    return dict(zip(runs["seed"].astype(int).tolist(), values.tolist(), strict=True))

