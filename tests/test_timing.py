"""End-to-end time per run, put back together from the stages a sweep shared, per report group."""

from __future__ import annotations

import json
import math

import yaml

from deepcuts.analysis.render.markdown import timing_markdown
from deepcuts.analysis.runs import collect_runs, group_keys, sweep_keys
from deepcuts.analysis.timing import stage_times


def write(folder, name, config=None, **res):
    run = folder / name
    run.mkdir(parents=True)
    base = {"status": "complete", "data": "stsb", "model": "minilm", "rewind": "finetuned",
            "scoring_at": "finetuned", "ratio": 2.0, "ratio_basis": "bert_base", "monitor": "pearson",
            "achieved_ratio": 2.0, "dense": {"pearson": 0.8}, "pruned": {"pearson": 0.7}}
    (run / "results.json").write_text(json.dumps({**base, **res}))
    if config is not None:
        (run / "config.yaml").write_text(yaml.safe_dump(config))


def times(folder):
    df, _ = collect_runs([folder])
    keys = group_keys(df, sweep_keys(df))
    return stage_times(df, keys), keys


def test_stages_come_from_the_jobs_that_built_them(tmp_path):
    t = lambda dense, scoring, pruned: {"dense": dense, "scoring": scoring, "pruned": pruned, "setup": 1.0}  # noqa: E731
    write(tmp_path, "a", strategy="taylor", seed=0, run_key="a", timings_s=t(100.0, 20.0, 50.0), cache={"builds": ["dense", "scores"]})
    write(tmp_path, "b", strategy="taylor", seed=0, run_key="b", timings_s=t(0.1, 0.1, 70.0), cache={"builds": []})
    write(tmp_path, "c", strategy="wanda", seed=0, timings_s=t(0.1, 5.0, 60.0), cache={"builds": ["scores"]})
    write(tmp_path, "d", strategy="snip", seed=0, scoring_at="pretrained", dense_skipped=True,
          rewind="pretrained", timings_s=t(0.0, 30.0, 40.0), cache={"builds": ["scores"]})
    write(tmp_path, "e", strategy="movement", seed=1, timings_s=t(0.1, 0.1, 40.0), cache={"builds": []})
    table, keys = times(tmp_path)
    table = table.set_index("strategy")
    assert table.loc["taylor", "end_to_end_s"] == 100.0 + 20.0 + 60.0 + 1.0  # a rerun: pruned is the mean of 50, 70
    assert table.loc["taylor", "runs"] == 2
    assert table.loc["wanda", "end_to_end_s"] == 100.0 + 5.0 + 60.0 + 1.0  # seed 0's dense, built by "a"
    assert table.loc["snip", "end_to_end_s"] == 0.0 + 30.0 + 40.0 + 1.0  # no dense fine-tune
    assert math.isnan(table.loc["movement", "dense_s"])  # seed 1's dense was built by nobody here
    text = timing_markdown(table.reset_index(), keys)
    assert "| stsb | snip | 2 | dev (selected on the reported set) | 1 | 0.0 (skipped) | 0.5 | 0.7 | 1.2 |" in text
    assert "n/a" in text


def test_shared_entries_are_matched_by_stage_key_and_copies_count_once(tmp_path):
    """layer_mag_grad and global_mag_grad share one scores entry; two models never mix; a run
    restored from the cache (same run_key) is not counted twice."""
    t = lambda dense, scoring, pruned: {"dense": dense, "scoring": scoring, "pruned": pruned, "setup": 0.0}  # noqa: E731
    keys = {"dense": "D", "scores": "S"}
    write(tmp_path, "a", strategy="layer_mag_grad", seed=0, run_key="a", stage_keys=keys,
          timings_s=t(100.0, 20.0, 50.0), cache={"builds": ["dense", "scores"]})
    write(tmp_path, "b", strategy="global_mag_grad", seed=0, run_key="b", stage_keys=keys,
          timings_s=t(0.1, 0.1, 30.0), cache={"builds": []})
    write(tmp_path, "b_copy", strategy="global_mag_grad", seed=0, run_key="b", stage_keys=keys,
          timings_s=t(0.1, 0.1, 90.0), cache={"builds": []})
    write(tmp_path, "c", strategy="layer_mag_grad", seed=0, model="bert_base", run_key="c",
          stage_keys={"dense": "D2", "scores": "S2"}, timings_s=t(400.0, 80.0, 200.0), cache={"builds": ["dense", "scores"]})
    table = times(tmp_path)[0].set_index(["model", "strategy"])
    assert table.loc[("minilm", "global_mag_grad"), "end_to_end_s"] == 100.0 + 20.0 + 30.0
    assert table.loc[("minilm", "global_mag_grad"), "runs"] == 1
    assert table.loc[("bert_base", "layer_mag_grad"), "end_to_end_s"] == 680.0
    assert table.loc[("minilm", "layer_mag_grad"), "end_to_end_s"] == 170.0


def test_structured_and_masked_runs_get_a_row_each(tmp_path):
    """Issue 22, item 2: the structured experiment's point is the speed of structured vs masked
    runs; their masked fine-tunes must not be averaged into one time per strategy. Mutation
    checked: grouping without the sweep keys (the old (data, model, strategy, rewind, seed))
    gives one row of 45 s and fails this test."""
    t = lambda pruned: {"dense": 10.0, "scoring": 5.0, "pruned": pruned, "setup": 0.0}  # noqa: E731
    keys = {"dense": "D", "scores": "S"}
    for kind, pruned, builds in (("none", 60.0, ["dense", "scores"]), ("heads_neurons", 30.0, [])):
        for ratio in (2.0, 3.0):
            write(tmp_path, f"{kind}_{ratio}", config={"structure": {"kind": kind}}, strategy="gradcam_shift",
                  seed=0, ratio=ratio, run_key=f"{kind}{ratio}", stage_keys=keys,
                  timings_s=t(pruned + ratio), cache={"builds": builds if ratio == 2.0 else []})
    table, keys = times(tmp_path)
    assert "structure.kind" in keys
    got = {(r["structure.kind"], r["ratio"]): r["pruned_s"] for r in table.to_dict("records")}
    assert got == {("none", 2.0): 62.0, ("none", 3.0): 63.0, ("heads_neurons", 2.0): 32.0,
                   ("heads_neurons", 3.0): 33.0}
    assert set(table["end_to_end_s"]) == {77.0, 78.0, 47.0, 48.0}  # each with the shared dense + scoring
    text = timing_markdown(table, keys)
    assert text.count("| stsb |") == 4 and "heads_neurons" in text
