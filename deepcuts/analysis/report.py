"""The comparison report: pruned dev metric per data x strategy x ratio over seeds (Figures 6-8).

It reads nothing but the outputs contract (``results.json`` in each run folder), so it works on
copied or old sweeps and never imports torch. Unfinished or failed runs are listed, never dropped.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

RESULTS = "results.json"
RUN_MARKERS = ("config.yaml", "masks.safetensors")  # files that make a folder a run folder
FIELDS = ("data", "model", "strategy", "ratio", "ratio_basis", "seed", "monitor", "achieved_ratio")
EXTRA = ("scope", "keep_fraction", "prunable_sparsity")
STATS = ["pruned_mean", "pruned_std", "dense_mean", "dense_std", "seeds", "achieved_ratio_mean"]


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


def collect_runs(folders: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[Path]]:
    """One row per complete run under ``folders`` (searched recursively) and the unfinished ones."""
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
            rows.append({
                **{k: res.get(k) for k in (*FIELDS, *EXTRA)},
                "ratio": float(res["ratio"]),
                "seed": int(res["seed"]),
                "metric": monitor,
                "pruned": _metric(res["pruned"], monitor),
                "dense": _metric(res["dense"], monitor),
                "path": str(run),
                "mtime": (run / RESULTS).stat().st_mtime,
            })
    columns = [*FIELDS, *EXTRA, "metric", "pruned", "dense", "path", "mtime"]
    return pd.DataFrame(rows, columns=columns), unfinished


def group_keys(df: pd.DataFrame) -> list[str]:
    """data, strategy, ratio, metric; plus model / ratio_basis when the runs mix them, so
    different models (or ratios counted on different bases) are never averaged together."""
    mixed = [k for k in ("model", "ratio_basis") if df[k].astype(str).nunique() > 1]
    return ["data", *mixed, "strategy", "ratio", "metric"]


def _latest(df: pd.DataFrame) -> pd.DataFrame:
    """One run per seed and group: a rerun of the same seed replaces the older one."""
    return df.sort_values("mtime").drop_duplicates([*group_keys(df), "seed"], keep="last")


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) of the pruned and dense monitor metric."""
    if df.empty:
        return pd.DataFrame(columns=["data", "strategy", "ratio", "metric", *STATS])
    keys = group_keys(df)
    runs = _latest(df).astype({k: str for k in keys if k != "ratio"})
    out = runs.groupby(keys, sort=True).agg(
        pruned_mean=("pruned", "mean"), pruned_std=("pruned", "std"),
        dense_mean=("dense", "mean"), dense_std=("dense", "std"),
        seeds=("seed", "nunique"), achieved_ratio_mean=("achieved_ratio", "mean"),
    )
    return out.reset_index()[[*keys, *STATS]]


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.4f} ± " + ("n/a" if pd.isna(std) else f"{std:.4f}")


def _markdown(summary: pd.DataFrame, folders: list[Path], unfinished: list[Path], n_runs: int,
              n_dupes: int) -> str:
    where = ", ".join(f"`{f}`" for f in folders)
    lines = ["# DeepCuts comparison report", ""]
    if summary.empty:
        lines += [f"No complete run under {where}; {len(unfinished)} unfinished or failed.", ""]
    else:
        lines += [f"{n_runs} complete runs under {where}; pruned dev metric (best epoch) as "
                  "mean ± sample std over seeds.", ""]
    if n_dupes:
        lines += [f"{n_dupes} older duplicate run(s) of the same seed were ignored.", ""]
    extra = [k for k in ("model", "ratio_basis") if k in summary.columns]
    for data, part in summary.groupby("data", sort=True):
        metric = ", ".join(sorted(part["metric"].unique()))
        lines += [f"## {data} ({metric})", ""]
        head = [*extra, "strategy", "ratio", "achieved ratio", f"pruned {metric}",
                f"dense {metric}", "seeds"]
        lines += ["| " + " | ".join(head) + " |",
                  "|" + "---|" * (len(extra) + 1) + "---:|" * 5]
        for r in part.itertuples(index=False):
            cells = [*(str(getattr(r, k)) for k in extra), r.strategy, f"{r.ratio:g}",
                     f"{r.achieved_ratio_mean:.2f}", _pm(r.pruned_mean, r.pruned_std),
                     _pm(r.dense_mean, r.dense_std), str(r.seeds)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"## Unfinished or failed runs ({len(unfinished)})", ""]
    lines += [f"- `{p}`: {_state(p)}" for p in unfinished] or ["None."]
    return "\n".join(lines) + "\n"


def _plot(data: str, summary: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Metric vs compression ratio, a line per strategy (error bars: std over seeds), dense dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    extra = [k for k in ("model", "ratio_basis") if k in summary.columns]
    for key, line in summary.groupby([*extra, "strategy"], sort=True):
        line = line.sort_values("ratio")
        ax.errorbar(line["ratio"], line["pruned_mean"], yerr=line["pruned_std"].fillna(0.0),
                    marker="o", capsize=3, label=" · ".join(map(str, key)))
    sub = ["model"] if "model" in extra else []
    per_seed = runs.astype({"model": str}).groupby([*sub, "seed"])["dense"].mean()
    dense = per_seed.groupby(level="model").mean() if sub else pd.Series({"": per_seed.mean()})
    for i, (model, level) in enumerate(dense.items()):
        if not pd.isna(level):
            ax.axhline(level, linestyle="--", color="gray" if not sub else f"C{i}", alpha=0.8,
                       label=f"dense · {model}" if sub else "dense")
    metric = ", ".join(sorted(summary["metric"].unique()))
    ax.set_xticks(sorted(summary["ratio"].unique()))
    bases = sorted(runs["ratio_basis"].astype(str).unique()) if "ratio_basis" in runs else []
    # the requested ratio; on a model smaller than the basis the achieved one is in the table
    ax.set_xlabel("compression ratio" + (f" (ratio_basis: {', '.join(bases)})" if bases else ""))
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{data}: pruned dev {metric} vs compression ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(folders: Iterable[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Write report.csv, report.md and ``<data>.png`` under ``out``, print the Markdown and
    return {"csv", "markdown": Path, "plots": {data: Path}, "unfinished": [Path], "summary"}."""
    folders = [Path(f) for f in folders]
    df, unfinished = collect_runs(folders)
    summary = summarise(df)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"csv": out / "report.csv", "markdown": out / "report.md",
                               "plots": {}, "unfinished": unfinished, "summary": summary}
    summary.to_csv(written["csv"], index=False)
    n_dupes = len(df) - len(_latest(df)) if not df.empty else 0
    text = _markdown(summary, folders, unfinished, len(df) - n_dupes, n_dupes)
    written["markdown"].write_text(text)
    runs = _latest(df) if not df.empty else df
    for data, part in summary.groupby("data", sort=True):
        path = out / (re.sub(r"[^\w.-]", "_", str(data)) + ".png")
        _plot(str(data), part, runs[runs["data"].astype(str) == data], path)
        written["plots"][data] = path
    print(text, end="", flush=True)
    return written


class ReportCallback(Callback):
    """Hydra callback: a multirun ends by writing and printing its report (``<sweep>/report``).

    Register it in the hydra config: ``callbacks: {report: {_target_:
    deepcuts.analysis.report.ReportCallback}}``.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_dir():
            print(f"report: sweep folder {sweep} does not exist; no run to report.", flush=True)
            return
        write_report([sweep], sweep / "report")
