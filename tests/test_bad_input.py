"""Bad input fails before any training with one clear message, and writes no results."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from deepcuts.config.errors import ConfigError
from deepcuts.pipeline.flow import run
from tests.conftest import REPO, TINY


def no_results(tmp_path):
    """No results file and no completed cache entry anywhere under the test's folder."""
    return not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("manifest.json"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ratio=1"], "must be > 1"),
        (["ratio=0.5"], "must be > 1"),
        (["ratio=abc"], "must be a number"),
        (["ratio=4.7"], "maximum compression is 4.586"),
        (["ratio=2", "ratio_basis=model"], "maximum compression is"),
        (["ratio_basis=bert_large"], "ratio_basis"),
        (["keep_fraction=0"], r"keep_fraction must be a number in \(0, 1\]"),
        (["keep_fraction=1.5"], r"keep_fraction must be a number in \(0, 1\]"),
        (["scoring.batches=0"], "scoring.batches must be >= 1"),
        (["strategy=smoothgrad", "strategy.eta=0"], "eta"),
        (["strategy=smoothgrad", "strategy.sigma=-0.1"], "sigma"),
        (["prune.include=[bert.encoder.layers.*]"], "matches no nn.Linear"),
        (["rewind=halfway"], "rewind"),
        (["data.root=/nonexistent/glue"], "GLUE_DIR"),
    ],
)
def test_bad_config_fails_before_training(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(make_cfg(*overrides))
    assert no_results(tmp_path)


def test_model_folder_without_weights_or_tokenizer(make_cfg, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no weights"):
        run(make_cfg(f"model.pretrained={folder}"))
    with pytest.raises(ConfigError, match="has no tokenizer"):
        run(make_cfg(f"model.tokenizer={folder}"))
    assert no_results(tmp_path)


def test_unwritable_output_folder(make_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="not writable"):
        run(make_cfg(f"output_dir={blocker / 'run'}"))


def test_nan_loss_stops_naming_the_stage(make_cfg, tmp_path, monkeypatch):
    from deepcuts.models.module import GlueModel

    monkeypatch.setattr(GlueModel, "loss_from_output", lambda self, out, labels: out.sum() * torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match="stage: dense"):
        run(make_cfg())
    assert no_results(tmp_path)


def test_corrupted_cache_entry_is_rebuilt_not_used(make_cfg, tmp_path):
    first = run(make_cfg("strategy=layer_mag_grad"))
    (weights,) = (tmp_path / "cache" / "dense").glob("*/model.safetensors")
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the stored weights
    weights.write_bytes(bytes(data))
    again = run(make_cfg("strategy=layer_mag_grad", "ratio=2", f"output_dir={tmp_path / 'run2'}"))
    assert "dense" in again["cache"]["builds"]
    assert again["dense"] == first["dense"]


@pytest.mark.parametrize(("override", "listed"), [("data=qqp", "sst2"), ("strategy=camcut", "gradcam_shift"), ("model=bert_large", "minilm")])
def test_unknown_group_option_lists_the_available_ones(override, listed, tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", override, f"output_dir={tmp_path}"], cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "Available options" in proc.stderr and listed in proc.stderr
    assert no_results(tmp_path)


def test_cli_error_is_one_paragraph_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", *TINY, "ratio=9", f"output_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "error: ratio=9 cannot be reached" in proc.stderr and "4.586" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert no_results(tmp_path)
