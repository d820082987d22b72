"""Scoring on the tiny BERT: token-weighted CAM means, hooks always removed, nothing disturbed."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from deepcuts import budget as B
from deepcuts import masks as M
from deepcuts import strategies as S
from deepcuts.data import GlueDataModule
from deepcuts.model import load_tokenizer
from deepcuts.pipeline import build_model
from deepcuts.scoring import run_scoring

QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}
QUERY = "bert.encoder.layer.0.attention.self.query"


@pytest.fixture
def setup(make_cfg):
    cfg = make_cfg("data=stsb")
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed)
    data.setup()
    prunable = B.prunable_parameters(model, cfg.prune.include)
    return cfg, model, data, prunable


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_cam_means_weight_real_tokens_only(setup):
    cfg, model, data, prunable = setup
    batch = next(iter(data.scoring_dataloader(0)))
    assert (batch["attention_mask"] == 0).any(), "the test needs a padded batch"
    captured = {}
    def keep_output(module, inputs, output):
        captured["out"] = output.detach()

    handle = model.get_submodule(QUERY).register_forward_hook(keep_output)
    loader = DataLoader([batch], batch_size=None)
    for include_padding in (False, True):
        captured.clear()
        strategy = S.GradCAM("c", include_padding=include_padding)
        run_scoring(model, prunable, strategy, loader, 1, trainer_kwargs=QUIET)
        out, mask = captured["out"], batch["attention_mask"].float()
        if include_padding:
            want = out.mean((0, 1))
        else:
            want = (out * mask[..., None]).sum((0, 1)) / mask.sum()
        torch.testing.assert_close(strategy.activations.means[QUERY], want)
    handle.remove()
    masked = (out * mask[..., None]).sum((0, 1)) / mask.sum()
    assert not torch.allclose(masked, out.mean((0, 1)))
    # the pooler's output is [B, H]: its a_bar has one entry per output unit, not a scalar
    assert strategy.activations.means["bert.pooler.dense"].shape == (model.bert.config.hidden_size,)


@pytest.mark.parametrize("cls", [S.MagnitudeGrad, S.GradCAMShift, S.SmoothGrad, S.SmoothGradCAMShift])
def test_scoring_leaves_model_rng_and_hooks_untouched(setup, cls):
    cfg, model, data, prunable = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    rng = torch.random.get_rng_state()
    kwargs = {"eta": 2} if issubclass(cls, S.SmoothGrad) else {}
    scores = run_scoring(model, prunable, cls("s", **kwargs), data.scoring_dataloader(0), 2, trainer_kwargs=QUIET)
    assert set(scores) == set(prunable)
    # BERT initialises biases to 0, so only the weights' scores are non-zero here
    assert all(s.abs().sum() > 0 for n, s in scores.items() if n.endswith("weight"))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert hooks_left(model) == 0


def test_hooks_removed_after_an_exception(setup):
    cfg, model, data, prunable = setup
    calls = {"n": 0}
    original = model.loss

    def failing_loss(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in the middle of scoring")
        return original(batch)

    model.loss = failing_loss
    with pytest.raises(RuntimeError, match="boom"):
        run_scoring(model, prunable, S.SmoothGradCAMShift("s", eta=2), data.scoring_dataloader(0), 3, trainer_kwargs=QUIET)
    assert calls["n"] == 3
    assert hooks_left(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_scoring_dropout_switch(setup):
    cfg, model, data, prunable = setup
    seen = []
    handle = model.bert.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    run_scoring(model, prunable, S.MagnitudeGrad("g"), data.scoring_dataloader(0), 1, dropout=False, trainer_kwargs=QUIET)
    run_scoring(model, prunable, S.MagnitudeGrad("g"), data.scoring_dataloader(0), 1, dropout=True, trainer_kwargs=QUIET)
    handle.remove()
    assert seen == [False, True]


def test_same_seed_bit_identical_masks(setup):
    cfg, model, data, prunable = setup
    def masks(seed):
        s = run_scoring(model, prunable, S.SmoothGrad("s", eta=2, sigma=0.01, seed=seed), data.scoring_dataloader(seed), 2, trainer_kwargs=QUIET)
        return M.layer_masks(s, 0.15), M.global_masks(s, 0.15)
    (a_layer, a_global), (b_layer, b_global) = masks(0), masks(0)
    assert all(torch.equal(a_layer[n], b_layer[n]) and torch.equal(a_global[n], b_global[n]) for n in a_layer)
    c_layer, _ = masks(1)
    assert any(not torch.equal(a_layer[n], c_layer[n]) for n in a_layer)


def test_scoring_leaves_an_optimiser_state_untouched(setup):
    cfg, model, data, prunable = setup
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.loss(next(iter(data.train_dataloader()))).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    before = {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()}
    run_scoring(model, prunable, S.SmoothGradCAMShift("s", eta=2), data.scoring_dataloader(0), 2, trainer_kwargs=QUIET)
    after = optimizer.state_dict()["state"]
    assert before.keys() == after.keys() and len(before) > 0
    for k in before:
        assert all(torch.equal(before[k][n], after[k][n]) for n in before[k])


def test_smoothgrad_noise_only_at_real_tokens(setup):
    cfg, model, data, prunable = setup
    batch = next(iter(data.scoring_dataloader(0)))
    strategy = S.SmoothGrad("s", eta=1, sigma=0.5)
    seen = {}

    def keep_output(module, inputs, output):  # runs after the noise hook: sees the noisy output
        seen["noisy"] = output.detach()

    module = model.get_submodule(QUERY)
    clean = {}

    def keep_clean(module, inputs, output):
        clean["out"] = output.detach().clone()

    h = module.register_forward_hook(keep_clean)
    model.eval()
    with torch.no_grad():
        model.loss(batch)
    h.remove()
    with strategy.hooks(model, prunable):
        h = module.register_forward_hook(keep_output)
        strategy.before_batch(model, batch)
        with torch.no_grad():
            model.loss(batch)
        h.remove()
    diff = (seen["noisy"] - clean["out"]).abs().sum(-1)  # layer 0: its input carries no noise
    real = batch["attention_mask"].bool()
    assert (diff[real] > 0).all() and (diff[~real] == 0).all()
