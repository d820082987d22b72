"""How similar are the masks of two pruning strategies? IoU of kept and pruned weights.

Built only on the outputs contract of a run folder (``results.json`` + ``masks.safetensors``, one
bool tensor per pruned parameter, True = kept), read through
:func:`deepcuts.analysis.runs.collect_runs`. Runs are compared only when data, model, ratio,
variant and seed agree: the variant is the run's values of the sweep keys (config values a sweep
varied, :func:`~deepcuts.analysis.runs.sweep_keys`) outside ``strategy.``, so runs that differ in
e.g. ``structure.kind`` are never compared with each other; ``strategy.`` sweep keys go into the
strategy's label instead (``smoothgrad (strategy.sigma=0.5)``), so two settings of one strategy
are two members of a comparison. With several seeds every number is computed per seed, then
averaged.

IoU (Jaccard index) of two masks A, B is ``|A & B| / |A | B|``. When both are empty the IoU is
defined as 1.0 (two empty sets are identical). The paper's number is the IoU of the *pruned* sets,
``iou(~A, ~B)``; at high sparsity it is large even for unrelated masks, so each IoU is reported
next to the expected IoU of two random masks at the same densities.

Random baseline: two independent masks of ``n`` entries keeping ``round(p n)`` and ``round(q n)``
entries uniformly at random have, for large ``n``, ``E|A & B| ~ n p q`` and
``E|A | B| ~ n (p + q - p q)``, so ``IoU_random ~ p q / (p + q - p q)`` (1.0 when p = q = 0). The
pruned-set baseline is the same formula at ``1 - p, 1 - q``. E.g. p = q = 0.147 gives a kept IoU
of 0.0794 and a pruned IoU of 0.743 by chance alone.

Per-head analysis follows the run's ``layout`` (``results.json``; the model YAML's): the layer list
and the names of each layer's query, key, value and attention-output Linears, so it works for
every architecture. Results without a layout come from BERT models and use :data:`BERT_LAYOUT`.

Figures, ``summary.md`` and the command line: :mod:`deepcuts.analysis.render.masks`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from safetensors.torch import load_file

from deepcuts.analysis.keys import MISSING, fmt, norm, row_key, sort_value
from deepcuts.analysis.runs import (
    MASKS,
    collect_runs,
    config_key,
    dense_key,
    identical_jobs_once,
    latest,
    sweep_keys,
    with_sweep_columns,
)

_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
# The layout of results written before results.json had one (every model then was a BERT).
BERT_LAYOUT = {
    "layers": "bert.encoder.layer", "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
}
HEAD_PARTS = ("query", "key", "value")  # heads are row blocks of these; columns of attn_out
STATS = ["iou_kept", "iou_kept_random", "iou_pruned", "iou_pruned_random", "density_a", "density_b"]
GROUP = ["data", "model", "ratio", "variant"]  # runs are compared within a group and seed
PAIR = ["strategy_a", "strategy_b"]  # strategy labels, a < b
KEYS = [*GROUP, "seed", *PAIR]
TENSOR_COLUMNS = [*KEYS, "parameter", "layer", *STATS]
HEAD_COLUMNS = [*KEYS, "layer", "head", *STATS]
SPARSITY_COLUMNS = [*GROUP, "seed", "strategy", "keep_fraction", "layer", "kept", "numel",
                    "kept_fraction"]
SUMMARY_STATS = ["iou_kept", "iou_kept_random", "iou_pruned", "iou_pruned_random"]


def iou(a, b) -> float:
    """Jaccard index of two boolean masks of the same shape; 1.0 when both are empty."""
    a, b = torch.as_tensor(a).bool(), torch.as_tensor(b).bool()
    if a.shape != b.shape:
        raise ValueError(f"cannot compare masks of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def random_iou(p: float, q: float) -> float:
    """Expected IoU of two independent random masks with densities p, q: ``pq / (p + q - pq)``
    (large-n closed form, see the module docstring); 1.0 when p = q = 0."""
    if not (0 <= p <= 1 and 0 <= q <= 1):
        raise ValueError(f"densities must be in [0, 1], got {p} and {q}")
    union = p + q - p * q
    return 1.0 if union <= 0 else p * q / union


def pair_stats(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Kept and pruned IoU of two masks, each with its random baseline, and both densities."""
    n = max(a.numel(), 1)
    pa, pb = int(a.sum()) / n, int(b.sum()) / n
    return {
        "iou_kept": iou(a, b), "iou_kept_random": random_iou(pa, pb),
        "iou_pruned": iou(~a, ~b), "iou_pruned_random": random_iou(1 - pa, 1 - pb),
        "density_a": pa, "density_b": pb,
    }


def check_layout(layout: dict) -> dict:
    """A layout names the layer list and the query, key, value and attn_out Linears."""
    missing = [k for k in ("layers", *HEAD_PARTS, "attn_out") if not (layout or {}).get(k)]
    if missing:
        raise ValueError(f"layout {layout!r} lacks {missing}")
    return dict(layout)


def layer_index(name: str, layout: dict | None = None) -> int | None:
    """``<layers>.<i>.`` -> i for the layout's layer list (without a layout: any
    ``...encoder.layer.<i>.``); anything else (the pooler) -> None."""
    if layout is None:
        match = _LAYER.search(name)
        return int(match.group(1)) if match else None
    head, _, rest = name.partition(f"{layout['layers']}.")
    index = rest.split(".", 1)[0]
    return int(index) if not head and index.isdigit() else None


def layer_label(name: str, layout: dict | None = None) -> str:
    """The encoder layer as a string, ``"pooler"`` for the pooler, ``"other"`` for the rest."""
    index = layer_index(name, layout)
    if index is not None:
        return str(index)
    return "pooler" if "pooler." in name else "other"


def _layer_prefix(masks: dict[str, torch.Tensor], layer: int, layout: dict | None) -> str:
    if layout is not None:
        return f"{layout['layers']}.{layer}."
    for name in masks:
        match = _LAYER.search(name)
        if match and int(match.group(1)) == layer:
            return name[: match.end()]
    raise ValueError(f"no mask of encoder layer {layer}")


def head_slices(masks: dict[str, torch.Tensor], layer: int, heads: int,
                layout: dict | None = None) -> dict[int, dict]:
    """Per head, its pieces of the layer's masks: rows ``h*d:(h+1)*d`` of the query, key and value
    weight and bias, and columns ``h*d:(h+1)*d`` of the attention output's weight (d = hidden /
    heads, hidden = the query weight's rows), keyed ``query.weight`` ... ``attn_out.weight``.
    Module names come from ``layout`` (default :data:`BERT_LAYOUT`). Pieces whose tensor was not
    pruned are left out."""
    layout = check_layout(layout or BERT_LAYOUT)
    prefix = _layer_prefix(masks, layer, layout)
    query = masks.get(f"{prefix}{layout['query']}.weight")
    if query is None:
        raise ValueError(f"layer {layer} has no mask for {prefix}{layout['query']}.weight")
    hidden = query.shape[0]
    if heads < 1 or hidden % heads:
        raise ValueError(f"hidden size {hidden} of layer {layer} does not split into {heads} heads")
    size = hidden // heads
    output = masks.get(f"{prefix}{layout['attn_out']}.weight")
    pieces: dict[int, dict] = {}
    for head in range(heads):
        rows = slice(head * size, (head + 1) * size)
        pieces[head] = {
            f"{part}.{kind}": masks[f"{prefix}{layout[part]}.{kind}"][rows]
            for part in HEAD_PARTS
            for kind in ("weight", "bias")
            if f"{prefix}{layout[part]}.{kind}" in masks
        }
        if output is not None:
            pieces[head]["attn_out.weight"] = output[:, rows]
    return pieces


def _head_masks(masks, layer, heads, layout) -> list[torch.Tensor]:
    return [
        torch.cat([piece.reshape(-1) for piece in part.values()])
        for part in head_slices(masks, layer, heads, layout).values()
    ]


def head_stats(masks_a, masks_b, layer: int, heads: int, layout: dict | None = None) -> list[dict[str, float]]:
    """``pair_stats`` of each head's kept weights (all its pieces together)."""
    return [pair_stats(a, b) for a, b in zip(_head_masks(masks_a, layer, heads, layout),
                                             _head_masks(masks_b, layer, heads, layout), strict=True)]


def head_iou(masks_a, masks_b, layer: int, heads: int, layout: dict | None = None) -> list[float]:
    """IoU of each head's kept weights (Q/K/V rows and attention-output columns)."""
    return [s["iou_kept"] for s in head_stats(masks_a, masks_b, layer, heads, layout)]


def query_layers(masks: dict[str, torch.Tensor], layout: dict) -> dict[int, torch.Tensor]:
    """``{layer: query weight mask}`` of every layer whose query weight was pruned."""
    suffix = f".{layout['query']}.weight"
    return {layer_index(name, layout): mask for name, mask in masks.items()
            if name.endswith(suffix) and layer_index(name, layout) is not None}


def layer_order(label) -> float:
    """Encoder layers by number, then the pooler, then anything else."""
    text = str(label)
    return float(text) if text.isdigit() else (1e6 if text == "pooler" else 1e6 + 1)


def sort_key(column: pd.Series) -> pd.Series:
    """``sort_values`` key: layers in model order, every other column as it is."""
    return column.map(layer_order) if column.name == "layer" else column


# --- runs ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """A finished run folder; masks are loaded on first use.

    ``config`` is the run's flattened ``config.yaml`` (the run table's column; None without one).
    ``variant`` and ``label`` say where the run sits in a comparison (see the module docstring):
    the non-``strategy.`` sweep values, and the strategy with its own sweep values (default: the
    strategy)."""

    folder: Path
    results: dict
    heads_option: int | None = None
    config: dict | None = None
    variant: str = ""
    label: str = ""
    _masks: dict | None = field(default=None, repr=False)
    _layout: dict | None = field(default=None, repr=False)

    data = property(lambda self: self.results["data"])
    model = property(lambda self: self.results["model"])
    strategy = property(lambda self: self.results["strategy"])
    ratio = property(lambda self: float(self.results["ratio"]))
    seed = property(lambda self: int(self.results["seed"]))

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.label = self.label or str(self.strategy)

    @property
    def layout(self) -> dict:
        """``results.json``'s layout (the model YAML's), else ``config.yaml``'s model.layout, else
        :data:`BERT_LAYOUT` (results from before layouts: every model was a BERT)."""
        if self._layout is None:
            self._layout = check_layout(self.results.get("layout") or self._config_section("model.layout")
                                        or BERT_LAYOUT)
        return self._layout

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        if self._masks is None:
            self._masks = {k: v.bool() for k, v in load_file(str(self.folder / MASKS)).items()}
        return self._masks

    def release(self) -> None:
        """Forget the loaded masks (they are read again on next use)."""
        self._masks = None

    def heads(self, hidden: int) -> int:
        """``results.json``'s num_attention_heads, else --heads, else ``config.yaml``'s
        model.config.num_attention_heads (n_heads: DistilBERT), else 12 (BERT-base, MiniLM) if it
        divides hidden."""
        config = self._config_section("model.config")
        for value in (self.results.get("num_attention_heads"), self.heads_option,
                      config.get("num_attention_heads"), config.get("n_heads")):
            if value:
                return int(value)
        return 12 if hidden % 12 == 0 else (hidden // 64 if hidden % 64 == 0 else 1)

    def _config_section(self, prefix: str) -> dict:
        """The flattened config's keys under ``prefix.``, without it; {} without a config."""
        start = prefix + "."
        return {k[len(start):]: v for k, v in (self.config or {}).items() if k.startswith(start)}


class Skipped(NamedTuple):
    """A run folder left out of the comparison: ``reason``, followed by the folder ``other``
    when there is one (``older rerun of``: the newer run that replaced it)."""

    path: Path
    reason: str
    other: Path | None = None

    def text(self, shown: Callable[[Path], str] = str) -> str:
        """The reason as a report prints it, ``other`` through ``shown`` (e.g. a function giving
        the path relative to the report's folder)."""
        return self.reason if self.other is None else f"{self.reason} {shown(self.other)}"


def _values(row: dict, cols: Sequence[str]) -> list[str]:
    """``key=value`` of each sweep column the run has a value for."""
    return [f"{config_key(c)}={fmt(row[c])}" for c in cols if norm(row[c]) is not MISSING]


def _placed(df: pd.DataFrame) -> pd.DataFrame:
    """The run table with ``variant`` and ``label`` (see the module docstring). Runs that mix
    ratio bases or selection rules (columns of the report's group keys, not sweep keys) get
    ``ratio_basis=...`` / ``selection=...`` in their variant: their masks differ by design."""
    sweep = sweep_keys(df)
    df = with_sweep_columns(df, sweep)
    own = [c for c in sweep if config_key(c).startswith("strategy.")]
    other = [c for c in sweep if c not in own]
    mixed = [k for k in ("ratio_basis", "selection") if df[k].astype(str).nunique() > 1]
    variants, labels = [], []
    for row in df.to_dict("records"):
        parts = [f"{k}={fmt(row[k])}" for k in mixed] + _values(row, other)
        variants.append(", ".join(parts))
        values = _values(row, own)
        labels.append(str(row["strategy"]) + (f" ({', '.join(values)})" if values else ""))
    return df.assign(variant=pd.Series(variants, index=df.index, dtype=object),
                     label=pd.Series(labels, index=df.index, dtype=object))


def find_runs(paths: Iterable, heads: int | None = None) -> tuple[list[Run], list[Skipped]]:
    """The runs to compare under ``paths`` (:func:`~deepcuts.analysis.runs.collect_runs`), sorted
    by data, model, ratio, variant, label and seed, and the folders left out with why: unfinished
    or failed, no masks, a copy of a job already found (same run key), or an older rerun (same
    data, model, ratio, variant, label and seed; the newest results.json counts). Raises
    FileNotFoundError for a path that does not exist."""
    df, unfinished = collect_runs(paths)
    skipped = [Skipped(Path(path), why) for path, why in unfinished.items()]
    has_masks = pd.Series([(Path(p) / MASKS).is_file() for p in df["path"]], index=df.index, dtype=bool)
    skipped += [Skipped(Path(path), f"no {MASKS}") for path in df.loc[~has_masks, "path"]]
    df = df[has_masks]
    if df.empty:  # nothing to compare (and identical_jobs_once would drop the columns)
        return [], sorted(skipped, key=lambda s: str(s.path))
    once = identical_jobs_once(df)
    first = {k: p for k, p in zip(once["run_key"], once["path"], strict=True) if isinstance(k, str)}
    skipped += [Skipped(Path(df.at[i, "path"]), "same job (run key) as", Path(first[df.at[i, "run_key"]]))
                for i in df.index.difference(once.index)]
    df = _placed(once)
    keys = ["data", "model", "ratio", "variant", "label"]
    kept = latest(df, keys)
    newest = {(*row_key(r, keys), r["seed"]): r["path"] for r in kept.to_dict("records")}
    skipped += [Skipped(Path(df.at[i, "path"]), "older rerun of",
                        Path(newest[(*row_key(df.loc[i], keys), df.at[i, "seed"])]))
                for i in df.index.difference(kept.index)]
    runs = [Run(Path(r["path"]), r["results"], heads, r["config"], r["variant"], r["label"])
            for r in kept.to_dict("records")]
    return runs, sorted(skipped, key=lambda s: str(s.path))


def load_run(folder, heads: int | None = None) -> Run:
    """The finished run in ``folder`` (read like every run, through
    :func:`~deepcuts.analysis.runs.collect_runs`); ValueError when it is not one."""
    folder = Path(folder)
    df, unfinished = collect_runs([folder])
    rows = df[pd.Series([Path(p).resolve() == folder.resolve() for p in df["path"]], index=df.index, dtype=bool)]
    if rows.empty:
        why = unfinished.get(folder) or next(iter(unfinished.values()), "no run folder")
        raise ValueError(f"{folder} is not a finished run: {why}")
    row = rows.iloc[0]
    return Run(folder, row["results"], heads, row["config"])


def compare_runs(run_a, run_b) -> pd.DataFrame:
    """One row per prunable tensor: kept and pruned IoU with their random baselines. Raises
    ``ValueError`` when the two runs' mask names or shapes differ (masks of different models)."""
    run_a = run_a if isinstance(run_a, Run) else load_run(run_a)
    run_b = run_b if isinstance(run_b, Run) else load_run(run_b)
    masks_a, masks_b = run_a.masks, run_b.masks
    for name in sorted(set(masks_a) ^ set(masks_b)):
        owner, other = (run_a, run_b) if name in masks_a else (run_b, run_a)
        raise ValueError(f"mask {name!r} is in {owner.folder} but not in {other.folder}: "
                         "the masks come from different models")
    rows, layout = [], run_a.layout
    for name, a in masks_a.items():
        b = masks_b[name]
        if a.shape != b.shape:
            raise ValueError(f"mask {name!r} has shape {tuple(a.shape)} in {run_a.folder} but "
                             f"{tuple(b.shape)} in {run_b.folder}: the masks come from different models")
        rows.append({**_keys(run_a, run_b), "parameter": name, "layer": layer_label(name, layout),
                     **pair_stats(a, b)})
    return pd.DataFrame(rows, columns=TENSOR_COLUMNS)


def compare_heads(run_a: Run, run_b: Run) -> pd.DataFrame:
    """One row per (layer, head) of every layer whose attention query weight was pruned; the
    module names come from the runs' layout (which must agree)."""
    layout = run_a.layout
    if run_b.layout != layout:
        raise ValueError(f"{run_a.folder} and {run_b.folder} have different layouts: "
                         "the masks come from different architectures")
    rows = []
    for layer, query in sorted(query_layers(run_a.masks, layout).items()):
        hidden = query.shape[0]
        heads_a, heads_b = run_a.heads(hidden), run_b.heads(hidden)
        if heads_a != heads_b:
            raise ValueError(f"{run_a.folder} has {heads_a} heads but {run_b.folder} {heads_b}")
        for head, stats in enumerate(head_stats(run_a.masks, run_b.masks, layer, heads_a, layout)):
            rows.append({**_keys(run_a, run_b), "layer": layer, "head": head, **stats})
    return pd.DataFrame(rows, columns=HEAD_COLUMNS)


def _keys(run_a: Run, run_b: Run) -> dict:
    return {"data": run_a.data, "model": run_a.model, "ratio": run_a.ratio, "variant": run_a.variant,
            "seed": run_a.seed, "strategy_a": run_a.label, "strategy_b": run_b.label}


def layer_table(tensors: pd.DataFrame) -> pd.DataFrame:
    """Per pair and layer: mean and min over the layer's tensors, kept and pruned, with the mean
    random baselines."""
    aggs = {f"{c}_{f}": (c, f) for c in ("iou_kept", "iou_pruned") for f in ("mean", "min")}
    aggs.update({f"{c}_mean": (c, "mean") for c in ("iou_kept_random", "iou_pruned_random")})
    table = tensors.groupby([*KEYS, "layer"], sort=False).agg(n_tensors=("parameter", "size"), **aggs)
    table = table.reset_index()
    return table.sort_values([*KEYS, "layer"], key=sort_key, kind="stable", ignore_index=True)


def layer_sparsity(run: Run) -> list[dict]:
    """Kept fraction per layer (all the layer's pruned tensors together) of one run; ``strategy``
    is the run's label."""
    totals: dict[str, list[int]] = {}
    layout = run.layout
    for name, mask in run.masks.items():
        total = totals.setdefault(layer_label(name, layout), [0, 0])
        total[0] += int(mask.sum())
        total[1] += mask.numel()
    return [{"data": run.data, "model": run.model, "ratio": run.ratio, "variant": run.variant,
             "seed": run.seed, "strategy": run.label, "keep_fraction": run.results.get("keep_fraction"),
             "layer": layer, "kept": kept, "numel": n, "kept_fraction": kept / n}
            for layer, (kept, n) in totals.items()]


def pair_tables(folders: Sequence, heads: int | None = None) -> tuple[dict[str, pd.DataFrame], list[Run], list[Skipped]]:
    """Compare every pair of strategy labels within each (data, model, ratio, variant, seed) whose
    masks come from one dense model (results.json ``stage_keys.dense``, when both record it): the
    tables ``tensor_iou``, ``layer_iou``, ``head_iou``, ``layer_sparsity``; the runs compared and
    the folders skipped (:func:`find_runs`, and pairs of two dense models)."""
    runs, skipped = find_runs(folders, heads)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.data, run.model, run.ratio, run.variant, run.seed), []).append(run)
    tensors, heads_dfs, sparsity = [], [], []
    for _, members in sorted(groups.items(), key=lambda kv: tuple(map(sort_value, kv[0]))):
        members.sort(key=lambda r: r.label)
        for run in members:
            sparsity.extend(layer_sparsity(run))
        for run_a, run_b in itertools.combinations(members, 2):
            if dense_key(run_a.results) and dense_key(run_b.results) and dense_key(run_a.results) != dense_key(run_b.results):
                # the pairing rule of deepcuts.analysis.compare: masks of one dense model only
                skipped.append(Skipped(run_b.folder, "not compared (another dense model) with", run_a.folder))
                continue
            tensors.append(compare_runs(run_a, run_b))
            heads_dfs.append(compare_heads(run_a, run_b))
        for run in members:
            run.release()  # free the memory before the next group
    tensor_df = _concat(tensors, TENSOR_COLUMNS)
    tables = {"tensor_iou": tensor_df, "layer_iou": layer_table(tensor_df),
              "head_iou": _concat(heads_dfs, HEAD_COLUMNS),
              "layer_sparsity": pd.DataFrame(sparsity, columns=SPARSITY_COLUMNS)}
    return tables, runs, skipped


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


# --- summaries over seeds -----------------------------------------------------------------------


def seed_mean(per_seed: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Average the per-seed rows over seeds; ``n_seeds`` counts them."""
    values = [c for c in per_seed.columns if c not in (*keys, "seed")]
    table = per_seed.groupby(keys, sort=False)[values].mean()
    table["n_seeds"] = per_seed.groupby(keys, sort=False)["seed"].nunique()
    return table.reset_index()


def pair_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per group and pair: mean IoU over all tensors with random baselines, and the mean / min over
    layers of the layer-mean kept IoU; per seed, then averaged over seeds (``n_seeds``)."""
    tensors, layers = tables["tensor_iou"], tables["layer_iou"]
    if tensors.empty:
        return pd.DataFrame(columns=[*GROUP, *PAIR, *SUMMARY_STATS, "layer_mean", "layer_min", "n_seeds"])
    keys = [*GROUP, "seed", *PAIR]
    means = tensors.groupby(keys, sort=False)[SUMMARY_STATS].mean()
    by_layer = layers.groupby(keys, sort=False)["iou_kept_mean"]
    means["layer_mean"], means["layer_min"] = by_layer.mean(), by_layer.min()
    return seed_mean(means.reset_index(), [*GROUP, *PAIR])


def pair_matrix(summary: pd.DataFrame, strategies: list[str], column: str, diagonal=1.0) -> pd.DataFrame:
    """Strategy x strategy matrix of a :func:`pair_summary` column (symmetric); ``diagonal`` on
    the diagonal, NaN for pairs not compared."""
    matrix = pd.DataFrame(math.nan, index=strategies, columns=strategies)
    for row in summary.itertuples(index=False):
        a, b, value = row.strategy_a, row.strategy_b, getattr(row, column)
        matrix.loc[a, b] = matrix.loc[b, a] = value
    for s in strategies:
        matrix.loc[s, s] = diagonal
    return matrix


@dataclass
class KeptGrid:
    """One (data, model, ratio, variant)'s strategy x strategy kept IoU, averaged over seeds."""

    data: str
    model: str
    ratio: float
    variant: str
    names: list[str]  # strategy labels, sorted
    z: list[list[float]]  # kept IoU, mean over tensors per seed, then over seeds; diagonal 1.0,
    # NaN where the pair was not compared
    chance: float  # mean kept IoU of two random masks at the same densities over the pairs
    seeds: int  # the most seeds of any pair


def kept_iou_grids(tables: dict[str, pd.DataFrame]) -> list[KeptGrid]:
    """A :class:`KeptGrid` per group with at least one pair (:func:`pair_tables`' tables),
    sorted by data, model, ratio and variant."""
    summary = pair_summary(tables)
    grids = []
    for (data, model, ratio, variant), pairs in summary.groupby(GROUP, sort=True):
        names = sorted(set(pairs["strategy_a"]) | set(pairs["strategy_b"]))
        grids.append(KeptGrid(
            data=str(data), model=str(model), ratio=float(ratio), variant=str(variant), names=names,
            z=pair_matrix(pairs, names, "iou_kept").to_numpy(dtype=float).tolist(),
            chance=float(pairs["iou_kept_random"].mean()), seeds=int(pairs["n_seeds"].max())))
    return grids
