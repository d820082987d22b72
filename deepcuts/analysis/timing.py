"""End-to-end time per strategy: what one run of a strategy costs when nothing is cached.

A sweep shares its stages: one job fine-tunes the dense model of a seed, one job per strategy and
seed scores it, every job runs its own masked fine-tune. From the runs' ``results.json``
(``timings_s`` and ``cache.builds``) this puts the pieces back together per strategy and seed:

    end-to-end = dense (the job that built that seed's dense model; 0 when the run skipped it)
               + scoring (the job that built that strategy's scores for that seed)
               + masked fine-tune (mean over the strategy's runs of that seed) + setup

Stages are matched by ``results.json``'s ``stage_keys`` (the cache entries a run's dense model
and scores came from), or, in results written before those were recorded, by (data, model, seed)
and (data, model, strategy, seed, scoring_at). Identical runs (one ``run_key``, e.g. a run and its
copy restored from the cache) count once. Reads only the outputs contract; a stage no run in the
folders built (all from an earlier sweep's cache) is left NaN, never guessed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

FALLBACK = {"dense": ("data", "model", "seed"), "scores": ("data", "model", "strategy", "seed", "scoring_at")}
TIMING = {"dense": "dense", "scores": "scoring"}


def _runs(folders: Iterable[str | os.PathLike]) -> list[dict]:
    out, seen = [], set()
    for folder in folders:
        for path in sorted(Path(folder).rglob("results.json")):
            res = json.loads(path.read_text())
            key = res.get("run_key")
            if res.get("status") != "complete" or (key is not None and key in seen):
                continue
            seen.add(key)
            out.append(res)
    return out


def _stage_key(run: dict, stage: str) -> tuple:
    key = run.get("stage_keys", {}).get(stage)
    return (key,) if key else tuple(run.get(k) for k in FALLBACK[stage])


def _built(runs: list[dict], stage: str) -> dict[tuple, float]:
    """Seconds of ``stage`` per stage key, from the runs that built it."""
    return {_stage_key(r, stage): r.get("timings_s", {}).get(TIMING[stage], math.nan)
            for r in runs if stage in r.get("cache", {}).get("builds", [])}


def stage_times(folders: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per (data, model, strategy, rewind, seed): dense, scoring, pruned, setup and
    end-to-end seconds, and how many runs the pruned time is the mean of."""
    runs = _runs(folders)
    dense, scores = _built(runs, "dense"), _built(runs, "scores")
    rows: dict[tuple, dict] = {}
    for r in runs:
        key = (r["data"], r["model"], r["strategy"], r.get("rewind"), r["seed"])
        row = rows.setdefault(key, {**dict(zip(("data", "model", "strategy", "rewind", "seed"), key, strict=True)),
                                    "pruned": [], "setup": [], "dense_skipped": bool(r.get("dense_skipped"))})
        timings = r.get("timings_s", {})  # absent in results from before it was recorded
        row["pruned"].append(timings.get("pruned", math.nan))
        row["setup"].append(timings.get("setup", 0.0))
        row["dense"] = 0.0 if row["dense_skipped"] else dense.get(_stage_key(r, "dense"), math.nan)
        row["scoring"] = scores.get(_stage_key(r, "scores"), math.nan)
    table = []
    for row in rows.values():
        pruned, setup = sum(row["pruned"]) / len(row["pruned"]), sum(row["setup"]) / len(row["setup"])
        table.append({**{k: row[k] for k in ("data", "model", "strategy", "rewind", "seed", "dense_skipped")},
                      "runs": len(row["pruned"]), "dense_s": row["dense"], "scoring_s": row["scoring"],
                      "pruned_s": pruned, "setup_s": setup,
                      "end_to_end_s": row["dense"] + row["scoring"] + pruned + setup})
    return pd.DataFrame(table)


def _minutes(seconds: pd.Series) -> str:
    values = seconds / 60
    if values.isna().any():
        return "n/a"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def timing_markdown(times: pd.DataFrame) -> str:
    """Mean ± sd over seeds per data, strategy and rewind, in minutes."""
    if times.empty:
        return "No complete runs.\n"
    lines = ["| data | model | strategy | rewind | seeds | dense | scoring | masked fine-tune | end-to-end (min) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for (data, model, strategy, rewind), part in times.groupby(["data", "model", "strategy", "rewind"], sort=True):
        cells = {col: _minutes(part[col]) for col in ("dense_s", "scoring_s", "pruned_s", "end_to_end_s")}
        skipped = " (skipped)" if part["dense_skipped"].all() else ""
        lines.append(f"| {data} | {model} | {strategy} | {rewind} | {len(part)} | {cells['dense_s']}{skipped} | "
                     f"{cells['scoring_s']} | {cells['pruned_s']} | {cells['end_to_end_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="End-to-end time per strategy from run folders.")
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-seed table here")
    args = parser.parse_args(argv)
    times = stage_times(args.folders)
    if args.csv:
        times.to_csv(args.csv, index=False)
    print(timing_markdown(times), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
