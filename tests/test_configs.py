"""Every config group composes and instantiates: strategies, data sets, experiments, launchers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from deepcuts.strategies import Strategy
from tests.conftest import REPO

CONF = REPO / "conf"
STRATEGIES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def hydra_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_instantiates_with_its_name_and_scope(name):
    cfg = hydra_cfg(f"strategy={name}")
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, Strategy)
    # a control names what it shuffles (shuffled_<of>), so reports can tell controls apart
    assert strategy.name == (f"shuffled_{cfg.strategy.of}" if name == "shuffled" else name)
    assert strategy.scope == ("global" if name.startswith("global_") else "row" if name == "wanda" else "layer")


def test_the_paper_strategies_exist():
    assert {"global_mag_weight", "layer_mag_weight", "layer_mag_grad", "global_mag_grad", "random",
            "gradcam", "gradcam_shift", "smoothgrad", "smoothgrad_cam", "smoothgrad_cam_shift",
            "global_gradcam_shift", "global_smoothgrad"} <= set(STRATEGIES)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = hydra_cfg(f"experiment={name}")
    assert cfg.data.name in {"sst2", "cola", "stsb"}
    assert cfg.optimizer._partial_


@pytest.mark.parametrize(("task", "lr", "epochs"), [("sst2", 1e-5, (3, 8)), ("cola", 1e-5, (5, 12)), ("stsb", 2e-5, (8, 10))])
def test_paper_settings(task, lr, epochs):
    cfg = hydra_cfg(f"experiment=paper_{task}")
    assert cfg.model.name == "bert_base" and cfg.data.batch_size == 16
    assert cfg.optimizer.lr == lr and (cfg.epochs_dense, cfg.epochs_final) == epochs
    assert cfg.optimizer.betas == [0.9, 0.99]


def test_launchers_compose():
    cfg = hydra_cfg("hydra/launcher=parallel")
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    cfg = hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1


def test_grid_sweeps_are_the_documented_size():
    cfg = hydra_cfg("experiment=grid_cpu")
    params = cfg.hydra.sweeper.params
    sizes = [len(str(params[k]).split(",")) for k in ("data", "strategy", "ratio", "seed")]
    assert sizes == [3, 4, 4, 3]


def test_task_yaml_declares_everything(tmp_path: Path):
    for task in ("sst2", "cola", "stsb"):
        data = hydra_cfg(f"data={task}").data
        assert {"folder", "text_columns", "label_column", "task", "metrics", "monitor", "header"} <= set(data)
        assert data.monitor in data.metrics


@pytest.mark.parametrize(("task", "lr", "epochs"), [("sst2", 1e-5, (3, 8)), ("cola", 1e-5, (5, 12)), ("stsb", 2e-5, (8, 10))])
def test_grid_paper_uses_each_tasks_paper_settings(task, lr, epochs):
    cfg = hydra_cfg("experiment=grid_paper", f"data={task}")
    assert cfg.optimizer.lr == lr and (cfg.epochs_dense, cfg.epochs_final) == epochs
    assert cfg.model.name == "bert_base" and cfg.data.batch_size == 16


MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_yaml_declares_its_architecture(name):
    from deepcuts.models.encoders import ModelSpec

    cfg = hydra_cfg(f"model={name}")
    spec = ModelSpec.from_cfg(cfg.model)  # arch, backbone, pooling, layout, inputs: checked
    assert cfg.model.name == name and list(cfg.prune.include) == list(cfg.model.prunable)
    assert all(p.startswith(f"{spec.backbone}.") for p in cfg.model.prunable)
    assert any(p.startswith(f"{spec.layout['layers']}.") for p in cfg.model.prunable)
    # a pooler is prunable exactly when it is used
    assert any("pooler" in p for p in cfg.model.prunable) == (spec.pooling == "pooler")
    assert (spec.pretrained is None) == bool(cfg.model.config)  # random-init models have a config


def test_every_hub_model_has_a_ratio_basis():
    from deepcuts.pruning.budget import REFERENCE_CONFIGS

    hub = [m for m in MODELS if (p := hydra_cfg(f"model={m}").model.pretrained) and not p.startswith("package:")]
    assert sorted(hub) == sorted(REFERENCE_CONFIGS)
