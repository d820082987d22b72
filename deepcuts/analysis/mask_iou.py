"""How similar are the masks of two pruning strategies? IoU of kept and pruned weights.

Built only on the outputs contract of a run folder (``results.json`` + ``masks.safetensors``, one
bool tensor per pruned parameter, True = kept). Runs are compared only when data, model, ratio and
seed agree; with several seeds every number is computed per seed, then averaged.

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

Usage: ``python -m deepcuts.analysis.mask_iou RUN_FOLDERS... --out OUT [--heads N]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from deepcuts.analysis import plots_iou as P

RESULTS, MASKS = "results.json", "masks.safetensors"
_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
# The layout of results written before results.json had one (every model then was a BERT).
BERT_LAYOUT = {
    "layers": "bert.encoder.layer", "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
}
HEAD_PARTS = ("query", "key", "value")  # heads are row blocks of these; columns of attn_out
STATS = ["iou_kept", "iou_kept_random", "iou_pruned", "iou_pruned_random", "density_a", "density_b"]
KEYS = ["data", "model", "ratio", "seed", "strategy_a", "strategy_b"]
TENSOR_COLUMNS = [*KEYS, "parameter", "layer", *STATS]
HEAD_COLUMNS = [*KEYS, "layer", "head", *STATS]


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


@dataclass
class Run:
    """A finished run folder; masks are loaded on first use."""

    folder: Path
    results: dict
    heads_option: int | None = None
    _masks: dict | None = field(default=None, repr=False)
    _layout: dict | None = field(default=None, repr=False)

    data = property(lambda self: self.results["data"])
    model = property(lambda self: self.results["model"])
    strategy = property(lambda self: self.results["strategy"])
    ratio = property(lambda self: float(self.results["ratio"]))
    seed = property(lambda self: int(self.results["seed"]))

    @property
    def layout(self) -> dict:
        """``results.json``'s layout (the model YAML's), else ``config.yaml``'s model.layout, else
        :data:`BERT_LAYOUT` (results from before layouts: every model was a BERT)."""
        if self._layout is None:
            self._layout = check_layout(self.results.get("layout") or self._config_model().get("layout")
                                        or BERT_LAYOUT)
        return self._layout

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        if self._masks is None:
            self._masks = {k: v.bool() for k, v in load_file(str(self.folder / MASKS)).items()}
        return self._masks

    def heads(self, hidden: int) -> int:
        """``results.json``'s num_attention_heads, else --heads, else ``config.yaml``'s
        model.config.num_attention_heads, else 12 (BERT-base, MiniLM) if it divides hidden."""
        for value in (self.results.get("num_attention_heads"), self.heads_option, self._config_heads()):
            if value:
                return int(value)
        return 12 if hidden % 12 == 0 else (hidden // 64 if hidden % 64 == 0 else 1)

    def _config_heads(self) -> int | None:
        config = self._config_model().get("config") or {}
        return config.get("num_attention_heads") or config.get("n_heads")  # n_heads: DistilBERT

    def _config_model(self) -> dict:
        """``config.yaml``'s model section; {} when there is none or it cannot be read."""
        try:
            import yaml

            model = yaml.safe_load((self.folder / "config.yaml").read_text())["model"]
            return model if isinstance(model, dict) else {}
        except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError):
            return {}


def load_run(folder, heads: int | None = None) -> Run:
    folder = Path(folder)
    return Run(folder, json.loads((folder / RESULTS).read_text()), heads)


def find_runs(paths: Iterable, heads: int | None = None) -> tuple[list[Run], list[tuple[str, str]]]:
    """Every ``results.json`` under the paths (searched recursively): usable runs, and skipped
    folders with the reason (incomplete, no masks, unreadable, duplicate)."""
    runs, skipped, seen = [], [], {}
    files = set()
    for path in map(Path, paths):
        if not path.exists():
            skipped.append((str(path), "not found"))
        elif path.is_dir():
            files.update(p.resolve() for p in path.rglob(RESULTS))
    for file in sorted(files):
        try:
            run = load_run(file.parent, heads)
            key = (run.data, run.model, run.ratio, run.seed, run.strategy)
        except (OSError, ValueError, KeyError, TypeError) as err:
            skipped.append((str(file.parent), f"unreadable results.json ({err})"))
            continue
        if run.results.get("status") != "complete":
            skipped.append((str(file.parent), f"status {run.results.get('status')!r}"))
        elif not (file.parent / MASKS).is_file():
            skipped.append((str(file.parent), f"no {MASKS}"))
        elif key in seen:
            skipped.append((str(file.parent), f"duplicate of {seen[key]}"))
        else:
            seen[key] = str(file.parent)
            runs.append(run)
    return runs, skipped


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
    return {"data": run_a.data, "model": run_a.model, "ratio": run_a.ratio,
            "seed": run_a.seed, "strategy_a": run_a.strategy, "strategy_b": run_b.strategy}


def layer_table(tensors: pd.DataFrame) -> pd.DataFrame:
    """Per pair and layer: mean and min over the layer's tensors, kept and pruned, with the mean
    random baselines."""
    aggs = {f"{c}_{f}": (c, f) for c in ("iou_kept", "iou_pruned") for f in ("mean", "min")}
    aggs.update({f"{c}_mean": (c, "mean") for c in ("iou_kept_random", "iou_pruned_random")})
    table = tensors.groupby([*KEYS, "layer"], sort=False).agg(n_tensors=("parameter", "size"), **aggs)
    table = table.reset_index()
    return table.sort_values([*KEYS, "layer"], key=P.sort_key, kind="stable", ignore_index=True)


def layer_sparsity(run: Run) -> list[dict]:
    """Kept fraction per layer (all the layer's pruned tensors together) of one run."""
    totals: dict[str, list[int]] = {}
    layout = run.layout
    for name, mask in run.masks.items():
        total = totals.setdefault(layer_label(name, layout), [0, 0])
        total[0] += int(mask.sum())
        total[1] += mask.numel()
    return [{"data": run.data, "model": run.model, "ratio": run.ratio, "seed": run.seed,
             "strategy": run.strategy, "keep_fraction": run.results.get("keep_fraction"),
             "layer": layer, "kept": kept, "numel": n, "kept_fraction": kept / n}
            for layer, (kept, n) in totals.items()]


def pair_tables(folders: Sequence, heads: int | None = None) -> tuple[dict[str, pd.DataFrame], list, list]:
    """Compare every pair of strategies within each (data, model, ratio, seed): the tables
    ``tensor_iou``, ``layer_iou``, ``head_iou``, ``layer_sparsity``; the runs and the skipped."""
    runs, skipped = find_runs(folders, heads)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.data, run.model, run.ratio, run.seed), []).append(run)
    tensors, heads_dfs, sparsity = [], [], []
    for _, members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        members.sort(key=lambda r: r.strategy)
        for run in members:
            sparsity.extend(layer_sparsity(run))
        for run_a, run_b in itertools.combinations(members, 2):
            tensors.append(compare_runs(run_a, run_b))
            heads_dfs.append(compare_heads(run_a, run_b))
        for run in members:
            run._masks = None  # free the memory before the next group
    tensor_df = _concat(tensors, TENSOR_COLUMNS)
    tables = {"tensor_iou": tensor_df, "layer_iou": layer_table(tensor_df),
              "head_iou": _concat(heads_dfs, HEAD_COLUMNS),
              "layer_sparsity": pd.DataFrame(sparsity)}
    return tables, runs, skipped


def analyse(folders: Sequence, out, heads: int | None = None) -> dict[str, Path]:
    """:func:`pair_tables`, written into ``out`` as CSVs, PNGs and ``summary.md``. Returns
    ``{name: path}`` of the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables, runs, skipped = pair_tables(folders, heads)
    written = {}
    for name, table in tables.items():
        written[name] = out / f"{name}.csv"
        table.to_csv(written[name], index=False)
    written.update(P.write_plots(tables, out))
    written["summary"] = out / "summary.md"
    written["summary"].write_text(P.summary_markdown(tables, runs, skipped, written))
    return written


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mask_analysis", description=__doc__.split("\n")[0])
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
        from deepcuts.analysis.wandb_upload import log_folder

        print(f"logged to W&B: {log_folder(args.out, 'mask-analysis')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
