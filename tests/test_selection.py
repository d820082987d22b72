"""Model selection that never touches the reported set, and the shuffled-mask control."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from deepcuts.data.glue import GlueDataModule
from deepcuts.data.tsv import holdout_indices
from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.pipeline.flow import run
from deepcuts.training.fine_tune import FineTuneSettings, fine_tune


def test_holdout_is_stratified_seeded_and_disjoint():
    labels = [0] * 60 + [1] * 40
    train, held = holdout_indices(labels, {"type": "classification"}, 0.1, seed=3)
    assert sorted(train + held) == list(range(100)) and not set(train) & set(held)
    assert [labels[i] for i in held].count(0) == 6 and [labels[i] for i in held].count(1) == 4
    assert holdout_indices(labels, {"type": "classification"}, 0.1, seed=3)[1] == held
    assert holdout_indices(labels, {"type": "classification"}, 0.1, seed=4)[1] != held
    scores = [i / 20 for i in range(100)]  # regression: five equal-count score bins, 2 from each
    _, held = holdout_indices(scores, {"type": "regression"}, 0.1, seed=0)
    assert sorted(int(scores[i] // 1) for i in held) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def _model_and_data(make_cfg, *overrides, holdout=None):
    cfg = make_cfg("data=stsb", *overrides)
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=0, holdout_fraction=holdout)
    return cfg, model, data


@pytest.mark.parametrize("selection", ["last", "dev", "holdout"])
def test_each_rule_keeps_the_epoch_it_names(make_cfg, tmp_path, selection):
    cfg, model, data = _model_and_data(
        make_cfg, f"selection={selection}", "optimizer.lr=3e-3", holdout=0.25 if selection == "holdout" else None
    )
    out = fine_tune(model, data, FineTuneSettings.from_cfg(cfg), 3, tmp_path / "ft", "pruned")
    history = out["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2] and out["last"] == history[-1]
    if selection == "last":
        assert out["best_epoch"] is None and out["selected"] == history[-1]
        assert "holdout" not in history[0]
        return
    values = [h["holdout"]["pearson"] if selection == "holdout" else h["pearson"] for h in history]
    assert out["best_epoch"] == values.index(max(values)) and out["selected"] == history[out["best_epoch"]]
    if selection == "holdout":  # ~25% of the 48 train examples (rounded per score bin), held out
        assert len(data.splits["holdout"]) + len(data.splits["train"]) == 48
        assert len(data.splits["holdout"]) in (12, 13)
    # the model holds the selected epoch's weights: re-evaluating it gives the selected dev metrics
    again = fine_tune(model, data, FineTuneSettings.from_cfg(cfg), 0, tmp_path / "eval", "pruned", selection="last")
    assert again["selected"]["pearson"] == pytest.approx(out["selected"]["pearson"], abs=1e-5)


@pytest.mark.parametrize(("selection", "want"), [("holdout", 0), ("dev", 1), ("last", None)])
def test_each_rule_keeps_its_own_epochs_weights(make_cfg, tmp_path, selection, want):
    """Scripted metrics: the held-out slice is best at epoch 0, dev at epoch 1, the last epoch is
    2. Each rule must report and reload its own epoch (a rule that read the other set, or did not
    reload the checkpoint, fails)."""
    scripted = {"holdout/pearson": [0.9, 0.1, 0.2], "val/pearson": [0.1, 0.9, 0.5]}
    cfg, model, data = _model_and_data(make_cfg, f"selection={selection}", "optimizer.lr=3e-3", holdout=0.25)
    heads = []

    def scripted_end():
        for key, values in scripted.items():
            model.log(key, values[model.current_epoch])
        heads.append(model.head.weight.detach().clone())

    model.on_validation_epoch_end = scripted_end
    out = fine_tune(model, data, FineTuneSettings.from_cfg(cfg), 3, tmp_path / "ft", "pruned")
    kept = 2 if want is None else want
    assert out["best_epoch"] == want and out["selected"]["epoch"] == kept
    assert out["selected"]["pearson"] == pytest.approx(scripted["val/pearson"][kept])  # dev, reported
    assert len({float(h.sum()) for h in heads}) == 3  # the head moved every epoch
    assert torch.equal(model.head.weight, heads[kept])


def test_constant_predictions_finish_with_the_last_epoch(make_cfg, tmp_path, caplog):
    """A collapsed STS-B model has NaN Pearson in every epoch: no crash, best_epoch null."""
    cfg, model, data = _model_and_data(make_cfg, "selection=dev", "optimizer.lr=0")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()  # 5 * sigmoid(0) = 2.5 for every pair
    with caplog.at_level(logging.WARNING, logger="deepcuts.training.fine_tune"):
        out = fine_tune(model, data, FineTuneSettings.from_cfg(cfg), 2, tmp_path / "ft", "pruned")
    assert all(h["pearson"] != h["pearson"] for h in out["history"])  # NaN every epoch
    assert out["best_epoch"] is None and out["selected"] == out["history"][-1]
    assert "NaN in every epoch" in caplog.text


def test_results_record_the_rule_and_both_epochs(make_cfg, tmp_path):
    results = run(make_cfg("data=sst2", "selection=holdout", "epochs_final=2", "epochs_dense=2"))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["selection"] == results["selection"] == "holdout"
    assert saved["pruned_last_epoch"] == {k: v for k, v in saved["history"]["pruned"][-1].items()
                                          if k not in ("epoch", "step", "holdout")}
    assert saved["dense_last_epoch"].keys() == saved["dense"].keys()
    assert all("holdout" in h for h in saved["history"]["pruned"])


def test_unknown_rule_fails_before_training(make_cfg, tmp_path):
    from deepcuts.config.errors import ConfigError

    with pytest.raises(ConfigError, match="selection='best'"):
        run(make_cfg("selection=best"))
    with pytest.raises(ConfigError, match="selection_fraction"):
        run(make_cfg("selection=holdout", "selection_fraction=1.5"))
    assert not (tmp_path / "cache" / "dense").exists()


def test_shuffled_permutes_each_tensor_of_the_source_masks(make_cfg, tmp_path):
    source = run(make_cfg("data=sst2", "strategy=global_gradcam_shift", f"output_dir={tmp_path / 'src'}"))
    shuffled = run(make_cfg("data=sst2", "strategy=shuffled", "strategy.of=global_gradcam_shift",
                            f"output_dir={tmp_path / 'sh'}"))
    assert shuffled["strategy"] == "shuffled_global_gradcam_shift" and shuffled["control"] is True
    assert source["control"] is False and shuffled["scope"] == "global"
    assert shuffled["cache"]["hits"] == ["dense", "scores"]  # the source's scores, not new ones
    a = load_file(str(tmp_path / "src" / "masks.safetensors"))
    b = load_file(str(tmp_path / "sh" / "masks.safetensors"))
    assert a.keys() == b.keys()
    for name in a:  # per-tensor counts of the global masks kept, positions changed
        assert int(a[name].sum()) == int(b[name].sum())
    assert sum(int((a[n] != b[n]).sum()) for n in a) > 0.5 * sum(int(a[n].sum()) for n in a)
    again = run(make_cfg("data=sst2", "strategy=shuffled", "strategy.of=global_gradcam_shift",
                         f"output_dir={tmp_path / 'sh2'}", "resume=false"))
    c = load_file(str(tmp_path / "sh2" / "masks.safetensors"))
    assert all(torch.equal(b[n], c[n]) for n in b) and again["pruned"] == shuffled["pruned"]


def test_shuffled_of_an_unknown_strategy_fails_clearly(make_cfg):
    from deepcuts.config.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy.of='camcut' names no strategy"):
        run(make_cfg("strategy=shuffled", "strategy.of=camcut"))
    with pytest.raises(ConfigError, match="must name another strategy"):
        run(make_cfg("strategy=shuffled", "strategy.of=3"))
    with pytest.raises(ConfigError, match="must name another strategy"):
        run(make_cfg("strategy=shuffled", "strategy.of=shuffled"))
