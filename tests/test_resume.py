"""A job killed (SIGKILL) in any stage and run again resumes from its last completed stage and
ends with the same results as a job that was never interrupted."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from deepcuts.pipeline.flow import run
from tests.conftest import REPO, compose_cfg

OVERRIDES = ("data=stsb", "strategy=gradcam_shift", "epochs_dense=2", "epochs_final=2")

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from tests.conftest import compose_cfg
    import deepcuts.training.fine_tune as training
    import deepcuts.strategies.base as base
    from deepcuts.pipeline.flow import run

    stage = sys.argv[1]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if stage in ("dense", "pruned"):  # after the first of two epochs of that phase
        original = training.EpochMetrics.on_validation_end
        def on_validation_end(self, trainer, pl_module):
            original(self, trainer, pl_module)
            if pl_module.stage == stage:
                die()
        training.EpochMetrics.on_validation_end = on_validation_end
    else:  # in the middle of the scoring pass
        original = base.Strategy.on_train_batch_end
        def on_train_batch_end(self, *args):
            original(self, *args)
            if self.batches_seen == 2:
                die()
        base.Strategy.on_train_batch_end = on_train_batch_end
    run(compose_cfg(Path({tmp!r}), *{overrides!r}))
    """
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    results = run(compose_cfg(folder, *OVERRIDES))
    return results, load_file(str(folder / "run" / "masks.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dense", "scoring", "pruned"])
def test_killed_job_resumes_to_the_same_results(stage, tmp_path, uninterrupted):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(repo=str(REPO), tmp=str(tmp_path), overrides=OVERRIDES))
    proc = subprocess.run([sys.executable, str(script), stage], cwd=REPO, capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "run" / "results.json").exists()  # nothing that looks finished

    resumed = run(compose_cfg(tmp_path, *OVERRIDES))
    expected_hits = {"dense": [], "scoring": ["dense"], "pruned": ["dense", "scores"]}[stage]
    assert resumed["cache"]["hits"] == expected_hits
    want, masks = uninterrupted
    assert resumed["dense"] == pytest.approx(want["dense"], rel=1e-6)
    assert resumed["pruned"] == pytest.approx(want["pruned"], rel=1e-6)
    got = load_file(str(tmp_path / "run" / "masks.safetensors"))
    assert got.keys() == masks.keys() and all(torch.equal(got[k], masks[k]) for k in masks)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "complete"
