"""The whole pipeline from the composed Hydra config, on the tiny BERT and real GLUE rows."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from deepcuts import budget as B
from deepcuts.model import load_tokenizer
from deepcuts.pipeline import build_model, run

CONTRACT = {
    "data", "model", "strategy", "ratio", "ratio_basis", "seed", "keep_fraction", "achieved_ratio",
    "prunable_sparsity", "dense", "pruned", "timings_s", "status",
}


def test_run_writes_the_outputs_contract_and_reuses_shared_stages(make_cfg, tmp_path):
    cfg = make_cfg("data=stsb", "strategy=gradcam_shift", "ratio=3")
    results = run(cfg)
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    assert CONTRACT <= saved.keys() and saved["status"] == "complete"
    assert saved["keep_fraction"] == pytest.approx(0.1474, abs=1e-4)
    assert {"pearson", "spearmanr", "mse"} <= saved["dense"].keys() <= saved["pruned"].keys() | {"loss"}
    assert saved["scoring_batches"] == 3
    masks = load_file(str(out / "masks.safetensors"))
    assert len(masks) == 26 and all(m.dtype == torch.bool for m in masks.values())
    assert "bert.encoder.layer.0.attention.self.query.weight" in masks
    for m in masks.values():  # layer-wise: exact count in every tensor
        assert int(m.sum()) == int(saved["keep_fraction"] * m.numel() + 0.5)
    rows = list(csv.DictReader(open(out / "sparsity.csv")))
    assert len(rows) == 26
    assert saved["nonzero_parameters"] <= saved["total_parameters"] - (saved["prunable_parameters"] - saved["kept_prunable"])
    assert saved["achieved_ratio"] == pytest.approx(saved["total_parameters"] / saved["nonzero_parameters"])
    assert (out / "logs" / "pruned" / "metrics.csv").is_file()
    assert results["cache"]["builds"] == ["dense", "scores"]

    # Another ratio and the global variant: one dense fine-tune and one scoring pass, reused.
    again = run(make_cfg("data=stsb", "strategy=global_gradcam_shift", "ratio=2", f"output_dir={tmp_path / 'run2'}"))
    assert again["cache"]["hits"] == ["dense", "scores"] and again["cache"]["builds"] == []
    assert again["dense"] == saved["dense"]
    glob = load_file(str(tmp_path / "run2" / "masks.safetensors"))
    total = sum(m.numel() for m in glob.values())
    assert sum(int(m.sum()) for m in glob.values()) == int(again["keep_fraction"] * total + 0.5)
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
    stamp = (tmp_path / "run" / "results.json").stat().st_mtime_ns
    assert run(cfg) == first
    assert (tmp_path / "run" / "results.json").stat().st_mtime_ns == stamp


def test_bad_ratio_fails_before_any_output(make_cfg, tmp_path):
    from deepcuts.errors import ConfigError

    with pytest.raises(ConfigError, match="4.586"):
        run(make_cfg("ratio=5"))
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "cache" / "dense").exists()


def test_fine_tuning_runs_with_dropout_on(make_cfg, tmp_path):
    """from_pretrained returns eval mode and Lightning keeps module modes: training must switch."""
    from omegaconf import OmegaConf

    from deepcuts.data import GlueDataModule
    from deepcuts.training import fine_tune

    cfg = make_cfg("data=stsb")
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    model.eval()
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=0)
    seen = []
    model.bert.embeddings.dropout.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    fine_tune(model, data, cfg, 1, tmp_path / "ft", "dense", select_best=False)
    assert seen and seen[0] is True


def test_relaunched_job_in_a_new_folder_reuses_the_finished_run(make_cfg, tmp_path):
    """A relaunched multirun gets a new Hydra folder; the finished job is copied, not redone."""
    first = run(make_cfg("data=stsb", "strategy=layer_mag_weight"))
    second = run(make_cfg("data=stsb", "strategy=layer_mag_weight", f"output_dir={tmp_path / 'again'}"))
    assert second["cache"] == {"hits": ["run"], "builds": []}
    assert second["pruned"] == first["pruned"]
    a, b = load_file(str(tmp_path / "again" / "masks.safetensors")), load_file(str(tmp_path / "run" / "masks.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    redo = run(make_cfg("data=stsb", "strategy=layer_mag_weight", "resume=false", f"output_dir={tmp_path / 'redo'}"))
    assert "run" not in redo["cache"]["hits"]


def test_evaluation_only_dense_stage_then_masked_fine_tune(make_cfg):
    """epochs_dense=0 validates under inference_mode, then fit validates under no_grad: the
    metric states made by the first must not break the second."""
    results = run(make_cfg("data=stsb", "epochs_dense=0", "epochs_final=1"))
    assert [h["epoch"] for h in results["history"]["dense"]] == [0]
    assert [h["step"] for h in results["history"]["dense"]] == [0]
    assert [h["step"] for h in results["history"]["pruned"]] == [6]
