"""End-to-end time per run: what one run of a strategy and setting costs when nothing is cached.

A sweep shares its stages: one job fine-tunes the dense model of a seed, one job per strategy and
seed scores it, every job runs its own masked fine-tune. From the runs' ``results.json``
(``timings_s`` and ``cache.builds``) this puts the pieces back together per report group (data,
strategy, ratio and every sweep key, so that e.g. structured and masked runs are never averaged
together) and seed:

    end-to-end = dense (the job that built that seed's dense model; 0 when the run skipped it)
               + scoring (the job that built those scores)
               + masked fine-tune + setup (the run's own)

Stages are matched by ``results.json``'s ``stage_keys`` (:func:`deepcuts.analysis.runs.stage_key`).
Identical jobs (one ``run_key``, e.g. a run and its copy restored from the cache) count once. A
stage no run in the folders built (all from an earlier sweep's cache) is left NaN, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from deepcuts.analysis.keys import groups
from deepcuts.analysis.runs import identical_jobs_once, row_order, stage_key

__all__ = ["TIMES", "built_seconds", "seconds", "stage_times"]

TIMING = {"dense": "dense", "scores": "scoring"}  # stage -> its timings_s entry
TIMES = ["runs", "dense_skipped", "dense_s", "scoring_s", "pruned_s", "setup_s", "end_to_end_s"]


def seconds(res: Mapping, entry: str) -> float:
    """results.json ``timings_s[entry]`` in seconds; NaN when absent."""
    timings = res.get("timings_s") if isinstance(res.get("timings_s"), Mapping) else {}
    value = timings.get(entry)
    return float(value) if isinstance(value, (int, float)) else math.nan


def builds(res: Mapping) -> list:
    """The stages this job built (results.json ``cache.builds``), not read from the cache."""
    cache = res.get("cache")
    return list(cache.get("builds") or []) if isinstance(cache, Mapping) else []


def built_seconds(results: Sequence[Mapping], stage: str, entry: str | None = None,
                  key=None) -> dict:
    """Seconds of ``stage`` per stage key (``key(res)``, default :func:`stage_key`), from the
    jobs whose ``cache.builds`` lists it (a hit's time is only the time to read the entry)."""
    entry = entry or TIMING.get(stage, stage)
    key = key or (lambda r: stage_key(r, stage))
    return {key(r): seconds(r, entry) for r in results if stage in builds(r)}


def stage_times(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``keys`` (the report's group keys) and seed: dense, scoring, masked
    fine-tune, setup and end-to-end seconds, and how many runs the masked time is the mean of
    (runs of one group and seed with different run keys, e.g. reruns). ``runs``: the run table."""
    columns = [*keys, "seed", *TIMES]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    runs = identical_jobs_once(runs)
    results = list(runs["results"])
    dense, scores = built_seconds(results, "dense"), built_seconds(results, "scores")
    out = []
    for part in groups(runs, [*keys, "seed"]).values():
        first = part.iloc[0]
        res = first["results"]
        skipped = bool(res.get("dense_skipped"))
        pruned = pd.Series([seconds(r, "pruned") for r in part["results"]], dtype=float).mean()
        setup = pd.Series([seconds(r, "setup") for r in part["results"]], dtype=float).fillna(0.0).mean()
        dense_s = 0.0 if skipped else dense.get(stage_key(res, "dense"), math.nan)
        scoring_s = scores.get(stage_key(res, "scores"), math.nan)
        out.append({**{k: first[k] for k in [*keys, "seed"]}, "runs": len(part),
                    "dense_skipped": skipped, "dense_s": dense_s, "scoring_s": scoring_s,
                    "pruned_s": pruned, "setup_s": setup,
                    "end_to_end_s": dense_s + scoring_s + pruned + setup})
    out.sort(key=lambda r: row_order(r, keys))
    return pd.DataFrame(out, columns=columns)
