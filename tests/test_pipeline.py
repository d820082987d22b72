"""The whole pipeline from the composed Hydra config, on the tiny BERT and real GLUE rows."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.pipeline.flow import run
from deepcuts.pruning import budget as B

CONTRACT = {
    "data", "model", "strategy", "ratio", "ratio_basis", "seed", "keep_fraction", "achieved_ratio",
    "prunable_sparsity", "dense", "pruned", "timings_s", "status",
}


# BERT-base's counts (README): the default ratio_basis, so f = (T/c - N)/P on any model
T_BERT, P_BERT = 109_483_778, 85_608_192
N_BERT = T_BERT - P_BERT


def bert_base_fraction(ratio):
    return (T_BERT / ratio - N_BERT) / P_BERT


def prunable_shapes(model):
    """Weights and biases of the encoder Linears and the pooler, from the model itself."""
    return {
        f"{name}.{kind}": tuple(getattr(module, kind).shape)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (name.startswith("bert.encoder.layer.") or name == "bert.pooler.dense")
        for kind in ("weight", "bias")
    }


def logged_epochs(path):
    """Lightning's CSV log (not results.json): each validation epoch's ``val/`` metrics."""
    epochs = {}
    with open(path) as fh:
        for row in csv.DictReader(fh):
            metrics = {k[len("val/"):]: float(v) for k, v in row.items() if k.startswith("val/") and v != ""}
            if metrics:
                epochs.setdefault(int(row["epoch"]), {}).update(metrics)
    return epochs


def test_run_writes_the_outputs_contract_and_reuses_shared_stages(make_cfg, tmp_path):
    cfg = make_cfg("data=stsb", "strategy=gradcam_shift", "ratio=3", "save_model=true")
    results = run(cfg)
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    assert CONTRACT <= saved.keys() and saved["status"] == "complete"
    assert saved["keep_fraction"] == pytest.approx(bert_base_fraction(3), rel=1e-12)  # 0.1474
    assert {"pearson", "spearmanr", "mse"} <= saved["dense"].keys() <= saved["pruned"].keys() | {"loss"}
    assert saved["scoring_batches"] == 3

    # masks: one per prunable tensor of the model, its shape, the exact layer-wise count
    model = build_model(cfg, load_tokenizer(cfg.model.tokenizer))
    shapes = prunable_shapes(model)
    masks = load_file(str(out / "masks.safetensors"))
    assert len(shapes) == 26 and masks.keys() == shapes.keys()
    assert all(m.dtype == torch.bool and tuple(m.shape) == shapes[n] for n, m in masks.items())
    for m in masks.values():
        assert int(m.sum()) == int(bert_base_fraction(3) * m.numel() + 0.5)
    rows = {r["parameter"]: r for r in csv.DictReader(open(out / "sparsity.csv"))}
    assert rows.keys() == masks.keys()
    for name, m in masks.items():
        assert (int(rows[name]["numel"]), int(rows[name]["kept"])) == (m.numel(), int(m.sum()))
        assert float(rows[name]["kept_fraction"]) == pytest.approx(int(m.sum()) / m.numel())

    # counts, from the model's shapes and the saved masks
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert saved["total_parameters"] == total
    assert saved["prunable_parameters"] == prunable == sum(math.prod(s) for s in shapes.values())
    assert saved["kept_prunable"] == kept
    assert saved["prunable_sparsity"] == pytest.approx(1 - kept / prunable)
    # non-zero: counted on the exported weights. The masks alone only bound it: some kept or
    # never-pruned entries are exact zeros too (the [PAD] embedding row; biases whose every
    # downstream weight was pruned get no gradient and stay at their initial 0).
    from transformers import BertModel

    exported = BertModel.from_pretrained(out / "pruned_model")
    head = load_file(str(out / "pruned_model" / "head.safetensors"))
    tensors = [p.detach() for p in exported.parameters()] + list(head.values())
    assert sum(t.numel() for t in tensors) == total
    nonzero = sum(int(torch.count_nonzero(t)) for t in tensors)
    assert nonzero <= total - (prunable - kept)
    assert saved["nonzero_parameters"] == nonzero
    assert saved["achieved_ratio"] == pytest.approx(total / nonzero, rel=1e-12)

    # the dev metrics reported are the ones Lightning logged (one epoch each, the last kept)
    for stage in ("dense", "pruned"):
        logged = logged_epochs(out / "logs" / stage / "metrics.csv")
        assert list(logged) == [h["epoch"] for h in saved["history"][stage]] == [0]
        assert saved[stage] == logged[0]
        assert {k: v for k, v in saved["history"][stage][0].items() if k not in ("epoch", "step")} == logged[0]
    assert results["cache"]["builds"] == ["dense", "scores"]

    # Another ratio and the global variant: one dense fine-tune and one scoring pass, reused.
    again = run(make_cfg("data=stsb", "strategy=global_gradcam_shift", "ratio=2", f"output_dir={tmp_path / 'run2'}"))
    assert again["cache"]["hits"] == ["dense", "scores"] and again["cache"]["builds"] == []
    assert not (tmp_path / "run2" / "logs" / "dense").exists()  # no second dense fine-tune ...
    assert again["dense"] == logged_epochs(out / "logs" / "dense" / "metrics.csv")[0]  # ... the first one's metrics
    assert again["keep_fraction"] == pytest.approx(bert_base_fraction(2), rel=1e-12)  # 0.3606
    glob = load_file(str(tmp_path / "run2" / "masks.safetensors"))
    assert glob.keys() == shapes.keys()
    total_prunable = sum(m.numel() for m in glob.values())
    assert sum(int(m.sum()) for m in glob.values()) == int(bert_base_fraction(2) * total_prunable + 0.5)
    # one global threshold: tensors keep different fractions (layer-wise masks would not)
    fractions = [m.float().mean().item() for m in glob.values()]
    assert max(fractions) - min(fractions) > 0.1


def test_rewind_restores_the_pretrained_weights_and_the_same_head(make_cfg, tmp_path):
    """The classic bug keeps the initial state_dict by reference, so 'rewinding' restores the
    fine-tuned weights. With no masked epochs, the pruned model must equal initial * mask."""
    cfg = make_cfg("data=sst2", "strategy=layer_mag_weight", "epochs_final=0", "save_model=true", "optimizer.lr=1e-3")
    results = run(cfg)
    out = tmp_path / "run"
    initial = build_model(cfg, load_tokenizer(cfg.model.tokenizer))
    masks = load_file(str(out / "masks.safetensors"))
    from transformers import BertModel

    exported = BertModel.from_pretrained(out / "pruned_model")
    init_params = dict(initial.bert.named_parameters())
    for name, p in exported.named_parameters():
        full = f"bert.{name}"
        want = init_params[name].detach() * masks[full] if full in masks else init_params[name].detach()
        torch.testing.assert_close(p, want, rtol=0, atol=0, msg=name)
    head = load_file(str(out / "pruned_model" / "head.safetensors"))
    torch.testing.assert_close(head["weight"], initial.head.weight.detach(), rtol=0, atol=0)
    # and the dense fine-tune did move the weights, so restoring them by reference would fail above
    from safetensors.torch import load_file as load

    (dense_file,) = (tmp_path / "cache" / "dense").glob("*/model.safetensors")
    dense = load(str(dense_file))
    moved = [n for n, p in init_params.items() if not torch.equal(dense[f"bert.{n}"], p.detach())]
    assert "encoder.layer.0.attention.self.query.weight" in moved
    assert results["cache"]["builds"] == ["dense", "scores"]


def test_export_has_exact_zeros_and_the_recorded_ratio(make_cfg, tmp_path):
    cfg = make_cfg("data=stsb", "strategy=layer_mag_grad", "save_model=true")
    results = run(cfg)
    out = tmp_path / "run"
    masks = load_file(str(out / "masks.safetensors"))
    from transformers import BertModel

    exported = BertModel.from_pretrained(out / "pruned_model")
    params = dict(exported.named_parameters())
    leaked = sum(int(torch.count_nonzero(params[n[len("bert."):]][~m])) for n, m in masks.items())
    assert leaked == 0
    head = load_file(str(out / "pruned_model" / "head.safetensors"))
    total = B.count_parameters(exported) + sum(t.numel() for t in head.values())
    nonzero = B.count_nonzero(exported) + sum(int(torch.count_nonzero(t)) for t in head.values())
    assert total == results["total_parameters"]
    assert total / nonzero == pytest.approx(results["achieved_ratio"])


def test_finished_run_is_skipped_on_relaunch(make_cfg, tmp_path):
    cfg = make_cfg("data=stsb", "strategy=random")
    first = run(cfg)
    written = [tmp_path / "run" / "results.json", tmp_path / "run" / "logs" / "pruned" / "metrics.csv"]
    stamps = [f.stat().st_mtime_ns for f in written]
    assert run(cfg) == first
    assert [f.stat().st_mtime_ns for f in written] == stamps  # neither retrained nor rewritten


def test_bad_ratio_fails_before_any_output(make_cfg, tmp_path):
    from deepcuts.config.errors import ConfigError

    with pytest.raises(ConfigError, match="4.586"):
        run(make_cfg("ratio=5"))
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "cache" / "dense").exists()


def test_fine_tuning_runs_with_dropout_on(make_cfg, tmp_path):
    """from_pretrained returns eval mode and Lightning keeps module modes: training must switch."""
    from omegaconf import OmegaConf

    from deepcuts.data.glue import GlueDataModule
    from deepcuts.training.fine_tune import FineTuneSettings, fine_tune

    cfg = make_cfg("data=stsb")
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    model.eval()
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=0)
    seen = []
    model.bert.embeddings.dropout.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    fine_tune(model, data, FineTuneSettings.from_cfg(cfg), 1, tmp_path / "ft", "dense", selection="last")
    assert seen and seen[0] is True


def test_relaunched_job_in_a_new_folder_reuses_the_finished_run(make_cfg, tmp_path):
    """A relaunched multirun gets a new Hydra folder; the finished job is copied, not redone."""
    first = run(make_cfg("data=stsb", "strategy=layer_mag_weight"))
    trained = logged_epochs(tmp_path / "run" / "logs" / "pruned" / "metrics.csv")
    assert list(trained) == [0] and first["pruned"] == trained[0]
    second = run(make_cfg("data=stsb", "strategy=layer_mag_weight", f"output_dir={tmp_path / 'again'}"))
    assert second["cache"] == {"hits": ["run"], "builds": []}
    assert not (tmp_path / "again" / "logs").exists()  # nothing was trained again ...
    assert json.loads((tmp_path / "again" / "results.json").read_text())["pruned"] == trained[0]  # ... the first job's numbers
    a, b = load_file(str(tmp_path / "again" / "masks.safetensors")), load_file(str(tmp_path / "run" / "masks.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    redo = run(make_cfg("data=stsb", "strategy=layer_mag_weight", "resume=false", f"output_dir={tmp_path / 'redo'}"))
    assert "run" not in redo["cache"]["hits"]
    # really redone: a masked fine-tune of its own, which gives the first job's numbers again
    assert logged_epochs(tmp_path / "redo" / "logs" / "pruned" / "metrics.csv") == trained
    assert redo["pruned"] == trained[0]


def test_evaluation_only_dense_stage_then_masked_fine_tune(make_cfg):
    """epochs_dense=0 validates under inference_mode, then fit validates under no_grad: the
    metric states made by the first must not break the second."""
    results = run(make_cfg("data=stsb", "epochs_dense=0", "epochs_final=1"))
    assert [h["epoch"] for h in results["history"]["dense"]] == [0]
    assert [h["step"] for h in results["history"]["dense"]] == [0]
    assert [h["step"] for h in results["history"]["pruned"]] == [6]
