"""The recovery levers (issue 15): distillation, k-shot gradual pruning, late rewinding."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from deepcuts.config.errors import ConfigError
from deepcuts.data.glue import EXAMPLE_INDEX, GlueDataModule
from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.pipeline.flow import run
from deepcuts.pruning import budget as B
from deepcuts.pruning import masks as M
from deepcuts.pruning import schedule as G
from deepcuts.training.distill import DistillSettings, distill_loss, teacher_outputs
from deepcuts.training.fine_tune import FineTuneSettings, fine_tune
from deepcuts.training.rewind import RewindPoint, replay

# -- distillation -------------------------------------------------------------------------------


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_loss_equals_the_hand_computed_value_for_classification():
    s, t, y, alpha, T = [1.0, 2.0, 0.0], [0.5, 1.5, -1.0], 1, 0.3, 2.0
    ce = -math.log(_softmax(s)[y])
    p_t, p_s = _softmax([v / T for v in t]), _softmax([v / T for v in s])
    kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s, strict=True))
    want = (1 - alpha) * ce + alpha * T * T * kl
    student = torch.tensor([s], dtype=torch.float64)
    task = torch.nn.functional.cross_entropy(student, torch.tensor([y]))
    got = distill_loss(student, torch.tensor([t], dtype=torch.float64), task, alpha, T, regression=False)
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_kd_loss_averages_kl_over_the_batch_and_is_zero_soft_term_for_equal_outputs():
    s = torch.tensor([[0.2, -1.0], [3.0, 1.0]], dtype=torch.float64)
    task = torch.tensor(0.7, dtype=torch.float64)
    assert distill_loss(s, s.clone(), task, 0.5, 3.0, regression=False).item() == pytest.approx(0.35)
    t = torch.tensor([[1.0, 0.0], [3.0, 1.0]], dtype=torch.float64)  # only row 0 differs
    one = distill_loss(s[:1], t[:1], task, 1.0, 1.0, regression=False).item()
    assert distill_loss(s, t, task, 1.0, 1.0, regression=False).item() == pytest.approx(one / 2)


def test_kd_loss_for_regression_is_mse_to_the_teacher():
    s, t, y = [4.0, 1.0], [3.5, 2.0], [5.0, 0.0]
    task = sum((a - b) ** 2 for a, b in zip(s, y, strict=True)) / 2
    soft = sum((a - b) ** 2 for a, b in zip(s, t, strict=True)) / 2
    got = distill_loss(torch.tensor(s), torch.tensor(t), torch.tensor(task), 0.25, 7.0, regression=True)
    assert got.item() == pytest.approx(0.75 * task + 0.25 * soft)


@pytest.mark.parametrize("node, message", [
    ({"alpha": 1.5}, "distill.alpha must be a number in [0, 1]"),
    ({"alpha": 0.5, "temperature": 0}, "distill.temperature must be a number > 0"),
    ({"alpha": 0.5, "temp": 2}, "distill has no key(s) ['temp']"),
])
def test_bad_distill_settings_are_refused(node, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        DistillSettings.from_cfg(node)


def test_teacher_table_holds_each_train_examples_eval_output_by_its_row(make_cfg):
    cfg = make_cfg("data=sst2", "selection=holdout", "selection_fraction=0.25")
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=0, holdout_fraction=0.25)
    data.setup()
    model.train()
    table = teacher_outputs(model, data.train_eval_dataloader())
    assert model.training  # mode restored
    rows = data.splits["train"][EXAMPLE_INDEX]
    assert len(rows) + len(data.splits["holdout"]) == 48 and max(rows) < len(table)  # held-out rows: gaps
    assert torch.isnan(table).any(dim=1).sum() == len(table) - len(rows)
    model.eval()
    batch = data.collate([data.splits["train"][i] for i in range(5)])
    with torch.no_grad():
        want = model._forward_batch(batch)
    torch.testing.assert_close(table[batch[EXAMPLE_INDEX]], want, rtol=1e-5, atol=1e-6)


def test_distilled_run_trains_on_the_kd_loss_and_caches_the_teacher(make_cfg, tmp_path):
    cfg = make_cfg("data=stsb", "strategy=layer_mag_weight", "distill.alpha=0.5", "distill.temperature=3")
    seen = []
    original = distill_loss

    def spy(*args, **kwargs):
        seen.append(args[3:5])
        return original(*args, **kwargs)

    import deepcuts.training.distill as D

    D.distill_loss, saved = spy, D.distill_loss
    try:
        results = run(cfg)
    finally:
        D.distill_loss = saved
    assert seen and set(seen) == {(0.5, 3.0)}
    assert len(seen) == 6  # 48 examples / batch 8: every masked step, no dense step
    assert results["recipe"]["distill"] == {"alpha": 0.5, "temperature": 3.0}
    assert "teacher" in results["cache"]["builds"]
    (entry,) = (tmp_path / "cache" / "teacher").glob("*/teacher.safetensors")
    assert load_file(str(entry))["outputs"].shape == (48,)
    assert results["stage_keys"]["teacher"] == entry.parent.name
    again = run(make_cfg("data=stsb", "strategy=layer_mag_grad", "distill.alpha=0.5", "distill.temperature=3",
                         f"output_dir={tmp_path / 'run2'}"))
    assert "teacher" not in again["cache"]["builds"]  # one teacher table per dense model


def test_no_lever_leaves_the_run_key_of_a_plain_run(make_cfg, tmp_path):
    from deepcuts.pipeline.plan import RunPlan

    def plan(*overrides):
        return RunPlan.build(make_cfg("data=stsb", *overrides), tmp_path)

    plain = plan()
    assert plain.run_key == plan("distill.temperature=5", "shot_epochs=3", "rewind=pretrained").run_key
    assert plain.run_key != plan("shots=2").run_key != plan("distill.alpha=0.1").run_key
    assert "teacher" in plan("distill.alpha=0.1").stage_keys() and "teacher" not in plain.stage_keys()

# -- k-shot ---------------------------------------------------------------------------------


def test_cubic_schedule_by_hand():
    f = 0.2  # target sparsity 0.8
    want = [1 - 0.8 * (1 - (2 / 3) ** 3), 1 - 0.8 * (1 - (1 / 3) ** 3), 0.2]
    assert G.keep_schedule(f, 3) == pytest.approx(want, abs=1e-15)
    assert G.keep_schedule(f, 3)[-1] == f and G.keep_schedule(f, 1) == [f]
    with pytest.raises(ConfigError, match="shots must be a whole number >= 1"):
        G.keep_schedule(f, 0)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_restricted_rounds_keep_exact_counts_among_the_kept(scope):
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(40, 30, generator=gen), "b": torch.randn(57, generator=gen)}
    total = sum(s.numel() for s in scores.values())
    masks = None
    for fraction in G.keep_schedule(0.1, 4):
        current = {n: torch.randn(s.shape, generator=gen) for n, s in scores.items()}  # re-scored
        if masks is not None:
            current = G.restrict(current, masks)
        new = M.build_masks(current, fraction, scope)
        if scope == "layer":
            for m in new.values():
                assert int(m.sum()) == M.keep_count(fraction, m.numel())
        else:
            assert int(sum(m.sum() for m in new.values())) == M.keep_count(fraction, total)
        if masks is not None:
            assert all(bool((new[n] & ~masks[n]).sum() == 0) for n in new)  # pruned stays pruned
        masks = new


def test_k_shot_run_hits_each_rounds_exact_count_and_rescores(make_cfg, tmp_path):
    cfg = make_cfg("data=sst2", "strategy=layer_mag_weight", "shots=3", "shot_epochs=1", "optimizer.lr=1e-3")
    results = run(cfg)
    model = build_model(cfg, load_tokenizer(cfg.model.tokenizer))
    prunable = B.prunable_parameters(model, cfg.prune.include, [])
    schedule = G.keep_schedule(results["keep_fraction"], 3)
    rounds = results["recipe"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r, fraction in zip(rounds, schedule, strict=False):
        assert r["keep_fraction"] == pytest.approx(fraction)
        assert r["kept"] == sum(M.keep_count(fraction, p.numel()) for p in prunable.values())
    final = load_file(str(tmp_path / "run" / "masks.safetensors"))
    for name, p in prunable.items():
        assert int(final[name].sum()) == M.keep_count(schedule[-1], p.numel())
    assert results["timings_s"]["shots"] > 0
    # the last round re-scored the fine-tuned model: magnitude masks differ from single shot's
    single = load_file(str(_single_shot_masks(make_cfg, tmp_path)))
    assert any(not torch.equal(final[n], single[n]) for n in final)


def _single_shot_masks(make_cfg, tmp_path):
    run(make_cfg("data=sst2", "strategy=layer_mag_weight", "optimizer.lr=1e-3", f"output_dir={tmp_path / 'single'}"))
    return tmp_path / "single" / "masks.safetensors"


@pytest.mark.parametrize("overrides, message", [
    (["shots=2", "strategy=shuffled"], "is a control"),
    (["shots=2", "strategy=movement"], "reads the dense fine-tune's trace"),
    (["shots=2", "structure=heads_neurons", "keep_fraction=0.8"], "removes whole groups"),
    (["shots=2", "strategy=snip"], "scoring.at=pretrained"),
    (["shots=2", "shot_epochs=-1"], "shot_epochs must be a whole number"),
])
def test_k_shot_refuses_what_cannot_be_rescored_before_training(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(make_cfg("data=sst2", *overrides))
    assert not (tmp_path / "cache" / "dense").exists()

# -- late rewinding --------------------------------------------------------------------------


class Record(pl.Callback):
    """Copies the weights after optimiser step ``n`` without stopping the fine-tune."""

    def __init__(self, n: int) -> None:
        self.n, self.state = n, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.state is None and trainer.global_step == self.n:
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}


def _model_and_data(cfg):
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed)
    data.setup()
    model.set_eval_sets(data.eval_sets())
    return model, data


@pytest.mark.parametrize("point, step", [(RewindPoint("step", 4), 4), (RewindPoint("epoch", 1), 6)])
def test_rewind_to_a_step_restores_exactly_that_steps_weights(make_cfg, tmp_path, point, step):
    cfg = make_cfg("data=sst2", "epochs_dense=2", "optimizer.lr=1e-3")
    model, data = _model_and_data(cfg)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record = Record(step)  # 48 examples / batch 8: 6 steps per epoch
    fine_tune(model, data, FineTuneSettings.from_cfg(cfg), 2, tmp_path / "full", "dense", loggers=[], selection="last", callbacks=[record])
    end = {k: v.detach().clone() for k, v in model.state_dict().items()}
    replayed = replay(model, data, FineTuneSettings.from_cfg(cfg), cfg.epochs_dense, point, initial, tmp_path / "replay")
    for name, want in record.state.items():
        assert torch.equal(replayed[name], want), name
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(replayed[name], end[name]) and not torch.equal(replayed[name], initial[name])


def test_pipeline_rewinds_to_the_replayed_step(make_cfg, tmp_path):
    """With no masked epochs the exported model is the step-3 weights times the masks."""
    from deepcuts.models.export import load_exported

    cfg = make_cfg("data=sst2", "strategy=layer_mag_weight", "rewind=step:3", "epochs_dense=2", "epochs_final=0",
                   "save_model=true", "optimizer.lr=1e-3")
    results = run(cfg)
    assert results["recipe"]["rewind"] == "step:3" and "rewind" in results["cache"]["builds"]
    (entry,) = (tmp_path / "cache" / "rewind").glob("*/rewind.safetensors")
    state = load_file(str(entry))
    assert results["stage_keys"]["rewind"] == entry.parent.name
    model, data = _model_and_data(cfg)
    record = Record(3)
    fine_tune(model, data, FineTuneSettings.from_cfg(cfg), 2, tmp_path / "full", "dense", loggers=[], selection="last", callbacks=[record])
    masks = load_file(str(tmp_path / "run" / "masks.safetensors"))
    exported = load_exported(tmp_path / "run" / "pruned_model")
    for name, p in exported.encoder.named_parameters():
        full = f"bert.{name}"
        assert torch.equal(state[full], record.state[full]), name
        want = record.state[full] * masks[full] if full in masks else record.state[full]
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(exported.head.weight.detach(), record.state["head.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("value, message", [
    ("step:1000", "past the dense fine-tune's 6 optimiser steps"),
    ("epoch:2", "past the dense fine-tune's 1 epochs"),
    ("late", "rewind='late' is unknown"),
    ("step:-1", "is unknown"),
])
def test_bad_rewind_points_fail_before_training(make_cfg, tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        run(make_cfg("data=sst2", f"rewind={value}"))
    assert not (tmp_path / "cache" / "dense").exists()


def test_rewind_zero_is_the_initial_state():
    assert RewindPoint.parse("step:0").initial and not RewindPoint.parse("step:0").late
    assert RewindPoint.parse("epoch:2").late and RewindPoint.parse("finetuned").kind == "finetuned"


def test_k_shot_gives_the_same_masks_whether_round_one_scores_were_built_or_cached(make_cfg, tmp_path):
    kshot = ("data=sst2", "strategy=gradcam_shift", "shots=2", "optimizer.lr=1e-3")
    built = run(make_cfg(*kshot, f"output_dir={tmp_path / 'built'}", f"cache_dir={tmp_path / 'c1'}"))
    assert "scores" in built["cache"]["builds"]
    run(make_cfg("data=sst2", "strategy=gradcam_shift", "optimizer.lr=1e-3", f"output_dir={tmp_path / 'single'}",
                 f"cache_dir={tmp_path / 'c2'}"))
    cached = run(make_cfg(*kshot, f"output_dir={tmp_path / 'cached'}", f"cache_dir={tmp_path / 'c2'}"))
    assert "scores" not in cached["cache"]["builds"]
    a, b = (load_file(str(tmp_path / d / "masks.safetensors")) for d in ("built", "cached"))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert built["pruned"] == cached["pruned"]


def test_rewind_to_the_last_epoch_is_the_pipelines_own_dense_model(make_cfg, tmp_path):
    """The replay matches the dense stage as the pipeline ran it (movement trace and all)."""
    results = run(make_cfg("data=sst2", "strategy=layer_mag_weight", "epochs_dense=2", "rewind=epoch:2",
                           "optimizer.lr=1e-3"))
    assert "rewind" in results["cache"]["builds"]
    (dense,) = (tmp_path / "cache" / "dense").glob("*/model.safetensors")
    (entry,) = (tmp_path / "cache" / "rewind").glob("*/rewind.safetensors")
    dense, state = load_file(str(dense)), load_file(str(entry))
    assert set(dense) <= set(state)
    for name, want in dense.items():
        assert torch.equal(state[name], want), name
