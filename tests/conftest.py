"""Shared fixtures: the real Hydra config shrunk to a tiny BERT and a handful of real examples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

TINY = [
    "model=tiny",
    "data.max_train_samples=48",
    "data.max_eval_samples=32",
    "data.batch_size=8",
    "epochs_dense=1",
    "epochs_final=1",
    "scoring.batches=3",
    "+trainer.enable_progress_bar=false",
    "logger.wandb.enabled=false",  # tests/test_tracking.py covers W&B
]


def compose_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """The real ``conf/train.yaml`` with test-sized overrides and outputs under ``tmp_path``."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *TINY,
                f"output_dir={tmp_path / 'run'}",
                f"cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )


@pytest.fixture
def make_cfg(tmp_path):
    return lambda *overrides: compose_cfg(tmp_path, *overrides)
