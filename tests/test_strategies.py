"""Every score on a case small enough to compute by hand: a 2-layer MLP (the paper's Figure 2)
with gradients written out as matrix formulas, and the tiny BERT for masking/padding/hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcuts import strategies as S
from deepcuts.errors import ConfigError
from deepcuts.scoring import run_scoring

QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


class MLP(nn.Module):
    """out = fc2(relu(fc1(x))), loss = mean squared error."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).squeeze(-1)

    def loss(self, batch):
        return ((self(batch["x"]) - batch["y"]) ** 2).mean()


def batches(t=3, b=5):
    g = torch.Generator().manual_seed(1)
    return [
        {"x": torch.randn(b, 3, generator=g), "y": torch.randn(b, generator=g), "attention_mask": torch.ones(b, 1)}
        for _ in range(t)
    ]


def by_hand(model: MLP, batch):
    """Gradients and pre-activation means of both Linears, from the chain rule."""
    x, y = batch["x"], batch["y"]
    W1, b1, W2, b2 = (p.detach() for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias))
    h = x @ W1.T + b1
    a = torch.relu(h)
    out = a @ W2.T + b2  # [B, 1]
    dout = 2 * (out.squeeze(-1) - y) / len(y)  # [B]
    dW2, db2 = dout[None, :] @ a, dout.sum(0, keepdim=True)
    dh = dout[:, None] * W2 * (h > 0)
    dW1, db1 = dh.T @ x, dh.sum(0)
    grads = {"fc1.weight": dW1, "fc1.bias": db1, "fc2.weight": dW2, "fc2.bias": db2}
    means = {"fc1": h.mean(0), "fc2": out.mean(0)}
    return grads, means


def expected(model, data, shift=None, accumulate="sum_abs"):
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in data:
        grads, means = by_hand(model, batch)
        for name, p in params.items():
            term = p.detach() * grads[name]
            if shift is not None:
                factor = means[name.split(".")[0]] + shift
                term = term * (factor[:, None] if p.dim() == 2 else factor)
            total[name] += term.abs() if accumulate == "sum_abs" else term
    if accumulate == "abs_of_mean":
        total = {n: t.abs() / len(data) for n, t in total.items()}
    return total


def score(strategy, model=None, data=None, n=None):
    model = model or MLP()
    data = data or batches()
    prunable = dict(model.named_parameters())
    return run_scoring(model, prunable, strategy, DataLoader(data, batch_size=None), n, trainer_kwargs=QUIET)


def assert_scores(got, want):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_mag_weight_is_abs_weight():
    model = MLP()
    got = S.MagnitudeWeight("m").data_free_scores(dict(model.named_parameters()))
    assert_scores(got, {n: p.detach().abs() for n, p in model.named_parameters()})


def test_random_is_seeded_uniform():
    params = dict(MLP().named_parameters())
    a, b = S.RandomScore("r", seed=3).data_free_scores(params), S.RandomScore("r", seed=3).data_free_scores(params)
    c = S.RandomScore("r", seed=4).data_free_scores(params)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])
    assert all(((0 <= s) & (s < 1)).all() for s in a.values())


def test_mag_grad_by_hand():
    assert_scores(score(S.MagnitudeGrad("g")), expected(MLP(), batches()))


def test_mag_grad_abs_of_mean_by_hand():
    got = score(S.MagnitudeGrad("g", accumulate="abs_of_mean"))
    assert_scores(got, expected(MLP(), batches(), accumulate="abs_of_mean"))


@pytest.mark.parametrize("shift", [0.0, 10.0, -0.5])
def test_gradcam_by_hand(shift):
    assert_scores(score(S.GradCAM("c", shift=shift)), expected(MLP(), batches(), shift=shift))


def test_gradcam_shift_defaults_to_lambda_10_and_lambda_0_is_gradcam():
    assert S.GradCAMShift("s").shift == 10.0
    assert_scores(score(S.GradCAMShift("s", shift=0.0)), score(S.GradCAM("c")))


def test_batches_are_capped_and_counted():
    strategy = S.MagnitudeGrad("g")
    assert_scores(score(strategy, n=2), expected(MLP(), batches()[:2]))
    assert strategy.batches_seen == 2
    strategy = S.MagnitudeGrad("g")
    score(strategy, n=50)  # more than the loader holds: one pass over it
    assert strategy.batches_seen == 3


def test_smoothgrad_sigma_0_equals_mag_grad():
    assert_scores(score(S.SmoothGrad("s", eta=4, sigma=0.0)), expected(MLP(), batches()))


@pytest.mark.parametrize("shift", [0.0, 10.0])
def test_smoothgrad_cam_sigma_0_equals_gradcam(shift):
    cls = S.SmoothGradCAMShift if shift else S.SmoothGradCAM
    assert_scores(score(cls("s", eta=3, sigma=0.0)), expected(MLP(), batches(), shift=shift))


def test_smoothgrad_noise_changes_scores_and_is_seeded():
    a = score(S.SmoothGrad("s", eta=3, sigma=0.5, seed=1))
    b = score(S.SmoothGrad("s", eta=3, sigma=0.5, seed=1))
    c = score(S.SmoothGrad("s", eta=3, sigma=0.5, seed=2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.allclose(a["fc1.weight"], c["fc1.weight"])
    plain = expected(MLP(), batches())
    assert not torch.allclose(a["fc1.weight"], plain["fc1.weight"])


def test_smoothgrad_averages_eta_noisy_gradients():
    """With noise on fc1's output only, dL/dW2 = mean_k of the hand gradient at the noisy h."""
    model, data = MLP(), batches(t=1)
    strategy = S.SmoothGrad("s", eta=2, sigma=0.3, seed=5)
    got = run_scoring(model, {"fc1.weight": model.fc1.weight}, strategy, DataLoader(data, batch_size=None), None, trainer_kwargs=QUIET)
    # replay the two noise draws from the strategy's own generator
    g = torch.Generator().manual_seed(5)
    x, y = data[0]["x"], data[0]["y"]
    W1, b1, W2, b2 = (p.detach() for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias))
    total = torch.zeros_like(W1)
    for _ in range(2):
        h = x @ W1.T + b1 + 0.3 * torch.randn(h_shape := (len(x), 4), generator=g)
        out = torch.relu(h) @ W2.T + b2
        dout = 2 * (out.squeeze(-1) - y) / len(y)
        total += (dout[:, None] * W2 * (h > 0)).T @ x
    torch.testing.assert_close(got["fc1.weight"], (W1 * total / 2).abs(), rtol=1e-5, atol=1e-7)
    assert h_shape == (5, 4)


@pytest.mark.parametrize(("kwargs", "msg"), [({"eta": 0}, "eta"), ({"sigma": -1.0}, "sigma")])
def test_smoothgrad_bad_settings(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        S.SmoothGrad("s", **kwargs)


def test_bad_scope_accumulate_and_batches():
    with pytest.raises(ConfigError, match="scope"):
        S.MagnitudeGrad("g", scope="row")
    with pytest.raises(ConfigError, match="accumulate"):
        S.MagnitudeGrad("g", accumulate="mean")
    with pytest.raises(ConfigError, match="scoring.batches"):
        score(S.MagnitudeGrad("g"), n=0)


def test_smoothgrad_cam_takes_a_bar_from_the_clean_pass():
    model, data = MLP(), batches(t=1)
    strategy = S.SmoothGradCAM("s", eta=2, sigma=0.5, seed=0)
    score(strategy, model, data)
    _, clean = by_hand(model, data[0])
    torch.testing.assert_close(strategy.activations.means["fc1"], clean["fc1"])
    torch.testing.assert_close(strategy.activations.means["fc2"], clean["fc2"])
