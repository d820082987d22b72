"""The recovery table (issue 15): what each recovery recipe (k-shot, distillation, late rewinding)
recovers at high sparsity, paired by seed against the single shot, and what it costs.

One row per data x model x ratio x strategy x recipe (and any other config key the runs differ
in, so unlike runs are never averaged together). The recipe is the run's ``recipe_name`` (set by
``conf/recipe``) or, when that is null, a label built from results.json's ``recipe``, e.g.
``shots=2+distill+rewind=epoch:1``. Per row, over its seeds:

- the pruned dev metric (the task's monitor, ``results["monitor"]``, at the kept epoch): mean and
  95% Student-t interval; the dense fine-tune's mean;
- ``% of dense``: the mean over seeds of pruned / dense (same seed, same dense model), with its
  95% t-interval; with a target per data (``{"cola": 0.85}``) whether the mean reaches it, and
  whether the interval's lower bound does too;
- the paired difference ``recipe - reference`` of the pruned metric over the seeds both have
  (same data, model, ratio, strategy and seed, and the same dense model: the pairing rule of
  :func:`deepcuts.analysis.compare.pair`): mean, t and bootstrap 95% intervals, number of pairs;
  seeds left out (one side only, NaN, another dense model) are named with why. Like the comparison report, a difference counts
  as detected only when both intervals exclude 0;
- masked fine-tuning epochs in all: ``shot_epochs * (shots - 1) + epochs_final``;
- wall time: the recipe's own work per job (results.json ``timings_s``: ``shots`` + ``pruned``
  + ``scoring``, the scoring as built: from the job that built the run's scores, as
  :mod:`deepcuts.analysis.timing` counts it, since a cache hit's ``timings_s`` only holds the load
  time) and, separately, the one-off shared stages the recipe needs per seed (``teacher``
  outputs for distillation, the ``rewind`` replay for late rewinding), counted only from a run
  whose ``cache.builds`` lists that stage (a hit's time is the time to read the entry). The dense
  fine-tune, needed by every recipe alike, is not counted (``experiments/report.py``'s timing
  table has it).

Runs are found and read by :func:`deepcuts.analysis.runs.collect_runs` (results.json with
status ``complete`` and the ``config.yaml`` beside it); a folder without a finished results.json
is skipped with a warning; a rerun (same row and seed) replaces the older run. Reads only the
outputs contract, never imports torch.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepcuts.analysis import stats
from deepcuts.analysis.compare import pair
from deepcuts.analysis.keys import fmt, groups, norm, sort_value
from deepcuts.analysis.runs import collect_runs, config_key, latest, stage_key, sweep_keys
from deepcuts.analysis.timing import builds, built_seconds, seconds

__all__ = ["COLUMNS", "DEFAULT_REFERENCE", "LATE", "RecoveryError", "load_runs", "parse_target",
           "recipe_label", "recovery_table"]

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = "single_shot"
RECIPE_ORDER = ("single_shot", "kshot", "kshot_distill", "kshot_distill_rewind")  # conf/recipe
RECIPE_KEYS = ("recipe_name", "shots", "shot_epochs", "epochs_final", "rewind")  # + distill.*
CELL = ("data", "model", "ratio_basis", "ratio", "strategy", "metric", "selection")
SIGNATURE = ("shots", "shot_epochs", "epochs_final", "distill_alpha", "distill_temperature",
             "rewind")
LATE = ("step:", "epoch:")  # late rewinding points: a replay stage of their own
COLUMNS = [
    *CELL, "recipe", "recipe_name", *SIGNATURE, "masked_epochs", "seeds", "seed_list",
    "seeds_nan", "higher_is_better", "pruned_mean", "pruned_std", "pruned_low", "pruned_high",
    "dense_mean", "pct_dense_mean", "pct_dense_low", "pct_dense_high", "reference", "paired_n",
    "paired_seeds", "unpaired_seeds", "left_out", "diff_mean", "diff_t_low", "diff_t_high", "diff_boot_low",
    "diff_boot_high", "covers_zero", "verdict", "target", "target_met", "target_met_lower",
    "own_s_mean", "own_s_runs", "shots_s_mean", "pruned_s_mean", "scoring_s_mean",
    "teacher_s_mean", "rewind_s_mean", "shared_s_mean", "shared_s_seeds",
]


class RecoveryError(ValueError):
    """Nothing to tabulate (no complete run, no reference run, a bad target): nothing is written."""


# --- runs -----------------------------------------------------------------------------------


def recipe_label(shots: int, distill: Mapping | None, rewind: Any) -> str:
    """The label of an unnamed recipe: ``shots=2+distill+rewind=epoch:1``."""
    parts = [f"shots={shots}"]
    if distill:
        parts.append("distill")
    if rewind is not None:
        parts.append(f"rewind={rewind}")
    return "+".join(parts)


def _recipe(config: Mapping | None, res: Mapping) -> dict[str, Any]:
    """The recipe a run used, from results.json (``recipe``, ``epochs_final``; older runs without
    ``recipe`` were single shots) and its config's ``recipe_name``."""
    config = config if isinstance(config, Mapping) else {}
    recipe = res.get("recipe") if isinstance(res.get("recipe"), Mapping) else {}
    shots = int(recipe.get("shots") or 1)
    shot_epochs = recipe.get("shot_epochs", config.get("shot_epochs")) if shots > 1 else None
    epochs_final = res.get("epochs_final", config.get("epochs_final"))
    distill = recipe.get("distill") if isinstance(recipe.get("distill"), Mapping) else None
    rewind = recipe.get("rewind", res.get("rewind"))
    name = config.get("recipe_name")
    masked = math.nan
    if isinstance(epochs_final, (int, float)) and (shots == 1 or isinstance(shot_epochs, (int, float))):
        masked = (shot_epochs or 0) * (shots - 1) + epochs_final
    return {
        "recipe_name": name, "recipe_base": str(name) if name else recipe_label(shots, distill, rewind),
        "shots": shots, "shot_epochs": shot_epochs, "epochs_final": epochs_final,
        "distill_alpha": distill.get("alpha") if distill else None,
        "distill_temperature": distill.get("temperature") if distill else None,
        "rewind": rewind, "masked_epochs": masked,
    }


def _timings(rows: list[dict]) -> None:
    """Add each run's seconds: own work (``shots`` + ``pruned`` + scoring as built) and the shared
    stages its recipe needs (teacher, rewind replay; as built), NaN where no run built them."""
    results = [r["results"] for r in rows]
    scores = built_seconds(results, "scores")  # {stage key: seconds}, from the jobs that built them

    def dense(r: dict):
        return stage_key(r, "dense")

    teachers = built_seconds(results, "teacher", key=dense)
    rewinds = built_seconds(results, "rewind", key=lambda r: (dense(r), _recipe({}, r)["rewind"]))
    for row in rows:
        res = row["results"]
        row["shots_s"] = seconds(res, "shots") if row["shots"] > 1 else 0.0
        row["pruned_s"] = seconds(res, "pruned")
        if "scores" in builds(res):
            row["scoring_s"] = seconds(res, "scoring")
        else:
            row["scoring_s"] = float(scores.get(stage_key(res, "scores"), math.nan))
        row["own_s"] = row["shots_s"] + row["pruned_s"] + row["scoring_s"]
        late = str(row["rewind"]).startswith(LATE)
        row["teacher_s"] = teachers.get(dense(res), math.nan) if row["distill_alpha"] else 0.0
        row["rewind_s"] = rewinds.get((dense(res), row["rewind"]), math.nan) if late else 0.0
        row["needs_shared"] = bool(row["distill_alpha"]) or late


def _other_keys(df: pd.DataFrame) -> list[str]:
    """Sweep keys besides the recipe's own: runs that differ in them are separate rows."""
    def recipe_key(col: str) -> bool:
        key = config_key(col)
        return key in RECIPE_KEYS or key.startswith("distill.")

    return [c for c in sweep_keys(df) if not recipe_key(c)]


def _labels(df: pd.DataFrame) -> pd.Series:
    """``recipe_base``, with the differing settings appended where one name covers runs of
    different settings (e.g. ``single_shot`` with an overridden ``epochs_final``)."""
    labels = df["recipe_base"].astype(str).copy()
    for base, part in df.groupby("recipe_base", sort=False):
        sigs = {tuple(norm(r[k]) for k in SIGNATURE) for r in part.to_dict("records")}
        if len(sigs) < 2:
            continue
        varying = [k for i, k in enumerate(SIGNATURE) if len({s[i] for s in sigs}) > 1]
        for i, r in zip(part.index, part.to_dict("records"), strict=True):
            labels[i] = f"{base} [{', '.join(f'{k}={fmt(r[k])}' for k in varying)}]"
    return labels


def load_runs(folders: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, dict[Path, str]]:
    """The complete runs under ``folders`` with their recipe, seconds and results, one per row and
    seed (the newest); and the folders skipped, with why (each also logged as a warning)."""
    folders = [Path(f) for f in folders]
    df, skipped = collect_runs(folders)
    for path, why in skipped.items():
        log.warning("skipped %s: %s", path, why)
    if df.empty:
        where = ", ".join(map(str, folders))
        more = f" ({len(skipped)} run folder(s) skipped: see the warnings)" if skipped else ""
        raise RecoveryError(f"no complete run (a results.json with status 'complete') under "
                            f"{where}{more}")
    rows = []
    for row in df.to_dict("records"):
        rows.append({**row, **_recipe(row["config"], row["results"])})
    _timings(rows)
    runs = pd.DataFrame(rows)
    runs["recipe"] = _labels(runs)
    other = _other_keys(df)
    runs.attrs["other_keys"] = other
    kept = latest(runs, [*CELL, *other, "recipe"])
    kept.attrs["other_keys"] = other
    kept.attrs["replaced"] = len(runs) - len(kept)
    return kept.reset_index(drop=True), skipped


# --- the table ------------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, float]:
    """``cola=0.85`` -> ("cola", 0.85): the fraction of the dense metric a recipe should keep."""
    data, sep, value = str(text).partition("=")
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if not sep or not data.strip() or not math.isfinite(fraction):
        raise RecoveryError(f"a target is DATA=FRACTION, e.g. cola=0.85; got {text!r}")
    if not 0 < fraction <= 1.5:
        raise RecoveryError(f"target {text!r}: a fraction of the dense metric, e.g. 0.85 "
                            "(not a percentage)")
    return data.strip(), fraction


def _mean(values: Iterable[float]) -> float:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def _ratio(pruned: float, dense: float) -> float:
    if not (math.isfinite(pruned) and math.isfinite(dense)) or dense == 0:
        return math.nan
    return pruned / dense


def _by_seed(part: pd.DataFrame, column: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in zip(part["seed"], part[column], strict=True)}


def _recipe_order(label: str, reference: str) -> tuple:
    base = label.split(" [")[0]
    rank = RECIPE_ORDER.index(base) if base in RECIPE_ORDER else len(RECIPE_ORDER)
    return (base != reference, rank, label)


def recovery_table(runs: pd.DataFrame, reference: str = DEFAULT_REFERENCE,
                   targets: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per data x model x ratio x strategy x recipe (columns: :data:`COLUMNS` and the
    other sweep keys); ``runs`` from :func:`load_runs`. Raises :class:`RecoveryError` when no run
    has the ``reference`` recipe."""
    targets = dict(targets or {})
    other = list(runs.attrs.get("other_keys", []))
    if not (runs["recipe_base"].astype(str) == reference).any():
        found = ", ".join(sorted(runs["recipe_base"].astype(str).unique()))
        raise RecoveryError(f"reference recipe {reference!r} not found: no run has recipe_name "
                            f"{reference!r} (recipes found: {found}); pass --reference with one "
                            f"of them")
    ref_runs = runs[runs["recipe_base"].astype(str) == reference]
    plain = bool((ref_runs["shots"] == 1).all() and ref_runs["distill_alpha"].isna().all())
    cell = [*CELL, *other]
    references: dict[tuple, list[pd.DataFrame]] = {}
    for key, part in groups(runs, [*cell, "recipe"]).items():
        if str(part.iloc[0]["recipe_base"]) == reference:
            references.setdefault(key[:-1], []).append(part)
    out = []
    for key, part in groups(runs, [*cell, "recipe"]).items():
        first = part.iloc[0]
        higher = bool(first["higher_is_better"])
        pruned, dense = _by_seed(part, "pruned"), _by_seed(part, "dense")
        pct = {s: _ratio(pruned[s], dense[s]) for s in pruned}
        row: dict[str, Any] = {k: first[k] for k in (*cell, "recipe", "recipe_name", *SIGNATURE)}
        masked = sorted({float(v) for v in part["masked_epochs"] if math.isfinite(float(v))})
        row["masked_epochs"] = (masked[0] if len(masked) == 1
                                else "-".join(f"{m:g}" for m in masked) if masked else math.nan)
        finite = [v for v in pruned.values() if math.isfinite(v)]
        row.update({
            "seeds": len(pruned), "seed_list": " ".join(map(str, sorted(pruned))),
            "seeds_nan": len(pruned) - len(finite), "higher_is_better": higher,
            "pruned_mean": _mean(finite),
            "pruned_std": float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
        })
        row["pruned_low"], row["pruned_high"] = stats.t_interval(finite)
        row["dense_mean"] = _mean(dense.values())
        row["pct_dense_mean"] = _mean(pct.values())
        row["pct_dense_low"], row["pct_dense_high"] = stats.t_interval(list(pct.values()))
        row.update(_paired(part, references.get(key[:-1], []), reference, higher))
        target = targets.get(str(first["data"]))
        row["target"] = target if target is not None else math.nan
        row["target_met"] = row["target_met_lower"] = None
        if target is not None and higher:  # % of dense of an error (lower is better): no target
            if math.isfinite(row["pct_dense_mean"]):
                row["target_met"] = bool(row["pct_dense_mean"] >= target)
            if math.isfinite(row["pct_dense_low"]):
                row["target_met_lower"] = bool(row["pct_dense_low"] >= target)
        own = [v for v in part["own_s"] if math.isfinite(v)]
        row.update({
            "own_s_mean": _mean(own), "own_s_runs": len(own),
            "shots_s_mean": _mean(part["shots_s"]), "pruned_s_mean": _mean(part["pruned_s"]),
            "scoring_s_mean": _mean(part["scoring_s"]),
            "teacher_s_mean": _mean(part["teacher_s"]), "rewind_s_mean": _mean(part["rewind_s"]),
        })
        shared = [t + r for t, r in zip(part["teacher_s"], part["rewind_s"], strict=True)]
        row["shared_s_mean"] = _mean(shared)
        row["shared_s_seeds"] = sum(math.isfinite(v) for v in shared)
        row["needs_shared"] = bool(part["needs_shared"].any())
        out.append(row)
    out.sort(key=lambda r: (*(sort_value(r[k]) for k in cell),
                            _recipe_order(str(r["recipe"]), reference)))
    table = pd.DataFrame(out, columns=[*COLUMNS[:len(CELL)], *other, *COLUMNS[len(CELL):],
                                       "needs_shared"])
    table.attrs["other_keys"] = other
    table.attrs["reference"] = reference
    table.attrs["reference_plain"] = plain  # a single shot without distillation
    if not plain:
        log.warning("reference recipe %r is not a single shot without distillation", reference)
    return table


def _paired(part: pd.DataFrame, refs: list[pd.DataFrame], reference: str, higher: bool) -> dict[str, Any]:
    empty = {"reference": reference, "paired_n": 0, "paired_seeds": "", "unpaired_seeds": "",
             "left_out": "", "diff_mean": math.nan, "diff_t_low": math.nan, "diff_t_high": math.nan,
             "diff_boot_low": math.nan, "diff_boot_high": math.nan, "covers_zero": None}
    if str(part.iloc[0]["recipe_base"]) == reference:
        return {**empty, "verdict": "reference"}
    if not refs:
        return {**empty, "verdict": f"no {reference} run of this data, model, ratio and "
                                    "strategy: not paired"}
    if len(refs) > 1:
        labels = ", ".join(str(r.iloc[0]["recipe"]) for r in refs)
        return {**empty, "verdict": f"{reference} has runs of several settings here ({labels}): "
                                    "not paired"}
    p = pair(part, refs[0], higher_better=higher)  # the recipe's levers never feed the dense model
    row = p.row(str(part.iloc[0]["recipe"]), reference)
    return {
        "reference": reference, "paired_n": p.n, "paired_seeds": row["paired_seeds"],
        "unpaired_seeds": row["unpaired_seeds"], "left_out": row["left_out"],
        "diff_mean": p.stats.mean, "diff_t_low": p.stats.t_low, "diff_t_high": p.stats.t_high,
        "diff_boot_low": p.stats.boot_low, "diff_boot_high": p.stats.boot_high,
        "covers_zero": p.stats.covers_zero, "verdict": row["verdict"],
    }
