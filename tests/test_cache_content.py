"""The stage cache is keyed by content: code, library versions, data and initial weights."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepcuts.cache import keys as K
from deepcuts.cache.store import StageCache
from deepcuts.pipeline.flow import run

STRATEGY = '''
from deepcuts.strategies import Strategy


class EditedScore(Strategy):
    """A strategy a researcher is editing."""

    def batch_term(self, name, weight, grad):
        return {term}
'''


def _write_strategy(folder, term: str) -> None:
    (folder / "my_scores.py").write_text(STRATEGY.format(term=term))
    sys.modules.pop("my_scores", None)
    importlib.invalidate_caches()


def test_editing_a_strategy_class_rebuilds_its_scores(make_cfg, tmp_path, monkeypatch):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    monkeypatch.syspath_prepend(str(plugin))
    target = ["+strategy._target_=my_scores.EditedScore", "strategy.name=edited"]
    _write_strategy(plugin, "grad.mul_(weight)")
    first = run(make_cfg("strategy=layer_mag_grad", "~strategy._target_", *target))
    assert first["cache"]["builds"] == ["dense", "scores"]
    again = run(make_cfg("strategy=layer_mag_grad", "~strategy._target_", *target, f"output_dir={tmp_path / 'r2'}"))
    assert again["cache"]["hits"] == ["run"]  # unchanged code: the finished run is reused

    _write_strategy(plugin, "grad.mul_(weight).mul_(weight)")  # the score is now |W^2 G|
    edited = run(make_cfg("strategy=layer_mag_grad", "~strategy._target_", *target, f"output_dir={tmp_path / 'r3'}"))
    assert edited["cache"]["hits"] == ["dense"] and edited["cache"]["builds"] == ["scores"]
    old = load_file(str(tmp_path / "run" / "masks.safetensors"))
    new = load_file(str(tmp_path / "r3" / "masks.safetensors"))
    assert any(not torch.equal(old[k], new[k]) for k in old)


def test_a_new_library_version_rebuilds_the_dense_model_and_says_why(make_cfg, tmp_path, monkeypatch, caplog):
    run(make_cfg("strategy=layer_mag_weight"))
    real = K.library_versions()
    monkeypatch.setattr(K, "library_versions", lambda: {**real, "torch": real["torch"] + "+edited"})
    with caplog.at_level(logging.INFO, logger="deepcuts.cache.store"):
        again = run(make_cfg("strategy=layer_mag_weight", f"output_dir={tmp_path / 'r2'}"))
    assert again["cache"]["builds"][0] == "dense" and "dense" not in again["cache"]["hits"]
    assert "differs in libraries.torch" in caplog.text


def test_edited_data_rebuilds_the_dense_model(make_cfg, tmp_path):
    import shutil

    from deepcuts.data.tsv import DEFAULT_GLUE_DIR

    root = tmp_path / "glue"
    shutil.copytree(DEFAULT_GLUE_DIR / "STS-B", root / "STS-B")
    run(make_cfg("strategy=layer_mag_weight", f"data.root={root}"))
    copy = run(make_cfg("strategy=layer_mag_weight", f"data.root={root}", f"output_dir={tmp_path / 'r2'}", "resume=false"))
    assert copy["cache"]["hits"][:1] == ["dense"]  # same bytes: reused
    dev = root / "STS-B" / "dev.tsv"
    lines = dev.read_text().splitlines(keepends=True)
    dev.write_text("".join([lines[0], *lines[2:], lines[1]]))  # same rows, another order
    edited = run(make_cfg("strategy=layer_mag_weight", f"data.root={root}", f"output_dir={tmp_path / 'r3'}"))
    assert edited["cache"]["builds"][:1] == ["dense"]


def test_rewind_restores_the_dense_entrys_own_initial_state(make_cfg, tmp_path, monkeypatch):
    """The rewind target comes from the dense entry; a different seeded head is a different
    entry, never a rewind to a head the cached dense model did not start from."""
    run(make_cfg("strategy=layer_mag_weight", "epochs_final=0"))
    (entry,) = (tmp_path / "cache" / "dense").glob("*/initial.safetensors")
    stored = load_file(str(entry))
    assert "head.weight" in stored
    reused = run(make_cfg("strategy=random", "epochs_final=0", "save_model=true", f"output_dir={tmp_path / 'r2'}"))
    assert reused["cache"]["hits"] == ["dense"]
    head = load_file(str(tmp_path / "r2" / "pruned_model" / "head.safetensors"))
    torch.testing.assert_close(head["weight"], stored["head.weight"], rtol=0, atol=0)

    import deepcuts.models.module as P

    original = P.GlueModel.__init__

    def other_head(self, *args, **kwargs):  # the same seed, but a head initialised differently
        original(self, *args, **kwargs)
        torch.nn.init.constant_(self.head.weight, 0.01)

    monkeypatch.setattr(P.GlueModel, "__init__", other_head)
    moved = run(make_cfg("strategy=random", "epochs_final=0", f"output_dir={tmp_path / 'r3'}"))
    assert moved["cache"]["builds"][0] == "dense"


def test_a_restored_run_has_its_export_and_its_own_config(make_cfg, tmp_path):
    run(make_cfg("strategy=layer_mag_weight", "save_model=true"))
    restored = run(make_cfg("strategy=layer_mag_weight", "save_model=true", "+note=second",
                            f"output_dir={tmp_path / 'r2'}"))
    assert restored["cache"] == {"hits": ["run"], "builds": []}
    assert (tmp_path / "r2" / "pruned_model" / "config.json").is_file()
    a = load_file(str(tmp_path / "run" / "pruned_model" / "model.safetensors"))
    b = load_file(str(tmp_path / "r2" / "pruned_model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "note: second" in (tmp_path / "r2" / "config.yaml").read_text()
    assert str(tmp_path / "r2") in (tmp_path / "r2" / "config.yaml").read_text()


def test_two_jobs_building_one_entry_without_a_working_lock(tmp_path, monkeypatch):
    """On NFS flock may not be honoured: the job that finishes second keeps the first's valid
    entry and discards its own, instead of crashing on os.replace."""
    import deepcuts.cache.store as S

    monkeypatch.setattr(S.fcntl, "flock", lambda *a: None)
    cache_a, cache_b = StageCache(tmp_path), StageCache(tmp_path)

    def build_a(folder):
        (folder / "value.txt").write_text("a")
        cache_b.get_or_build("dense", {"x": 1}, lambda f: (f / "value.txt").write_text("b"))

    entry = cache_a.get_or_build("dense", {"x": 1}, build_a)
    assert (entry / "value.txt").read_text() == "b"  # the entry that won, validated
    assert json.loads((entry / "manifest.json").read_text())["files"].keys() >= {"value.txt"}
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == []
    assert cache_a.lookup("dense", {"x": 1}) == entry


def test_scoring_batches_resolved_into_the_key(make_cfg):
    from deepcuts.pipeline.plan import RunPlan

    a = RunPlan.build(make_cfg("strategy=gradcam_shift", "scoring.batches=3"), Path("unused"))
    b = RunPlan.build(make_cfg("strategy=gradcam_shift", "scoring.batches=4"), Path("unused"))
    assert a.scores.batches == 3 and b.scores.batches == 4  # 48 examples / 8: one epoch is 6 batches
    assert a.scores.key() != b.scores.key() and a.run_key != b.run_key


@pytest.mark.parametrize("name", K.LIBRARIES)
def test_library_versions_are_read(name):
    assert name in K.library_versions()
