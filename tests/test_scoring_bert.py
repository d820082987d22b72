"""Scoring on the tiny BERT: token-weighted CAM means, hooks always removed, nothing disturbed."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from deepcuts import strategies as S
from deepcuts.data.glue import GlueDataModule
from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.pruning import budget as B
from deepcuts.pruning import masks as M
from deepcuts.scoring.passes import run_scoring

QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}
QUERY = "bert.encoder.layer.0.attention.self.query"


def nonzero_biases(model):
    """BERT initialises every bias to 0, which would make every bias score 0 whatever the code
    does with biases: give them seeded values of the size the weights have."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def setup(make_cfg):
    cfg = make_cfg("data=stsb")
    tok = load_tokenizer(cfg.model.tokenizer)
    model = nonzero_biases(build_model(cfg, tok))
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
    assert all(prunable[n].detach().abs().min() > 0 for n in prunable if n.endswith("bias"))
    # every tensor's scores, biases included, are positive almost everywhere
    assert all((s > 0).float().mean() > 0.9 for s in scores.values())
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


def adamw_step(model, optimizer, batch):
    optimizer.zero_grad(set_to_none=True)
    model.loss(batch).backward()
    optimizer.step()


def optimiser_state(optimizer):
    return {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()}


def assert_same_optimiser_state(a, b):
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k])


def test_scoring_between_optimiser_steps_changes_nothing(setup):
    """An optimiser with real state (one AdamW step taken) that the scoring pass can reach: the
    model's configure_optimizers returns it. Scoring between two training steps must leave the
    second step exactly what it is without scoring (a twin taken before scoring): optimiser state,
    weights, the parameters it holds, dropout (train mode, RNG), requires_grad flags."""
    cfg, model, data, prunable = setup
    batch_a, batch_b = list(itertools.islice(iter(data.train_dataloader()), 2))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.optimizer_factory = lambda params: optimizer  # the model's own optimiser is this one
    model.scheduler_factory = None
    assert model.configure_optimizers() is optimizer
    adamw_step(model, optimizer, batch_a)
    after_a = model.get_submodule(QUERY).weight.detach().clone()
    twin, twin_optimizer = copy.deepcopy((model, optimizer))
    other, other_optimizer = copy.deepcopy((model, optimizer))
    assert twin_optimizer.param_groups[0]["params"][0] is next(twin.parameters())
    before, rng = optimiser_state(optimizer), torch.random.get_rng_state()

    strategy = S.SmoothGradCAMShift("s", eta=2)
    run_scoring(model, prunable, strategy, data.scoring_dataloader(0), 2, trainer_kwargs=QUIET)
    assert strategy.batches_seen == 2 and all(s.abs().sum() > 0 for s in strategy.scores.values())
    assert_same_optimiser_state(before, optimiser_state(optimizer))
    assert all(p.grad is None for p in model.parameters())

    adamw_step(model, optimizer, batch_b)
    torch.random.set_rng_state(rng)  # the twin's second step starts from the pre-scoring RNG
    adamw_step(twin, twin_optimizer, batch_b)
    assert_same_optimiser_state(optimiser_state(twin_optimizer), optimiser_state(optimizer))
    got, want = dict(model.named_parameters()), dict(twin.named_parameters())
    assert got.keys() == want.keys()
    assert all(torch.equal(got[n], want[n]) for n in got)
    # the comparison can tell: the step moved the weights, and the same step under other dropout
    # draws (as after a scoring pass that consumed RNG) ends elsewhere
    assert not torch.equal(got[QUERY + ".weight"], after_a)
    torch.manual_seed(99)
    adamw_step(other, other_optimizer, batch_b)
    assert not torch.equal(other.get_submodule(QUERY).weight, got[QUERY + ".weight"])


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


def independent_scores(model, prunable, batches, shift=None):
    """The scores written out with no strategy class: ``torch.autograd.grad`` of each batch's
    loss, each Linear's output caught by a forward hook and averaged over the real tokens
    (``attention_mask`` == 1) of the batch, ``sum_t |W * G_t (* (a_bar_t + shift))|``.
    ``shift=None``: no activation factor (weight x gradient)."""
    names = list(prunable)
    linears = {n.rpartition(".")[0] for n in names}
    outputs = {}

    def catch(name):
        return lambda module, inputs, output: outputs.__setitem__(name, output.detach())

    handles = [model.get_submodule(m).register_forward_hook(catch(m)) for m in linears]
    mode = model.training
    model.eval()  # scoring.dropout=false
    total = {n: torch.zeros_like(p) for n, p in prunable.items()}
    try:
        for batch in batches:
            grads = torch.autograd.grad(model.loss(batch), [prunable[n] for n in names])
            real = batch["attention_mask"].bool()
            for name, grad in zip(names, grads, strict=True):
                term = prunable[name].detach() * grad
                if shift is not None:
                    out = outputs[name.rpartition(".")[0]]
                    # token outputs [B, L, H]: the real tokens' rows; the pooler's [B, H]: the batch
                    a_bar = out[real].mean(0) if out.dim() == 3 else out.mean(0)
                    factor = a_bar + shift
                    term = term * (factor[:, None] if term.dim() == 2 else factor)
                total[name] += term.abs()
    finally:
        for h in handles:
            h.remove()
        model.train(mode)
    return total


@pytest.mark.parametrize(
    ("make", "shift"),
    [
        pytest.param(lambda: S.MagnitudeGrad("g"), None, id="mag_grad"),
        pytest.param(lambda: S.GradCAMShift("s"), 10.0, id="cam_cut"),
        pytest.param(lambda: S.GradCAM("c"), 0.0, id="gradcam"),
    ],
)
def test_bert_scores_match_an_independent_autograd_computation(setup, make, shift):
    """The pipeline's scoring pass on the tiny BERT (non-zero biases, padded batches of different
    lengths) against the scores computed directly from autograd and hooks."""
    cfg, model, data, prunable = setup
    batches = list(itertools.islice(iter(data.scoring_dataloader(0)), 3))
    assert len({b["input_ids"].shape[1] for b in batches}) == 3, "the test needs batches of different lengths"
    assert all((b["attention_mask"] == 0).any() for b in batches), "the test needs padded batches"
    want = independent_scores(model, prunable, batches, shift)
    strategy = make()
    got = run_scoring(model, prunable, strategy, DataLoader(batches, batch_size=None), None, trainer_kwargs=QUIET)
    assert strategy.batches_seen == 3
    assert got.keys() == want.keys() == prunable.keys()
    assert any(n.endswith(".bias") for n in want) and any(n.startswith("bert.pooler") for n in want)
    for name in want:
        assert (want[name] > 0).float().mean() > 0.9, name  # biases too: not zeros on both sides
        scale = want[name].abs().max()
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6 * scale, msg=name)
