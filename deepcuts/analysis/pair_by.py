"""Paired differences across one config key: runs equal in everything but ``key`` (e.g.
``structure.kind`` heads_neurons vs none, or ``rewind``), paired by seed against the runs with the
reference value of that key.

:func:`paired_across` computes the table (the columns of ``paired.csv``: the reference value is
the ``baseline``), :func:`render_paired_across` its Markdown section, :func:`paired_across_all`
and :func:`write_paired_across` are what :func:`deepcuts.analysis.report.write_report` calls for
``pair_by``. Like the rest of the report it reads the runs :func:`~deepcuts.analysis.report.
collect_runs` collected and never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from deepcuts.analysis import stats
from deepcuts.analysis.report import (
    FIELDS,
    IGNORED,
    IGNORED_PREFIXES,
    PAIRED,
    _column,
    _config_key,
    _config_value,
    _mean,
    _prepare,
    _sorted,
    _variant,
    sweep_keys,
)
from deepcuts.analysis.report_keys import MISSING, fmt, groups, norm, row_key
from deepcuts.analysis.report_markdown import (
    _dev_note,
    _paired_cells,
    _reference_name,
    _row_head,
    _split,
    _table,
)

__all__ = ["PairByError", "paired_across", "paired_across_all", "render_paired_across",
           "write_paired_across"]

# achieved ratio means over the paired seeds, of the key's value and of the reference
RATIOS = ["achieved_ratio_mean", "baseline_achieved_ratio_mean"]
# results fields that say which runs these are: pairing across them is not a config key's job
IDENTITY = {*FIELDS, "selection", "metric", "data.name", "model.name", "strategy.name"}


class PairByError(ValueError):
    """A ``pair_by`` key that is no sweep or config key of the runs, or a reference no run has."""


def _sub_keys(key: str, sweep: Sequence[str]) -> list[str]:
    """Sweep columns under ``key``'s config prefix (``structure.*`` for ``structure.kind``,
    ``rewind.*`` for ``rewind``): settings that only some values of ``key`` may have."""
    parent = key.rpartition(".")[0] or key
    return [c for c in sweep if _config_key(c) != key and _config_key(c).startswith(parent + ".")]


def _resolve(df: pd.DataFrame, key: str, sweep: Sequence[str]) -> tuple[str, str]:
    """(config key, DataFrame column) of ``key``, a sweep key or a config key of some run."""
    available = ", ".join(f"`{k}`" for k in sweep) or "none"
    if key in sweep:
        return _config_key(key), key
    if _column(key) in sweep:
        return key, _column(key)
    if key in IDENTITY or key in IGNORED or key.startswith(IGNORED_PREFIXES):
        raise PairByError(f"`{key}` is not a setting to pair across (it names the runs' data, "
                          "model, strategy, ratio or seed, or is bookkeeping; strategies are "
                          f"paired against --baselines); sweep keys: {available}")
    if not any(isinstance(c, dict) and key in c for c in df["config"]):
        raise PairByError(f"`{key}` is not a sweep key or config key of these runs; sweep "
                          f"keys: {available}")
    return key, _column(key)


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
    same = type(parsed) is type(value) or (_number(parsed) and _number(value))
    return parsed is not None and same and parsed == value


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _compatible(a: Any, b: Any, sub: Sequence[str]) -> bool:
    """Two sub-key variants pair unless both set a sub-key, to different values."""
    return all(norm(a[k]) is MISSING or norm(b[k]) is MISSING or norm(a[k]) == norm(b[k])
               for k in sub)


def paired_across(df: pd.DataFrame, key: str, reference: str,
                  sweep: Sequence[str] | None = None) -> pd.DataFrame:
    """Runs differing only in config key ``key``, each other value against ``reference``: per
    seed ``value - reference`` of the pruned (selected-epoch) monitor metric over the seeds both
    have, with mean, 95% t and bootstrap intervals, wins and verdict (:func:`stats.paired`).

    ``df`` is what :func:`~deepcuts.analysis.report.collect_runs` returns. Runs pair when they
    have equal data, model, ratio basis, strategy, ratio, metric, selection and every other sweep
    value -- except the sweep keys under ``key``'s config prefix (``structure.group_score`` for
    ``structure.kind``): those only some values of ``key`` have, so they never block pairing; a
    side's values of them are its ``variant`` (the reference's: ``baseline_variant``), and two
    variants pair unless both set one of them differently. Runs without a value of ``key`` are
    left out; a value with no reference run in its cell gets a row with 0 seeds, its seeds
    unpaired.

    Columns: the cell keys, ``key`` (the value), ``variant``, ``control``, the ``paired.csv``
    columns (``baseline`` is the reference value, ``method_mean`` / ``baseline_mean`` the two
    sides over the paired seeds) and the achieved ratio means of both sides over the paired
    seeds (``achieved_ratio_mean``, ``baseline_achieved_ratio_mean``).

    Raises :class:`PairByError` when ``key`` is not a sweep or config key of the runs, or no run
    has ``key`` = ``reference``.
    """
    sweep = sweep_keys(df) if sweep is None else list(sweep)
    if df.empty:
        return pd.DataFrame(columns=["data", "strategy", "ratio", "metric", "selection", key,
                                     "variant", "control", *PAIRED, *RATIOS])
    config_key, col = _resolve(df, key, sweep)
    runs, keys, sweep = _prepare(df, sweep)
    if col not in runs:  # a config key no sweep varies
        runs[col] = pd.Series([_config_value(c, config_key) for c in runs["config"]],
                              index=runs.index, dtype=object)
    sub = _sub_keys(config_key, sweep)
    cell = [k for k in keys if k != col and k not in sub]
    runs = runs[[norm(v) is not MISSING for v in runs[col]]]
    is_ref = [_matches(v, reference) for v in runs[col]]
    if not any(is_ref):
        values = ", ".join(sorted({fmt(v) for v in runs[col]})) or "none"
        raise PairByError(f"no run has {key}={reference}; its values: {values}")
    shown = fmt(runs[col][is_ref].iloc[0])  # the reference as the config has it (5e-5: 5e-05)
    refs = {k: list(groups(part, sub).values()) for k, part in groups(runs[is_ref], cell).items()}
    out = []
    for group in groups(runs[[not r for r in is_ref]], [*cell, col, *sub]).values():
        first = group.iloc[0]
        higher = bool(first["higher_is_better"])
        method = _by_seed(group, "pruned")
        label = f"{key}={fmt(first[col])}"
        variants = [v for v in refs.get(row_key(first, cell), [])
                    if _compatible(first, v.iloc[0], sub)]
        for ref in variants or [group.iloc[:0]]:
            base = _by_seed(ref, "pruned")
            p = stats.paired(method, base, higher)
            ratio, base_ratio = _by_seed(group, "achieved_ratio"), _by_seed(ref, "achieved_ratio")
            out.append({
                **{k: first[k] for k in [*cell, col]}, "variant": _variant(first, sub),
                "control": bool(group["control"].astype(bool).any()),
                "baseline": shown,
                "baseline_variant": _variant(ref.iloc[0], sub) if len(ref) else "",
                "higher_is_better": higher, "seeds": p.n,
                "paired_seeds": " ".join(map(str, p.seeds)),
                "unpaired_seeds": " ".join(map(str, p.unpaired)),
                "method_mean": _mean([method[s] for s in p.seeds]),
                "baseline_mean": _mean([base[s] for s in p.seeds]),
                "mean_diff": p.mean, "t_low": p.t_low, "t_high": p.t_high,
                "boot_low": p.boot_low, "boot_high": p.boot_high, "wins": p.wins,
                "covers_zero": p.covers_zero, "verdict": p.verdict(label, f"{key}={shown}"),
                "achieved_ratio_mean": _mean([ratio[s] for s in p.seeds]),
                "baseline_achieved_ratio_mean": _mean([base_ratio[s] for s in p.seeds]),
            })
    columns = [*cell, col, "variant", "control", *PAIRED, *RATIOS]
    return _sorted(out, [*cell, col, "variant", "baseline_variant"], columns)


def _by_seed(runs: pd.DataFrame, column: str) -> dict[int, float]:
    values = pd.to_numeric(runs[column], errors="coerce").astype(float)
    return dict(zip(runs["seed"].astype(int).tolist(), values.tolist(), strict=True))


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


def write_paired_across(tables: Sequence[tuple[str, str, pd.DataFrame]],
                        out: Path) -> tuple[dict[str, Path], str]:
    """Write ``paired_<key>.csv`` per table under ``out``; return the paths by key and the
    Markdown sections."""
    paths, text = {}, ""
    for key, reference, table in tables:
        paths[key] = out / ("paired_" + re.sub(r"[^\w.-]", "_", key) + ".csv")
        table.to_csv(paths[key], index=False)
        text += "\n" + render_paired_across(table, key, reference)
    return paths, text


def render_paired_across(table: pd.DataFrame, key: str, reference: str) -> str:
    """The section "## Paired across `key` (reference `reference`)" of report.md: per data set
    a table like the paired differences'."""
    col = key if key in table.columns else _column(key)
    prefix = (key.rpartition(".")[0] or key) + ".*"
    variants = not table.empty and bool(
        (table[["variant", "baseline_variant"]].astype(str) != "").any(axis=None))
    lines = [f"## Paired across `{key}` (reference `{reference}`)", "",
             f"Per seed, the pruned metric at the selected epoch of the runs with another `{key}` "
             f"minus that of the runs with `{key}={reference}` and everything else equal (data, "
             "model, strategy, ratio, selection, every other sweep key), over the seeds both "
             "have"
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
        lines += _section(part, cell, col, key)
    return "\n".join(lines).rstrip("\n") + "\n"


def _section(part: pd.DataFrame, cell: Sequence[str], col: str, key: str) -> list[str]:
    head, align, ident = _row_head(part, cell)
    variant = bool((part["variant"].astype(str) != "").any())
    head += [f"`{key}`", *(["variant"] if variant else []), "reference", "achieved ratio",
             "seeds", "mean diff", "95% t-interval", "95% bootstrap", "wins", "verdict"]
    align += ["---"] * (2 + variant) + ["---:"] * 3 + ["---"] * 2 + ["---:", "---"]
    lines = _dev_note(part)
    for title, rows in _split(part):
        if rows.empty:
            continue
        cells = []
        for _, r in rows.iterrows():
            cells.append([*ident(r), fmt(r[col]), *([str(r["variant"])] if variant else []),
                          _reference_name(r), _ratios(r), *_paired_cells(r)])
        lines += [f"#### {title}", ""] + _table(head, align, cells)
    return lines


def _ratios(r: Any) -> str:
    a, b = r["achieved_ratio_mean"], r["baseline_achieved_ratio_mean"]
    return "n/a" if pd.isna(a) or pd.isna(b) else f"{a:.2f} vs {b:.2f}"
