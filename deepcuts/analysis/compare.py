"""One pairing rule for every comparison: runs are paired by seed *and* by dense model.

Runs of one seed share the dense model, the data order and the head, so two settings are compared
seed by seed (:func:`deepcuts.analysis.stats.paired`). That holds only if the two runs of a seed
really came from one dense model: a baseline re-run after a code or library change has an
identical config but a new dense model. :func:`pair` therefore pairs a seed only when both runs
record the same dense stage key (results.json ``stage_keys.dense``), unless the compared setting
is itself an input of the dense fine-tune (:func:`deepcuts.config.neutral.dense_input`, e.g.
``optimizer.lr``), where the dense models differ by design. Every seed left out is named, with why.

Each side is the run table's newest run per seed (:func:`deepcuts.analysis.runs.latest`: a rerun
replaces the older run in every table); when that run came from another dense model than the
other side's, the seed is left out and the report says to rerun one side, rather than pairing an
older run the summary does not show.

Three tables are built on it: the report's paired differences against baselines
(:func:`paired_differences`), ``--pair-by KEY=REFERENCE`` (:func:`paired_across`) and the
recovery table (:mod:`deepcuts.analysis.recovery`). All take the run table of
:func:`deepcuts.analysis.runs.collect_runs`; none imports torch or writes a file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from deepcuts.analysis import stats
from deepcuts.analysis.keys import MISSING, fmt, groups, norm, row_key
from deepcuts.analysis.runs import (
    FIELDS,
    by_seed,
    column,
    config_key,
    config_value,
    dense_input,
    group_keys,
    ignored,
    latest,
    row_order,
    sweep_keys,
    with_sweep_columns,
)

__all__ = ["DEFAULT_BASELINES", "PAIRED", "PairByError", "Pairing", "pair", "paired_across",
           "paired_across_all", "paired_differences", "prepare", "variant_text"]

DEFAULT_BASELINES = ("layer_mag_grad", "layer_mag_weight")
PAIRED = ["baseline", "baseline_variant", "higher_is_better", "seeds", "paired_seeds",
          "unpaired_seeds", "left_out", "method_mean", "baseline_mean", "mean_diff", "t_low",
          "t_high", "boot_low", "boot_high", "wins", "covers_zero", "verdict"]
# achieved ratio means over the paired seeds, of the key's value and of the reference
RATIOS = ["achieved_ratio_mean", "baseline_achieved_ratio_mean"]
# results fields that say which runs these are: pairing across them is not a config key's job
RUN_NAMES = {*FIELDS, "selection", "metric", "data.name", "model.name", "strategy.name"}


@dataclass
class Pairing:
    """Two sides' runs paired by seed: the seeds paired, those left out and why, the statistics
    of ``method - reference`` over the paired seeds."""

    seeds: list[int]
    left_out: dict[int, str]
    method: dict[int, float] = field(repr=False)  # per paired seed
    reference: dict[int, float] = field(repr=False)
    stats: stats.Paired = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def left_out_text(self) -> str:
        return "; ".join(f"seed {s}: {why}" for s, why in sorted(self.left_out.items()))

    def verdict(self, method: str, reference: str) -> str:
        """The comparison in words; the seeds left out are named with why, never dropped
        silently."""
        text = self.stats.verdict(method, reference)
        if self.left_out:
            text += "; left out: " + self.left_out_text()
        return text

    def row(self, method: str, reference: str) -> dict[str, Any]:
        """The :data:`PAIRED` statistics columns (without ``baseline``/``baseline_variant``)."""
        p = self.stats
        return {
            "higher_is_better": p.higher_better, "seeds": p.n,
            "paired_seeds": " ".join(map(str, self.seeds)),
            "unpaired_seeds": " ".join(map(str, sorted(self.left_out))),
            "left_out": self.left_out_text(),
            "method_mean": _mean(self.method.values()), "baseline_mean": _mean(self.reference.values()),
            "mean_diff": p.mean, "t_low": p.t_low, "t_high": p.t_high, "boot_low": p.boot_low,
            "boot_high": p.boot_high, "wins": p.wins, "covers_zero": p.covers_zero,
            "verdict": self.verdict(method, reference),
        }


def _one_per_seed(runs: pd.DataFrame, side: str) -> dict[int, Any]:
    seeds = runs["seed"].astype(int).tolist()
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ValueError(f"pair: the {side} side has several runs of seed(s) {twice}; keep one per "
                         "seed first (deepcuts.analysis.runs.latest)")
    return dict(zip(seeds, runs.to_dict("records"), strict=True))


def pair(method: pd.DataFrame, reference: pd.DataFrame, *, higher_better: bool,
         value: str = "pruned", same_dense: bool = True) -> Pairing:
    """Pair two sides' runs (run-table rows, one per seed) by seed, and by dense model when
    ``same_dense``: a seed whose two runs record different dense stage keys is left out ("the
    two runs came from different dense models"); runs without a recorded key (results from
    before it) are paired by seed alone. A seed on one side only, or whose ``value`` is NaN on
    a side (e.g. a collapsed STS-B model's Pearson), is left out with that reason."""
    ours, theirs = _one_per_seed(method, "method"), _one_per_seed(reference, "reference")
    left_out: dict[int, str] = {}
    paired_m: dict[int, float] = {}
    paired_r: dict[int, float] = {}
    for seed in sorted(set(ours) | set(theirs)):
        if seed not in theirs:
            left_out[seed] = "no reference run"
            continue
        if seed not in ours:
            left_out[seed] = "reference only"
            continue
        a, b = ours[seed], theirs[seed]
        va, vb = _number(a.get(value)), _number(b.get(value))
        da, db = a.get("from_dense"), b.get("from_dense")
        if same_dense and isinstance(da, str) and isinstance(db, str) and da != db:
            left_out[seed] = f"different dense models ({da[:8]} vs {db[:8]}): rerun one side"
        elif not (math.isfinite(va) and math.isfinite(vb)):
            left_out[seed] = "NaN on " + ("both sides" if not (math.isfinite(va) or math.isfinite(vb))
                                          else "the method side" if not math.isfinite(va)
                                          else "the reference side")
        else:
            paired_m[seed], paired_r[seed] = va, vb
    return Pairing(seeds=sorted(paired_m), left_out=left_out, method=paired_m,
                   reference=paired_r, stats=stats.paired(paired_m, paired_r, higher_better))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else math.nan


def variant_text(row: Any, keys: Sequence[str]) -> str:
    """``key=value, ...`` of the keys a row has a value for."""
    return ", ".join(f"{k}={fmt(row[k])}" for k in keys if norm(row[k]) is not MISSING)


def prepare(df: pd.DataFrame, sweep: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(the newest run per group and seed, with sweep columns; group keys; sweep keys)."""
    sweep = sweep_keys(df) if sweep is None else list(sweep)
    df = with_sweep_columns(df, sweep)
    keys = group_keys(df, sweep)
    return latest(df, keys), keys, sweep


def _sorted(rows: list[dict], keys: Sequence[str], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(sorted(rows, key=lambda r: row_order(r, keys)), columns=columns)


# --- against baselines (the report) -----------------------------------------------------------


def paired_differences(df: pd.DataFrame, baselines: Sequence[str] = DEFAULT_BASELINES,
                       sweep: Sequence[str] | None = None) -> pd.DataFrame:
    """Each strategy group against each baseline, paired by :func:`pair` on the pruned
    (selected-epoch) monitor metric.

    A group pairs with the baseline's runs of the same data, model, ratio basis, ratio, metric,
    selection and non-``strategy.`` sweep values; a baseline swept over ``strategy.`` keys gives
    one row per variant (``baseline_variant``). A baseline is never paired with itself; a
    ``shuffled_<x>`` control is also paired with ``<x>``.
    """
    columns = ["data", "strategy", "ratio", "metric", "selection", "control", *PAIRED]
    if df.empty:
        return pd.DataFrame(columns=columns)
    runs, keys, sweep = prepare(df, sweep)
    own = [k for k in sweep if k.startswith("strategy.")]
    cell = [k for k in keys if k != "strategy" and k not in own]
    by_cell: dict[tuple, pd.DataFrame] = {}
    for b in runs["strategy"].astype(str).unique():
        for key, rows in groups(runs[runs["strategy"].astype(str) == b], cell).items():
            by_cell[(b, *key)] = rows
    out = []
    for group in groups(runs, keys).values():
        first = group.iloc[0]
        strategy = str(first["strategy"])
        source = strategy.removeprefix("shuffled_")  # a control vs what it shuffles
        for b in [*baselines, *([source] if source != strategy else [])]:
            base = by_cell.get((b, *row_key(first, cell)))
            if strategy == b or base is None:
                continue
            for variant in groups(base, own).values():
                p = pair(group, variant, higher_better=bool(first["higher_is_better"]))
                out.append({**{k: first[k] for k in keys}, "control": bool(group["control"].any()),
                            "baseline": b, "baseline_variant": variant_text(variant.iloc[0], own),
                            **p.row(strategy, b)})
    return _sorted(out, [*keys, "baseline", "baseline_variant"], [*keys, "control", *PAIRED])


# --- across one config key (--pair-by) --------------------------------------------------------


class PairByError(ValueError):
    """A ``pair_by`` key that is no sweep or config key of the runs, or a reference no run has."""


def _sub_keys(key: str, sweep: Sequence[str]) -> list[str]:
    """Sweep columns under ``key``'s config prefix (``structure.*`` for ``structure.kind``,
    ``rewind.*`` for ``rewind``): settings that only some values of ``key`` may have."""
    parent = key.rpartition(".")[0] or key
    return [c for c in sweep if config_key(c) != key and config_key(c).startswith(parent + ".")]


def _resolve(df: pd.DataFrame, key: str, sweep: Sequence[str]) -> tuple[str, str]:
    """(config key, table column) of ``key``, a sweep key or a config key of some run."""
    available = ", ".join(f"`{k}`" for k in sweep) or "none"
    if key in sweep:
        return config_key(key), key
    if column(key) in sweep:
        return key, column(key)
    if key in RUN_NAMES or ignored(key):
        raise PairByError(f"`{key}` is not a setting to pair across (it names the runs' data, "
                          "model, strategy, ratio or seed, or never changes a result; strategies "
                          f"are paired against --baselines); sweep keys: {available}")
    if not any(isinstance(c, dict) and key in c for c in df["config"]):
        raise PairByError(f"`{key}` is not a sweep key or config key of these runs; sweep "
                          f"keys: {available}")
    return key, column(key)


def _matches(value: Any, reference: str) -> bool:
    """Whether a run's value is ``reference`` as typed (``none``, ``5e-05``, ``true``)."""
    value = norm(value)
    if value is MISSING:
        return False
    if reference in (str(value), fmt(value)):
        return True
    try:  # as the config would have it: 5e-5 is 5e-05, true is True
        parsed = OmegaConf.to_container(OmegaConf.create(f"value: {reference}"))["value"]
    except Exception:  # noqa: BLE001 - not YAML: only the text comparison above applies
        return False
    same = type(parsed) is type(value) or (_is_number(parsed) and _is_number(value))
    return parsed is not None and same and parsed == value


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _compatible(a: Any, b: Any, sub: Sequence[str]) -> bool:
    """Two sub-key variants pair unless both set a sub-key, to different values."""
    return all(norm(a[k]) is MISSING or norm(b[k]) is MISSING or norm(a[k]) == norm(b[k]) for k in sub)


def paired_across(df: pd.DataFrame, key: str, reference: str,
                  sweep: Sequence[str] | None = None) -> pd.DataFrame:
    """Runs differing only in config key ``key``, each other value against ``reference``, paired
    by :func:`pair` (by dense model too, unless ``key`` feeds the dense fine-tune).

    Runs pair when they have equal data, model, ratio basis, strategy, ratio, metric, selection
    and every other sweep value -- except the sweep keys under ``key``'s config prefix
    (``structure.group_score`` for ``structure.kind``): those only some values of ``key`` have,
    so they never block pairing; a side's values of them are its ``variant`` (the reference's:
    ``baseline_variant``), and two variants pair unless both set one of them differently. Runs
    without a value of ``key`` are left out; a value with no reference run in its cell gets a
    row with 0 seeds.

    Columns: the cell keys, ``key`` (the value), ``variant``, ``control``, :data:`PAIRED`
    (``baseline`` is the reference value) and :data:`RATIOS`. Raises :class:`PairByError` when
    ``key`` is not a sweep or config key of the runs, or no run has ``key`` = ``reference``.
    """
    sweep = sweep_keys(df) if sweep is None else list(sweep)
    if df.empty:
        return pd.DataFrame(columns=["data", "strategy", "ratio", "metric", "selection", key,
                                     "variant", "control", *PAIRED, *RATIOS])
    cfg_key, col = _resolve(df, key, sweep)
    runs, keys, sweep = prepare(df, sweep)
    if col not in runs:  # a config key no sweep varies
        runs[col] = pd.Series([config_value(c, cfg_key) for c in runs["config"]], index=runs.index, dtype=object)
    sub = _sub_keys(cfg_key, sweep)
    cell = [k for k in keys if k != col and k not in sub]
    runs = runs[[norm(v) is not MISSING for v in runs[col]]]
    is_ref = [_matches(v, reference) for v in runs[col]]
    if not any(is_ref):
        values = ", ".join(sorted({fmt(v) for v in runs[col]})) or "none"
        raise PairByError(f"no run has {key}={reference}; its values: {values}")
    shown = fmt(runs[col][is_ref].iloc[0])  # the reference as the config has it (5e-5: 5e-05)
    same_dense = not dense_input(cfg_key)
    refs = {k: list(groups(part, sub).values()) for k, part in groups(runs[is_ref], cell).items()}
    out = []
    for group in groups(runs[[not r for r in is_ref]], [*cell, col, *sub]).values():
        first = group.iloc[0]
        variants = [v for v in refs.get(row_key(first, cell), []) if _compatible(first, v.iloc[0], sub)]
        for ref in variants or [group.iloc[:0]]:
            p = pair(group, ref, higher_better=bool(first["higher_is_better"]), same_dense=same_dense)
            ratio, base_ratio = by_seed(group, "achieved_ratio"), by_seed(ref, "achieved_ratio")
            out.append({
                **{k: first[k] for k in [*cell, col]}, "variant": variant_text(first, sub),
                "control": bool(group["control"].astype(bool).any()), "baseline": shown,
                "baseline_variant": variant_text(ref.iloc[0], sub) if len(ref) else "",
                **p.row(f"{key}={fmt(first[col])}", f"{key}={shown}"),
                "achieved_ratio_mean": _mean(ratio[s] for s in p.seeds),
                "baseline_achieved_ratio_mean": _mean(base_ratio[s] for s in p.seeds),
            })
    columns = [*cell, col, "variant", "control", *PAIRED, *RATIOS]
    return _sorted(out, [*cell, col, "variant", "baseline_variant"], columns)


def paired_across_all(df: pd.DataFrame, pair_by: Iterable[tuple[str, str]],
                      sweep: Sequence[str] | None = None) -> list[tuple[str, str, pd.DataFrame]]:
    """``(key, reference, table)`` per pair, all checked before any is used (a key at most once:
    it names the CSV). Raises :class:`PairByError`."""
    pairs = [(str(k), str(r)) for k, r in pair_by]
    seen = [k for k, _ in pairs]
    twice = sorted({k for k in seen if seen.count(k) > 1})
    if twice:
        raise PairByError(f"pair by each key once: {', '.join(twice)} given more than once")
    return [(k, r, paired_across(df, k, r, sweep)) for k, r in pairs]
