"""Cache usage and pruning: sizes by stage, age cut-off, locked entries left alone, temp folders of
killed builds removed, and a pruned entry rebuilt (never a wrong result) by the next run."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from deepcuts.cache.admin import prune, usage
from deepcuts.pipeline.flow import run


def entry(root, stage, key, size, age_days=0.0):
    folder = root / stage / key
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * size)
    (root / stage / f"{key}.lock").touch()
    when = time.time() - age_days * 86400
    os.utime(folder, (when, when))
    return folder


def test_usage_and_pruning_by_age(tmp_path):
    old = entry(tmp_path, "dense", "a" * 24, 1000, age_days=20)
    new = entry(tmp_path, "dense", "b" * 24, 500, age_days=1)
    run_entry = entry(tmp_path, "runs", "c" * 24, 300, age_days=30)
    rows = {r["stage"]: r for r in usage(tmp_path)}
    assert rows["dense"]["entries"] == 2 and rows["dense"]["bytes"] == 1500
    assert rows["runs"]["bytes"] == 300 and rows["scores"]["entries"] == 0
    assert rows["dense"]["oldest_days"] == pytest.approx(20, abs=0.01)
    assert [p for p, _ in prune(tmp_path, ("dense",), 14, dry_run=True)] == [old] and old.exists()
    removed = prune(tmp_path, ("dense",), 14)
    assert removed == [(old, 1000)] and not old.exists() and new.exists() and run_entry.exists()
    assert not (tmp_path / "dense" / f"{old.name}.lock").exists()


def test_a_locked_entry_and_fresh_temp_folders_are_left_alone(tmp_path):
    busy = entry(tmp_path, "scores", "d" * 24, 10, age_days=5)
    stale_tmp = tmp_path / "scores" / f".{'e' * 24}.abc"
    stale_tmp.mkdir()
    (stale_tmp / "part").write_bytes(b"y" * 7)
    os.utime(stale_tmp, (time.time() - 2 * 86400,) * 2)
    fresh_tmp = tmp_path / "scores" / f".{'f' * 24}.xyz"
    fresh_tmp.mkdir()
    with open(tmp_path / "scores" / f"{busy.name}.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a job is building it
        removed = prune(tmp_path, ("scores",))
    assert busy.exists() and fresh_tmp.exists() and not stale_tmp.exists()
    assert removed == [(stale_tmp, 7)]
    with pytest.raises(ValueError, match="unknown cache stage"):
        prune(tmp_path, ("weights",))


def test_a_pruned_cache_is_rebuilt_with_the_same_result(make_cfg, tmp_path):
    first = run(make_cfg("data=stsb", "strategy=layer_mag_grad", "data.max_train_samples=16", "data.max_eval_samples=8"))
    assert prune(tmp_path / "cache", ("dense", "scores", "runs"))
    again = run(make_cfg("data=stsb", "strategy=layer_mag_grad", "data.max_train_samples=16", "data.max_eval_samples=8",
                         f"output_dir={tmp_path / 'again'}"))
    assert again["cache"]["builds"] == ["dense", "scores"] and again["pruned"] == first["pruned"]
