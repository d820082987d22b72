"""The classic scores (SNIP, Taylor, OBD/Fisher, Wanda, Integrated Gradients, movement) against
numbers worked out by hand, exact counts per comparison group, and each one through the pipeline."""

from __future__ import annotations

import copy
import json
import math

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from deepcuts import strategies as S
from deepcuts.pipeline.flow import run
from deepcuts.pruning import masks as M
from deepcuts.scoring.trace import MovementTrace
from tests.test_strategies import (
    MLP,
    ONE_LINEAR_BATCHES,
    QUIET,
    OneLinear,
    T,
    assert_scores,
    batches,
    by_hand,
    score,
)

# OneLinear (tests/test_strategies.py): W = [[1, -2], [0.5, 3]], b = [0.25, -1], G1 = [[2, 1], [-2, -1]],
# G2 = [[-2, -2], [2, 2]], g_b = [1, -1] in both batches.
BY_HAND = {
    # (W*G1)^2 + (W*G2)^2 = [[4, 4], [1, 9]] + [[4, 16], [1, 36]]; bias 2 x (b*g_b)^2
    "taylor": {"fc.weight": T([[8.0, 20.0], [2.0, 45.0]]), "fc.bias": T([0.125, 2.0])},
    # mean_t G_t^2 = [[4, 2.5], [4, 2.5]], 1/2 W^2 = [[0.5, 2], [0.125, 4.5]]; bias mean g^2 = 1, 1/2 b^2
    "fisher_obd": {"fc.weight": T([[2.0, 5.0], [0.5, 11.25]]), "fc.bias": T([0.03125, 0.5])},
    # x columns over the 4 rows: sum of squares [1+9+1+9, 4+0+0+16] = [20, 20]; bias: |b| sqrt(4)
    "wanda": {"fc.weight": T([[1.0, 2.0], [0.5, 3.0]]) * math.sqrt(20), "fc.bias": T([0.5, 2.0])},
    # the loss is linear in W and b, so G(alpha W) = G(W): Integrated Gradients = |W*G1| + |W*G2|
    "integrated_gradients": {"fc.weight": T([[4.0, 6.0], [2.0, 9.0]]), "fc.bias": T([0.5, 2.0])},
}


@pytest.mark.parametrize(
    ("make", "want"),
    [
        pytest.param(lambda: S.Taylor("t"), "taylor", id="taylor"),
        pytest.param(lambda: S.FisherOBD("f"), "fisher_obd", id="fisher_obd"),
        pytest.param(lambda: S.Wanda("w", scope="row"), "wanda", id="wanda"),
        pytest.param(lambda: S.IntegratedGradients("ig", steps=4), "integrated_gradients", id="integrated_gradients"),
        pytest.param(lambda: S.Snip("s"), "integrated_gradients", id="snip_rule_is_mag_grad"),
    ],
)
def test_scores_against_hand_computed_numbers(make, want):
    assert_scores(score(make(), OneLinear(), ONE_LINEAR_BATCHES), BY_HAND[want])


def test_integrated_gradients_on_a_nonlinear_model_by_hand():
    """``W * (1/m) sum_k G(k/m W)`` with the MLP's gradients from the chain rule at each scaled
    model; the weights are left exactly as they were."""
    model, data, m = MLP(), batches(), 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = score(S.IntegratedGradients("ig", steps=m), model, data)
    want = {n: torch.zeros_like(p) for n, p in before.items()}
    for batch in data:
        mean = {n: torch.zeros_like(p) for n, p in before.items()}
        for k in range(1, m + 1):
            scaled = copy.deepcopy(model)
            with torch.no_grad():
                for p in scaled.parameters():
                    p.mul_(k / m)
            for n, g in by_hand(scaled, batch)[0].items():
                mean[n] += g / m
        for n in want:
            want[n] += (before[n] * mean[n]).abs()
    assert_scores(got, want)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


class TokenLinear(nn.Module):
    """A Linear over tokens ``[B, L, 2]``; the loss averages over real tokens only."""

    def __init__(self):
        super().__init__()
        self.fc = OneLinear().fc

    def loss(self, batch):
        out, mask = self.fc(batch["x"]), batch["attention_mask"].float()
        return ((out[..., 0] - out[..., 1]) * mask).sum() / mask.sum()


def test_wanda_counts_real_tokens_only():
    """Padding holds large values: counted, they would dominate the input norms."""
    x = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [100.0, 100.0]], [[0.0, 1.0], [50.0, 50.0], [70.0, 70.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    got = score(S.Wanda("w"), TokenLinear(), [{"x": x, "attention_mask": mask}])
    # real tokens [1, 2], [3, 0], [0, 1]: column sums of squares [10, 5]; 3 tokens for the bias
    norms = T([math.sqrt(10), math.sqrt(5)])
    want = {"fc.weight": T([[1.0, 2.0], [0.5, 3.0]]) * norms, "fc.bias": T([0.25, 1.0]) * math.sqrt(3)}
    assert_scores(got, want)


def test_wanda_is_forward_only():
    model = OneLinear()
    seen = []
    model.fc.weight.register_hook(lambda g: seen.append(g))
    score(S.Wanda("w"), model, ONE_LINEAR_BATCHES)
    assert seen == [] and model.fc.weight.grad is None


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.55, 1.0])
def test_row_masks_keep_an_exact_count_in_every_row(fraction):
    g = torch.Generator().manual_seed(0)
    scores = {"w": torch.rand(7, 10, generator=g), "b": torch.rand(7, generator=g)}
    masks = M.build_masks(scores, fraction, "row")
    k = M.keep_count(fraction, 10)
    assert masks["w"].sum(1).tolist() == [k] * 7
    assert int(masks["b"].sum()) == M.keep_count(fraction, 7)
    # the kept entries of each row are its k largest
    for row, keep in zip(scores["w"], masks["w"], strict=True):
        assert row[keep].min() >= row[~keep].max() if 0 < k < 10 else True


def test_row_masks_break_ties_by_column():
    masks = M.build_masks({"w": torch.ones(3, 5)}, 0.4, "row")
    assert masks["w"].tolist() == [[True, True, False, False, False]] * 3


class TraceModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc = OneLinear().fc

    def training_step(self, batch, batch_idx):
        out = self.fc(batch["x"])
        return (out[:, 0] - out[:, 1]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_movement_trace_by_hand(tmp_path):
    """``-sum_s W_s * G_s`` with SGD (lr 0.5): W_2 = W - 0.5 G1 = [[0, -2.5], [1.5, 3.5]],
    b_2 = [-0.25, -0.5]. Step 1: -W*G1 = [[-2, 2], [1, 3]]; step 2: -W_2*G2 = [[0, -5], [-3, -7]].
    Bias: -b*g = [-0.25, -1], then [0.25, -0.5]."""
    path = tmp_path / "movement.safetensors"
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[MovementTrace(["fc.weight", "fc.bias"], path)], **QUIET)
    trainer.fit(TraceModule(), train_dataloaders=DataLoader(ONE_LINEAR_BATCHES, batch_size=None))
    assert_scores(load_file(str(path)), {"fc.weight": T([[-2.0, -3.0], [-2.0, -4.0]]), "fc.bias": T([0.0, -1.5])})


NEW = ["snip", "taylor", "fisher_obd", "wanda", "integrated_gradients", "movement"]


@pytest.mark.parametrize("name", NEW)
def test_every_new_score_runs_the_pipeline(make_cfg, tmp_path, name):
    res = run(make_cfg(f"strategy={name}", "ratio=2"))
    assert res["status"] == "complete" and res["strategy"] == name
    masks = load_file(str(tmp_path / "run" / "masks.safetensors"))
    group = (lambda m: m.sum(-1)) if name == "wanda" else (lambda m: m.sum())
    for mask in masks.values():  # exact counts per comparison group
        counts = group(mask.float()).reshape(-1)
        width = mask.shape[-1] if name == "wanda" else mask.numel()
        assert (counts == M.keep_count(res["keep_fraction"], width)).all()
    assert res["scoring_at"] == ("pretrained" if name == "snip" else "finetuned")


def test_movement_scores_are_the_dense_fine_tunes_trace(make_cfg, tmp_path):
    res = run(make_cfg("strategy=movement"))
    (trace,) = (tmp_path / "cache" / "dense").glob("*/movement.safetensors")
    (scores,) = (tmp_path / "cache" / "scores").glob("*/scores.safetensors")
    a, b = load_file(str(trace)), load_file(str(scores))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any((t < 0).any() and (t > 0).any() for t in a.values())  # signed
    steps = 48 // 8  # one dense epoch of 48 examples in batches of 8
    assert res["scoring_batches"] == steps


def test_snip_scores_the_initial_model(make_cfg, tmp_path):
    """SNIP's scores are LayerMagGrad's rule at the pretrained (here: initial) state, not at the
    fine-tuned one, whatever the rewind."""
    snip = run(make_cfg("strategy=snip", "rewind=finetuned"))
    at_start = run(make_cfg("strategy=layer_mag_grad", "scoring.at=pretrained", f"output_dir={tmp_path / 'b'}"))
    tuned = run(make_cfg("strategy=layer_mag_grad", f"output_dir={tmp_path / 'c'}"))
    assert snip["scoring_at"] == at_start["scoring_at"] == "pretrained" and tuned["scoring_at"] == "finetuned"
    mask = {k: load_file(str(p / "masks.safetensors")) for k, p in
            (("snip", tmp_path / "run"), ("start", tmp_path / "b"), ("tuned", tmp_path / "c"))}
    assert all(torch.equal(mask["snip"][k], mask["start"][k]) for k in mask["snip"])
    assert any(not torch.equal(mask["snip"][k], mask["tuned"][k]) for k in mask["snip"])


def test_snip_with_pretrained_rewind_skips_the_dense_fine_tune(make_cfg, tmp_path):
    first = run(make_cfg("strategy=snip", "rewind=pretrained"))
    assert first["dense_skipped"] and "dense" not in first["cache"]["builds"]
    assert first["time_saved_s"] is None and first["dense"] == {}  # nobody ran the dense model
    assert not list((tmp_path / "cache").glob("dense/*/model.safetensors"))
    run(make_cfg("strategy=layer_mag_grad", f"output_dir={tmp_path / 'b'}"))
    (metrics,) = (tmp_path / "cache" / "dense").glob("*/metrics.json")
    second = run(make_cfg("strategy=snip", "rewind=pretrained", "ratio=2", f"output_dir={tmp_path / 'c'}"))
    assert second["time_saved_s"] == json.loads(metrics.read_text())["seconds"] > 0
    assert second["cache"]["hits"] == ["scores"]  # the same scores, another ratio
    # the report takes a run without a dense model: no dense metric, the end-to-end time without it
    from deepcuts.analysis.render.report import write_report

    written = write_report([tmp_path / "run", tmp_path / "c"], tmp_path / "report", html=False)
    assert written["summary"]["dense_mean"].isna().all() and len(written["summary"]) == 2
    times = written["timing"]  # a row per ratio: the two snip runs are two rows
    assert list(times["strategy"]) == ["snip", "snip"] and sorted(times["ratio"]) == [2.0, 3.0]
    assert (times["dense_s"] == 0.0).all() and times["dense_skipped"].all()


def test_movement_cannot_be_scored_at_the_pretrained_model(make_cfg):
    from deepcuts.config.errors import ConfigError

    with pytest.raises(ConfigError, match="scoring.at"):
        run(make_cfg("strategy=movement", "scoring.at=pretrained"))


def test_integrated_gradients_restores_the_weights_after_an_error():
    """A loss that is not finite on a scaled pass stops the scoring; the weights come back."""
    model = MLP()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = []

    def loss(batch):
        calls.append(1)
        value = MLP.loss(model, batch)
        return value * float("inf") if len(calls) == 2 else value

    model.loss = loss
    with pytest.raises(FloatingPointError):
        score(S.IntegratedGradients("ig", steps=4), model, batches())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_movement_trace_uses_the_accumulated_gradient(tmp_path):
    """With accumulate_grad_batches=2 the two batches make one step: W = W_1, G = G1 + G2 (each
    batch's loss is divided by 2 by Lightning, so G = (G1 + G2) / 2). -W*(G1 + G2)/2 =
    -[[1, -2], [0.5, 3]] * [[0, -1], [0, 1]]/2 = [[0, -1], [0, -1.5]]; bias g = [1, -1]: [-0.25, -1]."""
    path = tmp_path / "movement.safetensors"
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         accumulate_grad_batches=2, callbacks=[MovementTrace(["fc.weight", "fc.bias"], path)], **QUIET)
    trainer.fit(TraceModule(), train_dataloaders=DataLoader(ONE_LINEAR_BATCHES, batch_size=None))
    assert_scores(load_file(str(path)), {"fc.weight": T([[0.0, -1.0], [0.0, -1.5]]), "fc.bias": T([-0.25, -1.0])})


def test_movement_trace_leaves_out_steps_with_non_finite_gradients(tmp_path):
    path = tmp_path / "movement.safetensors"
    trace = MovementTrace(["fc.weight", "fc.bias"], path)

    class Overflow(TraceModule):
        """Step 1's gradient overflows; the step is then skipped, as a grad scaler would."""

        def on_after_backward(self):
            if self.global_step == 0:
                self.fc.weight.grad[0, 0] = float("inf")

        def on_before_optimizer_step(self, optimizer):  # runs after the callbacks' hook
            if self.global_step == 0:
                for p in self.parameters():
                    p.grad.zero_()

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[trace], **QUIET)
    trainer.fit(Overflow(), train_dataloaders=DataLoader(ONE_LINEAR_BATCHES, batch_size=None))
    got = load_file(str(path))
    # only step 2 counted: -W*G2 = -[[-2, 4], [1, 6]]; bias -b*g = [-0.25, -1]
    assert_scores(got, {"fc.weight": T([[2.0, -4.0], [-1.0, -6.0]]), "fc.bias": T([-0.25, -1.0])})
    assert trace.skipped == 1 and trace.steps == 1


def test_pretrained_scores_with_finetuned_rewind_train_from_the_dense_weights(make_cfg, tmp_path):
    """Scoring at the initial state must not leave the model there: with rewind=finetuned the
    masked model is the dense model times the masks (epochs_final=0: nothing trained after)."""
    from deepcuts.models.export import load_exported

    run(make_cfg("strategy=snip", "rewind=finetuned", "epochs_final=0", "save_model=true"))
    (dense_entry,) = (tmp_path / "cache" / "dense").glob("*/model.safetensors")
    dense = load_file(str(dense_entry))
    masks = load_file(str(tmp_path / "run" / "masks.safetensors"))
    exported = load_exported(tmp_path / "run" / "pruned_model")
    params = dict(exported.named_parameters())
    name = "bert.encoder.layer.0.attention.self.query.weight"
    got = next(v for k, v in params.items() if k.endswith("encoder.layer.0.attention.self.query.weight"))
    torch.testing.assert_close(got.detach(), dense[name] * masks[name], rtol=0, atol=0)
    # the compact copy of the same model: identical weights, a smaller file
    from deepcuts.models.compact import load_compact

    compact = load_compact(tmp_path / "run" / "pruned_model" / "model.compact.safetensors")
    torch.testing.assert_close(compact[name], dense[name] * masks[name], rtol=0, atol=0)
    sizes = json.loads((tmp_path / "run" / "results.json").read_text())["export_bytes"]
    assert sizes["compact"] < sizes["dense"]


def test_the_trace_can_be_switched_off(make_cfg, tmp_path):
    from deepcuts.config.errors import ConfigError

    run(make_cfg("strategy=layer_mag_weight", "scoring.trace_movement=false", "epochs_final=0"))
    assert list((tmp_path / "cache" / "dense").glob("*/model.safetensors"))
    assert not list((tmp_path / "cache" / "dense").glob("*/movement.safetensors"))
    with pytest.raises(ConfigError, match="trace_movement=true"):
        run(make_cfg("strategy=movement", "scoring.trace_movement=false"))
