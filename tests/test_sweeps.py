"""Multiruns as a user runs them: parallel jobs share one dense fine-tune, a relaunched sweep
redoes no finished job, and the cluster path (submitit) runs its jobs in processes of their own."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

from deepcuts.analysis.render.report import write_report
from tests.conftest import REPO, TINY

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
       "OMP_NUM_THREADS": "1"}


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


def launcher_cfg(name: str) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_slurm_and_submitit_local_differ_only_in_the_executor():
    """What runs on the laptop (submitit_local) is what runs on the cluster (slurm): same job
    shape, same log folder; slurm adds only keys of its own executor."""
    local, slurm = launcher_cfg("submitit_local"), launcher_cfg("slurm")
    assert local.pop("_target_").endswith(".LocalLauncher")
    assert slurm.pop("_target_").endswith(".SlurmLauncher")
    shared = {f.name for f in dataclasses.fields(BaseQueueConf)}
    slurm_only = {f.name for f in dataclasses.fields(SlurmQueueConf)} - shared - {"_target_"}
    assert set(local) == shared and set(slurm) == shared | slurm_only
    assert {k: slurm[k] for k in shared} == local
    # The shared values come from the one base file, not from the plugin's defaults.
    base = OmegaConf.to_container(OmegaConf.load(REPO / "conf/hydra/launcher/submitit_base.yaml"))
    assert set(base) == shared and {k: local[k] for k in base} == base


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job_in_its_own_process_and_reports_both(tmp_path):
    """The cluster path end to end on one machine: submitit starts a process per job (its log
    folder holds each job's stdout/stderr), the jobs share one dense fine-tune through the cache,
    and the report of the sweep folder lists both runs."""
    strategies = ["layer_mag_weight", "random"]
    out = tmp_path / "sweep"
    cmd = [
        sys.executable, "train.py", "-m", "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=2", "hydra.launcher.gpus_per_node=0", *TINY, "data=stsb",
        f"strategy={','.join(strategies)}", f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={out}",
    ]
    driver = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        _, stderr = driver.communicate(timeout=200)  # the jobs themselves stop after 2 minutes
    except subprocess.TimeoutExpired:
        driver.kill()
        pytest.fail(f"the sweep did not finish in 200 s: {driver.communicate()[1][-3000:]}")
    assert driver.returncode == 0, stderr[-3000:]

    runs = sorted(p.parent for p in out.glob("*/results.json"))
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    assert sorted(r["strategy"] for r in results) == strategies
    assert all(r["status"] == "complete" and r["dense"] and r["pruned"] for r in results)
    assert results[0]["dense"] == results[1]["dense"]
    assert sum("dense" in r["cache"]["builds"] for r in results) == 1  # one built it, under the lock

    # Each job ran under its own submitit job id (the pid of the local controller that started
    # it, not the driver's) and logged to that job's own .out/.err files.
    job_ids = set()
    for run, res in zip(runs, results, strict=True):
        job_id = str(OmegaConf.load(run / ".hydra/hydra.yaml").hydra.job.id)
        assert job_id.isdigit() and int(job_id) != driver.pid
        job_ids.add(job_id)
        log_out = out / ".submitit" / job_id / f"{job_id}_0_log.out"
        assert (out / ".submitit" / job_id / f"{job_id}_0_log.err").is_file()
        text = log_out.read_text()
        assert "Job completed successfully" in text and res["strategy"] in text
    assert len(job_ids) == 2

    report = write_report([out], tmp_path / "report")
    assert sorted(report["summary"]["strategy"].astype(str)) == strategies
    # The multirun's own report (written by the driver at its end) lists both runs as well.
    written = (out / "report").glob("*.csv")
    assert any(all(s in p.read_text() for s in strategies) for p in written)
