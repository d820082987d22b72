"""End-to-end time per strategy, put back together from the stages a sweep shared."""

from __future__ import annotations

import json
import math

from deepcuts.analysis.timing import stage_times, timing_markdown


def write(folder, name, **res):
    run = folder / name
    run.mkdir(parents=True)
    base = {"status": "complete", "data": "stsb", "model": "minilm", "rewind": "finetuned", "scoring_at": "finetuned"}
    (run / "results.json").write_text(json.dumps({**base, **res}))


def test_stages_come_from_the_jobs_that_built_them(tmp_path):
    t = lambda dense, scoring, pruned: {"dense": dense, "scoring": scoring, "pruned": pruned, "setup": 1.0}  # noqa: E731
    write(tmp_path, "a", strategy="taylor", seed=0, timings_s=t(100.0, 20.0, 50.0), cache={"builds": ["dense", "scores"]})
    write(tmp_path, "b", strategy="taylor", seed=0, timings_s=t(0.1, 0.1, 70.0), cache={"builds": []})
    write(tmp_path, "c", strategy="wanda", seed=0, timings_s=t(0.1, 5.0, 60.0), cache={"builds": ["scores"]})
    write(tmp_path, "d", strategy="snip", seed=0, scoring_at="pretrained", dense_skipped=True,
          rewind="pretrained", timings_s=t(0.0, 30.0, 40.0), cache={"builds": ["scores"]})
    write(tmp_path, "e", strategy="movement", seed=1, timings_s=t(0.1, 0.1, 40.0), cache={"builds": []})
    times = stage_times([tmp_path]).set_index("strategy")
    assert times.loc["taylor", "end_to_end_s"] == 100.0 + 20.0 + 60.0 + 1.0  # pruned: mean of 50, 70
    assert times.loc["taylor", "runs"] == 2
    assert times.loc["wanda", "end_to_end_s"] == 100.0 + 5.0 + 60.0 + 1.0  # seed 0's dense, built by "a"
    assert times.loc["snip", "end_to_end_s"] == 0.0 + 30.0 + 40.0 + 1.0  # no dense fine-tune
    assert math.isnan(times.loc["movement", "dense_s"])  # seed 1's dense was built by nobody here
    text = timing_markdown(times.reset_index())
    assert "| stsb | minilm | snip | pretrained | 1 | 0.0 (skipped) |" in text and "n/a" in text


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
    times = stage_times([tmp_path]).set_index(["model", "strategy"])
    assert times.loc[("minilm", "global_mag_grad"), "end_to_end_s"] == 100.0 + 20.0 + 30.0
    assert times.loc[("minilm", "global_mag_grad"), "runs"] == 1
    assert times.loc[("bert_base", "layer_mag_grad"), "end_to_end_s"] == 680.0
    assert times.loc[("minilm", "layer_mag_grad"), "end_to_end_s"] == 170.0
