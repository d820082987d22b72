"""Every score on a case small enough to compute by hand: a 2-layer MLP (the paper's Figure 2)
with gradients written out as matrix formulas, and the tiny BERT for masking/padding/hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcuts import strategies as S
from deepcuts.config.errors import ConfigError
from deepcuts.scoring.passes import run_scoring

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


class OneLinear(nn.Module):
    """out = W x + b with W = [[1, -2], [0.5, 3]], b = [0.25, -1]; loss = mean_i (out_i0 - out_i1).

    So ``dL/dW = c xbar^T`` and ``dL/db = c`` with ``c = [1, -1]``, and ``a_bar = W xbar + b``:
    every score below is a few multiplications, done by hand in the comments."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
            self.fc.bias.copy_(torch.tensor([0.25, -1.0]))

    def loss(self, batch):
        out = self.fc(batch["x"])
        return (out[:, 0] - out[:, 1]).mean()


# batch 1: xbar = [2, 1]   -> G1 = [[2, 1], [-2, -1]], g_b = [1, -1], a_bar1 = [0.25, 3]
#          W*G1 = [[2, -2], [-1, -3]],  b*g_b = [0.25, 1]
# batch 2: xbar = [-2, -2] -> G2 = [[-2, -2], [2, 2]], g_b = [1, -1], a_bar2 = [2.25, -8]
#          W*G2 = [[-2, 4], [1, 6]],    b*g_b = [0.25, 1]
ONE_LINEAR_BATCHES = [
    {"x": torch.tensor([[1.0, 2.0], [3.0, 0.0]]), "attention_mask": torch.ones(2, 1)},
    {"x": torch.tensor([[-1.0, 0.0], [-3.0, -4.0]]), "attention_mask": torch.ones(2, 1)},
]
T = torch.tensor
BY_HAND = {
    # lambda = 10: rows x (a_bar + 10) = [10.25, 13] and [12.25, 2]
    #   batch 1 [[20.5, -20.5], [-13, -39]], bias [2.5625, 13]
    #   batch 2 [[-24.5, 49], [2, 12]],      bias [3.0625, 2]
    "cam_cut": {"fc.weight": T([[45.0, 69.5], [15.0, 51.0]]), "fc.bias": T([5.625, 15.0])},
    "cam_cut_abs_of_mean": {"fc.weight": T([[2.0, 14.25], [5.5, 13.5]]), "fc.bias": T([2.8125, 7.5])},
    # lambda = 0: rows x a_bar = [0.25, 3] and [2.25, -8]
    #   batch 1 [[0.5, -0.5], [-3, -9]], bias [0.0625, 3]
    #   batch 2 [[-4.5, 9], [-8, -48]],  bias [0.5625, -8]
    "gradcam": {"fc.weight": T([[5.0, 9.5], [11.0, 57.0]]), "fc.bias": T([0.625, 11.0])},
    # no activation factor: |W*G1| + |W*G2|
    "mag_grad": {"fc.weight": T([[4.0, 6.0], [2.0, 9.0]]), "fc.bias": T([0.5, 2.0])},
}


@pytest.mark.parametrize(
    ("make", "want"),
    [
        pytest.param(lambda: S.GradCAMShift("s"), "cam_cut", id="cam_cut_default_lambda"),
        pytest.param(lambda: S.GradCAMShift("s", accumulate="abs_of_mean"), "cam_cut_abs_of_mean", id="cam_cut_abs_of_mean"),
        pytest.param(lambda: S.GradCAMShift("s", shift=0.0), "gradcam", id="cam_cut_lambda_0"),
        pytest.param(lambda: S.GradCAM("c"), "gradcam", id="gradcam"),
        pytest.param(lambda: S.SmoothGradCAMShift("s", eta=2, sigma=0.0), "cam_cut", id="smoothgrad_cam_shift_sigma_0"),
        pytest.param(lambda: S.MagnitudeGrad("g"), "mag_grad", id="mag_grad"),
    ],
)
def test_cam_cut_and_gradcam_against_hand_computed_numbers(make, want):
    got = score(make(), OneLinear(), ONE_LINEAR_BATCHES)
    assert_scores(got, BY_HAND[want])


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
    per_draw = []
    for _ in range(2):
        h = x @ W1.T + b1 + 0.3 * torch.randn((len(x), 4), generator=g)
        out = torch.relu(h) @ W2.T + b2
        dout = 2 * (out.squeeze(-1) - y) / len(y)
        per_draw.append((dout[:, None] * W2 * (h > 0)).T @ x)
    want = (W1 * (per_draw[0] + per_draw[1]) / 2).abs()
    torch.testing.assert_close(got["fc1.weight"], want, rtol=1e-5, atol=1e-7)
    # the expected value is not one a broken strategy could also hit: it differs from the
    # noise-free score, and from either single draw (one pass, or one draw reused for both)
    clean = expected(MLP(), data)["fc1.weight"]
    for other in (clean, (W1 * per_draw[0]).abs(), (W1 * per_draw[1]).abs()):
        assert (want - other).abs().max() > 1e-3


@pytest.mark.parametrize(("kwargs", "msg"), [({"eta": 0}, "eta"), ({"sigma": -1.0}, "sigma")])
def test_smoothgrad_bad_settings(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        S.SmoothGrad("s", **kwargs)


def test_bad_scope_accumulate_and_batches():
    with pytest.raises(ConfigError, match="scope"):
        S.MagnitudeGrad("g", scope="rows")
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
