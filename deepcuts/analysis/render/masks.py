"""Figures, ``summary.md`` and the command line of the mask analysis
(:mod:`deepcuts.analysis.mask_iou` computes it).

Uses matplotlib's Agg canvas through the object API (no pyplot, no global backend switch). Every
figure averages over seeds: a number is first computed per seed, then the seeds are averaged.
Files are named ``<kind>_<data>_r<ratio>...png``; when the runs span several models the model is
added to the data name (``<data>-<model>``) so the files of different models never collide, and a
variant (the sweep values the runs share, e.g. ``structure.kind=none``) is appended to the ratio.
Paths of run folders are printed relative to the output folder.

Usage: ``python -m deepcuts.analysis.render.masks RUN_FOLDERS... --out OUT [--heads N] [--wandb]``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepcuts.analysis.mask_iou import (
    GROUP,
    PAIR,
    Skipped,
    layer_order,
    pair_matrix,
    pair_summary,
    pair_tables,
    seed_mean,
    sort_key,
)
from deepcuts.analysis.runs import shown_path

_ANNOTATE_MAX = 400  # cells; beyond this a heatmap is left unannotated
KINDS = ("heatmap_mean", "heatmap_min", "layers", "sparsity")  # one figure each per group


def _safe(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


def group_tags(sparsity: pd.DataFrame) -> dict[tuple, str]:
    """``(data, model, ratio, variant) -> "<data>_r<ratio>[_<variant>]"`` (``<data>-<model>`` with
    several models; the variant sanitised, left out when empty)."""
    if sparsity.empty:
        return {}
    several = sparsity["model"].nunique() > 1
    tags = {}
    for data, model, ratio, variant in sparsity[GROUP].drop_duplicates().itertuples(index=False):
        tag = f"{_safe(data)}{'-' + _safe(model) if several else ''}_r{ratio:g}"
        tags[(data, model, ratio, variant)] = f"{tag}_{_safe(variant)}" if variant else tag
    return tags


def _title(group: tuple) -> str:
    data, model, ratio, variant = group
    return f"{data} · {model} · ratio {ratio:g}" + (f" · {variant}" if variant else "")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _annotate(ax, values: np.ndarray, text) -> None:
    if values.size > _ANNOTATE_MAX:
        return
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, text(i, j), ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 else "black")


def heatmap(matrix: pd.DataFrame, path: Path, title: str, chance: pd.DataFrame | None = None) -> Path:
    """Strategy x strategy heatmap of kept IoU; cells show the IoU (and ``x`` chance if given)."""
    n = len(matrix)
    fig = Figure(figsize=(2.5 + 0.7 * n, 2 + 0.6 * n))
    ax = fig.add_subplot()
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), matrix.index)
    ratio = None if chance is None else values / chance.to_numpy(dtype=float)
    _annotate(ax, values, lambda i, j: f"{values[i, j]:.2f}" + (
        "" if ratio is None or i == j else f"\n×{ratio[i, j]:.1f}"))
    fig.colorbar(image, ax=ax, label="kept IoU")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def layer_lines(layers: pd.DataFrame, path: Path, title: str) -> Path:
    """IoU vs layer, one line per pair, its random baseline dashed; kept (left), pruned (right)."""
    cols = ["iou_kept_mean", "iou_kept_random_mean", "iou_pruned_mean", "iou_pruned_random_mean"]
    per_pair = seed_mean(layers[[*PAIR, "layer", "seed", *cols]], [*PAIR, "layer"])
    labels = sorted(per_pair["layer"].unique(), key=layer_order)
    x = {label: i for i, label in enumerate(labels)}
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for ax, kind in zip(axes, ("kept", "pruned"), strict=True):
        for k, ((a, b), rows) in enumerate(per_pair.groupby(PAIR, sort=True)):
            rows = rows.sort_values("layer", key=sort_key)
            xs, color = rows["layer"].map(x), f"C{k % 10}"
            ax.plot(xs, rows[f"iou_{kind}_mean"], marker="o", ms=3, color=color, label=f"{a} vs {b}")
            ax.plot(xs, rows[f"iou_{kind}_random_mean"], ls="--", lw=1, color=color)
        ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel="layer", ylabel=f"mean {kind} IoU (dashed: random)", ylim=(0, 1.02))
        ax.set_title(f"{title}: {kind} weights", fontsize=9)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, path)


def head_heatmap(heads: pd.DataFrame, path: Path, title: str) -> Path:
    """Layer x head heatmap of the kept IoU of each head's weights."""
    grid = seed_mean(heads[["layer", "head", "seed", "iou_kept", "iou_kept_random"]], ["layer", "head"])
    values = grid.pivot(index="layer", columns="head", values="iou_kept").sort_index()
    fig = Figure(figsize=(2.5 + 0.55 * values.shape[1], 1.5 + 0.4 * values.shape[0]))
    ax = fig.add_subplot()
    array = values.to_numpy(dtype=float)
    image = ax.imshow(array, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), values.columns)
    ax.set_yticks(range(values.shape[0]), values.index)
    ax.set(xlabel="head", ylabel="layer")
    _annotate(ax, array, lambda i, j: f"{array[i, j]:.2f}")
    fig.colorbar(image, ax=ax, label="kept IoU")
    ax.set_title(f"{title} (random ≈ {grid['iou_kept_random'].mean():.3f})", fontsize=9)
    return _save(fig, path)


def sparsity_lines(sparsity: pd.DataFrame, path: Path, title: str) -> Path:
    """Kept fraction per layer, one line per strategy; dotted: the run's overall keep fraction."""
    per = seed_mean(sparsity[["strategy", "layer", "seed", "kept_fraction"]], ["strategy", "layer"])
    labels = sorted(per["layer"].unique(), key=layer_order)
    x = {label: i for i, label in enumerate(labels)}
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for k, (strategy, rows) in enumerate(per.groupby("strategy", sort=True)):
        rows = rows.sort_values("layer", key=sort_key)
        ax.plot(rows["layer"].map(x), rows["kept_fraction"], marker="o", ms=3, color=f"C{k % 10}",
                label=strategy)
    keep = pd.to_numeric(sparsity["keep_fraction"], errors="coerce").dropna()
    if not keep.empty:
        ax.axhline(keep.mean(), color="grey", ls=":", lw=1, label="keep_fraction")
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel="layer", ylabel="kept fraction", ylim=(0, None), title=title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, path)


def _pick(table: pd.DataFrame, data, model, ratio, variant) -> pd.DataFrame:
    return table[(table["data"] == data) & (table["model"] == model) & (table["ratio"] == ratio)
                 & (table["variant"] == variant)]


def _head_stem(tag: str, a: str, b: str) -> str:
    return f"heads_{tag}_{_safe(a)}_vs_{_safe(b)}"


def write_plots(tables: dict[str, pd.DataFrame], out: Path) -> dict[str, Path]:
    """Every PNG of every (data, model, ratio, variant) group; returns ``{file stem: path}``."""
    written, summary = {}, pair_summary(tables)
    for group, tag in group_tags(tables["layer_sparsity"]).items():
        title = _title(group)
        sparsity = _pick(tables["layer_sparsity"], *group)
        written[f"sparsity_{tag}"] = sparsity_lines(sparsity, out / f"sparsity_{tag}.png", title)
        pairs = _pick(summary, *group)
        if pairs.empty:
            continue
        strategies = sorted(sparsity["strategy"].unique())
        for kind, column in (("mean", "layer_mean"), ("min", "layer_min")):
            chance = pair_matrix(pairs, strategies, "iou_kept_random") if kind == "mean" else None
            stem = f"heatmap_{kind}_{tag}"
            written[stem] = heatmap(pair_matrix(pairs, strategies, column), out / f"{stem}.png",
                                    f"{title}: {kind} over layers of layer-mean kept IoU", chance)
        written[f"layers_{tag}"] = layer_lines(_pick(tables["layer_iou"], *group),
                                               out / f"layers_{tag}.png", title)
        for (a, b), rows in _pick(tables["head_iou"], *group).groupby(PAIR, sort=True):
            stem = _head_stem(tag, a, b)
            written[stem] = head_heatmap(rows, out / f"{stem}.png", f"{title}: {a} vs {b}")
    return written


def _figures(written: dict[str, Path], tables: dict[str, pd.DataFrame], group: tuple, tag: str) -> list[str]:
    """The file names of one group's figures (named, not matched by prefix: a tag can begin
    another group's tag)."""
    heads = _pick(tables["head_iou"], *group)[PAIR].drop_duplicates()
    stems = [f"{kind}_{tag}" for kind in KINDS]
    stems += [_head_stem(tag, a, b) for a, b in sorted(heads.itertuples(index=False))]
    return [written[stem].name for stem in stems if stem in written]


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if pd.isna(value) else f"{value:.{digits}f}"


def summary_markdown(tables: dict[str, pd.DataFrame], runs: list, skipped: list[Skipped],
                     written: dict, out: Path) -> str:
    """For each group a table of strategy pairs: kept and pruned IoU next to their random
    baselines, kept IoU as a multiple of chance, and the layer figures' file names; then the
    skipped folders (paths relative to ``out``)."""
    lines = [
        "# Mask similarity between pruning strategies", "",
        "Kept IoU = |A∩B| / |A∪B| of two runs' kept weights; pruned IoU is the same for the pruned "
        "weights (the paper's number). *random* is the expected IoU of two random masks at the same "
        "densities, pq / (p + q − pq) (pruned: at 1 − p, 1 − q); *× chance* = IoU / random. Means are "
        "unweighted over the pruned tensors, computed per seed, then averaged over seeds; *min layer* "
        "is the lowest layer-mean kept IoU. Runs are compared only within one data set, model, "
        "ratio, variant (the sweep values they share) and seed.", "",
        f"Runs analysed: {len(runs)}; skipped: {len(skipped)}.", "",
    ]
    summary, sparsity = pair_summary(tables), tables["layer_sparsity"]
    for group, tag in group_tags(sparsity).items():
        seeds = ", ".join(map(str, sorted(_pick(sparsity, *group)["seed"].unique())))
        lines += [f"## {_title(group)} (seeds {seeds})", ""]
        pairs = _pick(summary, *group)
        if pairs.empty:
            lines += ["Only one strategy: nothing to compare.", ""]
        else:
            lines += ["| A | B | kept IoU | random | × chance | pruned IoU | random | min layer | seeds |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in pairs.itertuples(index=False):
                times = r.iou_kept / r.iou_kept_random if r.iou_kept_random > 0 else float("nan")
                lines.append(f"| {r.strategy_a} | {r.strategy_b} | {_fmt(r.iou_kept)} | "
                             f"{_fmt(r.iou_kept_random)} | {_fmt(times, 1)}{'' if pd.isna(times) else '×'} | {_fmt(r.iou_pruned)} | "
                             f"{_fmt(r.iou_pruned_random)} | {_fmt(r.layer_min)} | {r.n_seeds} |")
            lines.append("")
        figures = _figures(written, tables, group, tag)
        lines += ["Figures: " + ", ".join(f"`{name}`" for name in figures), ""] if figures else []
    if skipped:
        lines += ["## Skipped", ""]
        lines += [f"- `{shown_path(s.path, out)}`: {s.text(lambda p: f'`{shown_path(p, out)}`')}"
                  for s in skipped] + [""]
    return "\n".join(lines)


def analyse(folders: Sequence, out, heads: int | None = None) -> dict[str, Path]:
    """:func:`~deepcuts.analysis.mask_iou.pair_tables`, written into ``out`` as CSVs, PNGs and
    ``summary.md``. Returns ``{name: path}`` of the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables, runs, skipped = pair_tables(folders, heads)
    written = {}
    for name, table in tables.items():
        written[name] = out / f"{name}.csv"
        table.to_csv(written[name], index=False)
    written.update(write_plots(tables, out))
    written["summary"] = out / "summary.md"
    written["summary"].write_text(summary_markdown(tables, runs, skipped, written, out))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mask_analysis",
                                     description="Mask similarity (IoU) between pruning strategies.")
    parser.add_argument("runs", nargs="+", help="run folders or multirun roots (searched recursively)")
    parser.add_argument("--out", required=True, help="folder for the CSVs, PNGs and summary.md")
    parser.add_argument("--heads", type=int, default=None,
                        help="attention heads when results.json lacks num_attention_heads "
                             "(default: config.yaml's model.config, else 12)")
    parser.add_argument("--wandb", action="store_true", help="also log the figures and tables to W&B")
    args = parser.parse_args(argv)
    for name, path in analyse(args.runs, args.out, args.heads).items():
        print(f"{name}: {path}")
    if args.wandb:
        from deepcuts.analysis.render.wandb import log_folder

        print(f"logged to W&B: {log_folder(args.out, 'mask-analysis')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
