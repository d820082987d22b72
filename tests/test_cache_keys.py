"""Cache keys: each stage's key changes exactly when a setting or code it reads changes.

The keys come from the run plan (``RunPlan.build``: no training); the completeness test perturbs
every leaf of the composed config and requires it to change some stage's key, or to be on the
result-neutral list (``deepcuts.config.neutral``) with its reason.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file

from deepcuts.config.nested import flatten
from deepcuts.config.neutral import RESULT_NEUTRAL, dense_input, neutral
from deepcuts.pipeline import run
from deepcuts.pipeline.plan import RunPlan

REPO = Path(__file__).resolve().parents[1]


def keys(cfg) -> dict[str, str]:
    plan = RunPlan.build(cfg, Path(cfg.output_dir))
    return {**plan.stage_keys(), "run": plan.run_key}


BASE = ("strategy=gradcam_shift",)


@pytest.mark.parametrize(
    "override",
    ["optimizer.lr=1e-3", "epochs_dense=2", "seed=1", "data.max_train_samples=40", "data=sst2",
     "model.config.hidden_size=64", "+trainer.accumulate_grad_batches=4", "+trainer.gradient_clip_val=1.0",
     "trainer.precision=bf16-mixed", "scheduler=linear_warmup", "selection=dev", "selection=holdout", "trainer=ddp"],
)
def test_dense_key_changes_with_what_determines_the_dense_model(make_cfg, override):
    assert keys(make_cfg(*BASE, override))["dense"] != keys(make_cfg(*BASE))["dense"]


def test_the_device_count_is_in_the_dense_key(make_cfg):
    assert keys(make_cfg(*BASE, "trainer=ddp", "trainer.devices=3"))["dense"] != keys(make_cfg(*BASE, "trainer=ddp"))["dense"]


def test_selection_fraction_is_in_the_dense_key_under_holdout(make_cfg):
    # mutation checked: dropping selection_fraction from FineTuneSettings.spec fails this test
    a = keys(make_cfg(*BASE, "selection=holdout", "selection_fraction=0.1"))
    b = keys(make_cfg(*BASE, "selection=holdout", "selection_fraction=0.2"))
    assert a["dense"] != b["dense"]


@pytest.mark.parametrize(
    "override",
    ["ratio=2", "strategy=global_gradcam_shift", "epochs_final=5", "rewind=finetuned", "save_model=true",
     "trainer.enable_progress_bar=true", "logger=csv", "resume=false", "data.num_workers=2",
     "prune.exclude=[bert.pooler.dense]"],
)
def test_the_dense_key_ignores_what_comes_later_or_is_cosmetic(make_cfg, override):
    assert keys(make_cfg(*BASE, override))["dense"] == keys(make_cfg(*BASE))["dense"]


@pytest.mark.parametrize(
    "override",
    ["strategy.shift=5", "strategy=gradcam", "strategy.include_padding=true", "scoring.batches=2",
     "scoring.dropout=true", "scoring.accumulate=abs_of_mean", "prune.exclude=[bert.pooler.dense]"],
)
def test_score_key_changes_with_the_strategy_scoring_config_and_prune_set(make_cfg, override):
    base, other = keys(make_cfg(*BASE)), keys(make_cfg(*BASE, override))
    assert other["dense"] == base["dense"] and other["scores"] != base["scores"]


def test_movement_from_a_shared_dense_entry_prunes_only_its_own_set(make_cfg, tmp_path):
    """Hole 1: the dense entry's trace was made for whichever prune set built it. Now it covers
    the model YAML's whole prunable set and the scores stage takes the run's subset.
    Mutation checked: tracing list(prunable) (the run's set) in RunPlan.build fails this test."""
    run(make_cfg("strategy=movement", "keep_fraction=0.5", f"output_dir={tmp_path / 'a'}"))
    shared = run(make_cfg("strategy=movement", "keep_fraction=0.5", "prune.exclude=[bert.pooler.dense]",
                          f"output_dir={tmp_path / 'b'}"))
    fresh = run(make_cfg("strategy=movement", "keep_fraction=0.5", "prune.exclude=[bert.pooler.dense]",
                         f"output_dir={tmp_path / 'c'}", f"cache_dir={tmp_path / 'other'}"))
    assert "dense" in shared["cache"]["hits"]
    masks = load_file(str(tmp_path / "b" / "masks.safetensors"))
    assert not any(name.startswith("bert.pooler") for name in masks)
    assert shared["kept_prunable"] == fresh["kept_prunable"]
    assert shared["stage_keys"] == fresh["stage_keys"]


def test_a_strategys_key_covers_every_helper_module_it_imports():
    """Hole 2: Smooth-Cut's CAM variants use ActivationMeans from gradcam.py; the run's code
    includes compact.py (export). Mutation checked: digesting only the MRO's files fails."""
    from deepcuts.cache.code import code_files
    from deepcuts.strategies import SmoothGradCAM

    assert "deepcuts/strategies/gradcam.py" in code_files(SmoothGradCAM)
    assert "deepcuts/models/compact.py" in code_files("deepcuts.pipeline.flow")


def test_editing_a_helper_changes_the_scores_key(tmp_path):
    """Hole 2, end to end: a copy of the package whose ActivationMeans is edited gives another
    scores key for smoothgrad_cam, and the same one for a strategy that does not use it."""
    copy_root = tmp_path / "copy"
    shutil.copytree(REPO / "deepcuts", copy_root / "deepcuts", ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import sys; from deepcuts.cache.code import code_digest; import deepcuts.strategies as S; "
              "print(code_digest(S.SmoothGradCAM), code_digest(S.Wanda))")

    def digests() -> list[str]:
        out = subprocess.run([sys.executable, "-c", script], cwd=copy_root, capture_output=True, text=True, check=True)
        return out.stdout.split()

    before = digests()
    gradcam = copy_root / "deepcuts" / "strategies" / "gradcam.py"
    gradcam.write_text(gradcam.read_text().replace("mean = (out * weight).sum((0, 1)) / weight.sum()",
                                                   "mean = (out * weight).sum((0, 1)) / (weight.sum() + 1)"))
    after = digests()
    assert after[0] != before[0] and after[1] == before[1]


def test_dropout_on_scores_equal_whether_the_dense_model_was_built_or_found(make_cfg, tmp_path):
    """Hole 3: the scoring pass is seeded from the run's seed. The first job builds the dense
    model and the scores; the second finds the dense entry and builds the scores again (its own
    cache of scores removed): the masks must be equal. Mutation checked: removing the
    seed_everything call in run_scoring fails this test."""
    cfg = ("strategy=layer_mag_grad", "scoring.dropout=true", "keep_fraction=0.5")
    first = run(make_cfg(*cfg, f"output_dir={tmp_path / 'a'}"))
    shutil.rmtree(tmp_path / "cache" / "scores")
    shutil.rmtree(tmp_path / "cache" / "runs")
    second = run(make_cfg(*cfg, f"output_dir={tmp_path / 'b'}"))
    assert "dense" in second["cache"]["hits"] and "scores" in second["cache"]["builds"]
    assert first["stage_keys"]["scores"] == second["stage_keys"]["scores"]
    a, b = (load_file(str(tmp_path / d / "masks.safetensors")) for d in "ab")
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_the_shuffled_control_uses_the_compared_runs_settings(make_cfg, tmp_path):
    """Hole 4: strategy=shuffled with of=smoothgrad and a swept sigma shuffles the masks of that
    sigma's scores (it shares their entry), not of the YAML's default sigma."""
    from deepcuts.pruning.controls import ShuffleMasks

    common = ("keep_fraction=0.5", "strategy.eta=2")
    method = run(make_cfg("strategy=smoothgrad", "strategy.sigma=0.5", *common, f"output_dir={tmp_path / 'm'}"))
    control = run(make_cfg("strategy=shuffled", "strategy.of=smoothgrad", "+strategy.sigma=0.5", "+strategy.eta=2",
                           "keep_fraction=0.5", f"output_dir={tmp_path / 'c'}"))
    assert control["stage_keys"]["scores"] == method["stage_keys"]["scores"]
    assert "scores" in control["cache"]["hits"]
    m = load_file(str(tmp_path / "m" / "masks.safetensors"))
    c = load_file(str(tmp_path / "c" / "masks.safetensors"))
    shuffled = ShuffleMasks(0)(m)
    assert all(bool((shuffled[k] == c[k]).all()) for k in m)


def test_changed_config_in_the_same_folder_is_redone(make_cfg):
    first = run(make_cfg("strategy=layer_mag_weight"))
    second = run(make_cfg("strategy=layer_mag_weight", "epochs_final=2"))
    assert second["run_key"] != first["run_key"]
    assert len(second["history"]["pruned"]) == 2


# -- completeness: every config leaf is keyed or declared result-neutral ------------------------

# Bases in which each lever is on, so a setting read only under a lever is perturbed there.
BASES = {
    "plain": ("strategy=gradcam_shift",),
    "levers": ("strategy=layer_mag_grad", "selection=holdout", "distill.alpha=0.5", "rewind=step:2", "shots=2",
               "epochs_dense=2"),
    "structured": ("strategy=gradcam_shift", "structure=heads_neurons", "keep_fraction=0.5"),
    "smooth": ("strategy=smoothgrad_cam_shift",),
}
# settings read only under a condition some base does not meet (they must change a key in another base)
CONDITIONAL: dict[str, str] = {
    "shot_epochs": "read only with shots > 1 (base levers)",
    "distill.temperature": "read only with distill.alpha > 0 (base levers)",
    "selection_fraction": "read only with selection=holdout (base levers)",
}
# other values for leaves whose generic perturbation is not a valid setting
ALTERNATIVES = {
    "keep_fraction": [0.25],
    "selection": ["dev"], "rewind": ["finetuned"], "scoring.at": ["pretrained"],
    "scoring.accumulate": ["abs_of_mean"], "trainer.precision": ["bf16-mixed"], "ratio_basis": ["model"],
    "strategy.scope": ["global"], "structure.group_score": ["mean"], "structure.scope": ["global"],
    "structure.kind": ["none"], "data.task.type": ["classification"], "model.pooling": ["first"],
    "trainer.strategy": ["ddp_spawn"], "trainer.devices": [2], "scheduler": ["linear_warmup"],
    "optimizer._target_": ["torch.optim.SGD"], "data.monitor_mode": ["min", "max"], "data.monitor": ["mse"],
    "model.config.hidden_size": [64], "model.config.num_attention_heads": [4], "strategy.accumulate": ["abs_of_mean"],
    "prune.exclude": [["bert.pooler.dense"]], "data.metrics.mse._target_": ["torchmetrics.MeanAbsoluteError"],
    "data.metrics.pearson._target_": ["torchmetrics.SpearmanCorrCoef"],
    "data.metrics.spearmanr._target_": ["torchmetrics.PearsonCorrCoef"],
    "model.layout.query": ["attention.self.key"], "model.layout.key": ["attention.self.query"],
    "model.layout.value": ["attention.self.query"], "model.layout.attn_out": ["output.dense"],
    "model.layout.ffn_in": ["output.dense"], "model.layout.ffn_out": ["intermediate.dense"],
}
# leaves that cannot be perturbed into another valid run on the tiny model, and why
UNPERTURBABLE = {
    "data.name", "data.folder", "data.text_columns", "data.label_column", "data.train_file", "data.eval_file",
    "data.header", "data.columns", "data.task.num_labels", "data.task.min", "data.task.max",
    "data.metrics", "model.arch", "model.backbone", "model.tokenizer", "model.layout", "model.inputs",
    "model.pretrained", "model.prunable", "prune.include", "strategy._target_", "trainer._target_",
    "optimizer._partial_", "structure.min_heads", "data.task.labels",
    # refused before training whatever the value: regression -> classification needs num_labels;
    # another pooling has no pooler for prune.include; other layers are no modules of the model;
    # devices > 1 needs trainer=ddp (test_dense_key_changes_with_what_determines_the_dense_model)
    "data.task.type", "model.pooling", "model.layout.layers", "trainer.devices",
}


def _perturbations(path: str, value):
    if path in ALTERNATIVES:
        return ALTERNATIVES[path]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        return [value * 0.5 if value else 0.25]
    if value is None:
        return [1, 0.5]
    if isinstance(value, str):
        return [value + "_x"]
    return []


def _leaves(cfg) -> dict:
    return flatten(OmegaConf.to_container(cfg, resolve=False))


@pytest.mark.slow
def test_every_config_leaf_changes_a_key_or_is_result_neutral(make_cfg):
    """Keys proven complete (mutation checked: dropping ``selection`` from FineTuneSettings.spec,
    or ``prunable`` from the scores stage, fails this test), and DENSE_INPUTS, which the reports
    use to know which comparisons are across dense models, equal to what moves the dense key
    (mutation checked: dropping ``epochs_dense`` from DENSE_INPUTS fails it)."""
    changed: dict[str, set[str]] = {}
    unread: list[str] = []  # valid perturbations that change no key where the setting is read
    misfiled: list[str] = []  # dense key moved by a setting not in DENSE_INPUTS, or the reverse
    for name, base in BASES.items():
        cfg = make_cfg(*base)
        reference = keys(cfg)
        for path, value in _leaves(cfg).items():
            if neutral(path) or path.startswith("hydra"):
                continue
            for other in (o for o in _perturbations(path, value) if o != value):
                perturbed = copy.deepcopy(cfg)
                with open_dict(perturbed):
                    OmegaConf.update(perturbed, path, other, force_add=True)
                try:
                    got = keys(perturbed)
                except Exception:  # noqa: BLE001
                    continue  # not a valid run: refused before training
                moved = {k for k in got if got[k] != reference.get(k)}
                changed.setdefault(path, set()).update(moved)
                if moved and ("dense" in moved) != dense_input(path):
                    misfiled.append(f"{name}: {path}={other!r} moves {sorted(moved)}")
                if not moved and not any(path == c or path.startswith(c + ".") for c in CONDITIONAL):
                    unread.append(f"{name}: {path}={other!r}")
    all_leaves = {p for base in BASES.values() for p in _leaves(make_cfg(*base)) if not neutral(p)}
    silent = sorted(p for p in all_leaves if not changed.get(p) and not any(p == u or p.startswith(u + ".") for u in UNPERTURBABLE))
    assert not silent, f"config leaves that change no key and are not result-neutral: {silent}"
    assert not unread, f"settings that change no key in a base where they are read: {unread}"
    assert not misfiled, f"DENSE_INPUTS (deepcuts/config/neutral.py) disagrees with the dense key: {misfiled}"
    assert all(reason for reason in RESULT_NEUTRAL.values())
