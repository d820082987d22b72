"""Multiruns as a user runs them: parallel jobs share one dense fine-tune, and a relaunched sweep
redoes no finished job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY


def sweep(tmp_path, name, *extra):
    cmd = [
        sys.executable, "train.py", "-m", *TINY, "data=stsb", "strategy=layer_mag_grad", "ratio=2,3",
        f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / name}", *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / name).glob("*/results.json"))]
    assert len(results) == 2
    return results, proc.stdout


@pytest.mark.slow
def test_parallel_jobs_share_one_dense_fine_tune_and_relaunch_skips_finished_jobs(tmp_path):
    results, stdout = sweep(tmp_path, "first", "hydra/launcher=parallel")
    builds = [r["cache"]["builds"] for r in results]
    hits = [r["cache"]["hits"] for r in results]
    assert sum("dense" in b for b in builds) == 1 and sum("dense" in h for h in hits) == 1
    assert sum("scores" in b for b in builds) == 1
    assert results[0]["dense"] == results[1]["dense"]
    assert "layer_mag_grad" in stdout  # the sweep printed its report table

    again, _ = sweep(tmp_path, "relaunch")
    assert all(r["cache"] == {"hits": ["run"], "builds": []} for r in again)
    assert [r["pruned"] for r in again] == [r["pruned"] for r in results]
