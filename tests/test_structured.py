"""Structured pruning: group scores by hand, exact group counts on the parameter budget, removal
equal to masking, the pipeline on the smaller model, and the export that loads it back."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torchmetrics.functional as TF
from omegaconf import OmegaConf
from transformers import AutoModel, BertConfig, BertModel, DistilBertConfig, DistilBertModel

from deepcuts.config.errors import ConfigError
from deepcuts.data.glue import GlueDataModule
from deepcuts.models.export import export_pruned, load_exported
from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.pipeline.flow import run
from deepcuts.pruning import budget as B
from deepcuts.pruning import structured as S
from deepcuts.pruning.masks import apply_masks

BERT = {"layers": "encoder.layer", "query": "attention.self.query", "key": "attention.self.key",
        "value": "attention.self.value", "attn_out": "attention.output.dense",
        "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
DISTIL = {"layers": "transformer.layer", "query": "attention.q_lin", "key": "attention.k_lin",
          "value": "attention.v_lin", "attn_out": "attention.out_lin", "ffn_in": "ffn.lin1", "ffn_out": "ffn.lin2"}


def tiny_bert(layers=2, hidden=8, heads=2, inter=6) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=inter, vocab_size=50), add_pooling_layer=False).eval()


def linears(model, prefix="encoder.layer"):
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix) and "LayerNorm" not in n}


# --- groups and their scores -------------------------------------------------------------------

def test_head_and_neuron_scores_by_hand():
    model = tiny_bert(layers=1)  # hidden 8, 2 heads of 4, 6 neurons
    groups = S.model_groups(model, BERT, 2)
    assert (groups.heads, groups.head_size, groups.neurons) == (2, 4, 6)
    scores = {n: torch.zeros_like(p) for n, p in linears(model).items()}
    pre = "encoder.layer.0."
    scores[pre + "attention.self.query.weight"][5] = 1.0       # a row of head 1: 8 entries
    scores[pre + "attention.self.value.bias"][0] = 2.0         # head 0
    scores[pre + "attention.output.dense.weight"][:, 3] = 0.5  # a column of head 0: 8 entries
    scores[pre + "attention.output.dense.bias"][:] = 100.0     # no group: ignored
    scores[pre + "intermediate.dense.weight"][4] = 1.0         # neuron 4: 8 entries
    scores[pre + "intermediate.dense.bias"][4] = 3.0
    scores[pre + "output.dense.weight"][:, 1] = 0.25           # neuron 1: 8 entries
    heads, neurons = S.group_scores(scores, groups, "sum")
    assert heads.tolist() == [[2.0 + 4.0, 8.0]]
    assert neurons.tolist() == [[0, 2.0, 0, 0, 11.0, 0]]
    heads_mean, neurons_mean = S.group_scores(scores, groups, "mean")
    per_head = 3 * (4 * 8 + 4) + 8 * 4  # q, k, v rows + biases, then the output columns
    assert torch.allclose(heads_mean, heads / per_head)
    assert torch.allclose(neurons_mean, neurons / (8 + 1 + 8))
    assert S.group_sizes(linears(model), groups) == (per_head, 8 + 1 + 8)


def test_plan_masks_cover_a_head_rows_and_columns():
    model = tiny_bert(layers=1)
    groups = S.model_groups(model, BERT, 2)
    plan = S.Plan(heads=[[1]], neurons=[[0, 5]])
    masks = S.plan_masks(plan, linears(model), groups)
    pre = "encoder.layer.0."
    for part in ("query", "key", "value"):
        assert masks[pre + f"attention.self.{part}.weight"][:, 0].tolist() == [False] * 4 + [True] * 4
        assert masks[pre + f"attention.self.{part}.bias"].tolist() == [False] * 4 + [True] * 4
    assert masks[pre + "attention.output.dense.weight"][0].tolist() == [False] * 4 + [True] * 4
    assert masks[pre + "attention.output.dense.bias"].all() and masks[pre + "output.dense.bias"].all()
    assert masks[pre + "intermediate.dense.weight"][:, 0].tolist() == [True, False, False, False, False, True]
    assert masks[pre + "output.dense.weight"][3].tolist() == [True, False, False, False, False, True]


# --- budget and exact counts -------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("keep", [0.2, 0.5, 0.8])
def test_counts_follow_the_parameter_budget(scope, keep):
    model = tiny_bert(layers=3, hidden=16, heads=4, inter=40)
    prunable = linears(model)
    groups = S.model_groups(model, BERT, 4)
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) for i, (n, p) in enumerate(prunable.items())}
    plan = S.plan_groups(scores, prunable, groups, keep, scope=scope)
    head, neuron = S.group_sizes(prunable, groups)
    total = sum(p.numel() for p in prunable.values())
    grouped = 3 * (4 * head + 40 * neuron)
    target = keep * total - (total - grouped)
    kept_heads, kept_neurons = sum(map(len, plan.heads)), sum(map(len, plan.neurons))
    assert kept_heads == max(3, round(target / grouped * 12)) if scope == "global" else \
        all(len(h) == max(1, round(target / grouped * 4)) for h in plan.heads)
    kept = kept_heads * head + kept_neurons * neuron
    assert abs(kept - target) <= 3 * neuron / 2 + 1e-6  # the remainder in whole neurons (per layer)
    masks = S.plan_masks(plan, prunable, groups)
    assert sum(int(m.sum()) for m in masks.values()) == kept + (total - grouped)
    if scope == "layer":
        assert len({len(n) for n in plan.neurons}) == 1


def test_ranking_picks_the_best_groups_ties_to_the_lower_index():
    model = tiny_bert(layers=2, hidden=8, heads=2, inter=6)
    prunable = linears(model)
    groups = S.model_groups(model, BERT, 2)
    scores = {n: torch.ones_like(p) for n, p in prunable.items()}  # every group ties
    for name in ("encoder.layer.1.intermediate.dense.weight",):
        scores[name][3] = 10.0  # neuron 3 of layer 1 stands out
    plan = S.plan_groups(scores, prunable, groups, 0.5, scope="layer")
    assert 3 in plan.neurons[1]
    k = len(plan.neurons[0])
    assert plan.neurons[0] == list(range(k))  # ties: the lowest indices
    glob = S.plan_groups(scores, prunable, groups, 0.5, scope="global")
    assert 3 in glob.neurons[1]


def test_global_scope_keeps_min_heads_in_every_layer():
    model = tiny_bert(layers=3, hidden=16, heads=4, inter=8)
    prunable = linears(model)
    groups = S.model_groups(model, BERT, 4)
    scores = {n: torch.ones_like(p) for n, p in prunable.items()}
    for name in [n for n in scores if n.startswith("encoder.layer.0.attention")]:
        scores[name] *= 100  # every head of layer 0 outranks every other head
    plan = S.plan_groups(scores, prunable, groups, 0.6, scope="global", min_heads=1)
    counts = [len(h) for h in plan.heads]
    assert counts[0] == 4 and min(counts) >= 1  # layer 0's heads first, every floor kept
    assert counts[1] >= counts[2]  # the tied rest: lower flat index (layer 1) first
    plan2 = S.plan_groups(scores, prunable, groups, 0.6, scope="global", min_heads=2)
    assert all(len(h) >= 2 for h in plan2.heads)
    plan0 = S.plan_groups(scores, prunable, groups, 0.3, scope="global", min_heads=0)
    assert [len(h) for h in plan0.heads][1:] == [0, 0]  # without a floor a layer may lose every head


def test_bad_settings_are_refused():
    model = tiny_bert()
    prunable, groups = linears(model), S.model_groups(model, BERT, 2)
    scores = {n: torch.rand_like(p) for n, p in prunable.items()}
    with pytest.raises(ConfigError, match="min_heads"):
        S.plan_groups(scores, prunable, groups, 0.5, min_heads=3)
    with pytest.raises(ConfigError, match="smaller ratio"):
        S.plan_groups(scores, prunable, groups, 0.01)
    with pytest.raises(ConfigError, match="scope"):
        S.plan_groups(scores, prunable, groups, 0.5, scope="row")
    with pytest.raises(ConfigError, match="not prunable"):
        S.plan_groups({k: v for k, v in scores.items() if "key.weight" not in k}, prunable, groups, 0.5)
    nan = {**scores, "encoder.layer.0.output.dense.weight": torch.full((8, 6), float("nan"))}
    with pytest.raises(FloatingPointError):
        S.plan_groups(nan, prunable, groups, 0.5)


# --- removal equals masking --------------------------------------------------------------------

def _removal_matches_masking(model, layout, heads, hidden):
    prunable = linears(model, layout["layers"])
    groups = S.model_groups(model, layout, heads)
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) for i, (n, p) in enumerate(prunable.items())}
    plan = S.plan_groups(scores, prunable, groups, 0.35, scope="global")
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, S.plan_masks(plan, prunable, groups))
    S.remove_groups(removed, plan, groups)
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        a = masked(input_ids=ids, attention_mask=mask).last_hidden_state
        b = removed(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (a - b).abs().max() <= 1e-5
    smaller = sum(p.numel() for p in removed.parameters())
    assert smaller < sum(p.numel() for p in model.parameters())
    return plan, removed


def test_removal_equals_masking_bert():
    plan, removed = _removal_matches_masking(tiny_bert(layers=2, hidden=16, heads=4, inter=24), BERT, 4, 16)
    attention = removed.encoder.layer[0].attention.self
    assert attention.num_attention_heads == len(plan.heads[0])
    assert attention.query.out_features == 4 * len(plan.heads[0])
    assert removed.encoder.layer[1].intermediate.dense.out_features == len(plan.neurons[1])


def test_removal_equals_masking_distilbert():
    torch.manual_seed(0)
    model = DistilBertModel(DistilBertConfig(dim=16, n_layers=2, n_heads=4, hidden_dim=24, vocab_size=50)).eval()
    plan, removed = _removal_matches_masking(model, DISTIL, 4, 16)
    assert removed.transformer.layer[0].attention.n_heads == len(plan.heads[0])


def test_a_layer_without_heads_equals_masking():
    model = tiny_bert(layers=2, hidden=16, heads=4, inter=24)
    prunable, groups = linears(model), S.model_groups(model, BERT, 4)
    plan = S.Plan(heads=[[], [0, 2]], neurons=[list(range(24)), []])  # no heads in 0, no neurons in 1
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, S.plan_masks(plan, prunable, groups))
    S.remove_groups(removed, plan, groups)
    ids = torch.randint(1, 50, (2, 7))
    with torch.no_grad():
        assert (masked(input_ids=ids).last_hidden_state - removed(input_ids=ids).last_hidden_state).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["tiny", "tiny_roberta", "tiny_distilbert", "tiny_electra", "tiny_deberta"])
def test_removal_equals_masking_on_every_architecture(make_cfg, name):
    cfg = make_cfg(f"model={name}", *SMALL, "structure=heads_neurons")
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok).eval()
    prunable = B.prunable_parameters(model, cfg.prune.include)
    structure = S.Structure(model, model.layout, model.arch)
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) for i, (n, p) in enumerate(prunable.items())}
    masks = structure.select(scores, prunable, 0.4, "global")
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, masks)
    structure.remove(removed)
    batch = dict(tok(["a man plays a guitar on stage", "a dog"], ["music", "a cat runs fast"], padding=True,
                     return_tensors="pt"))
    with torch.no_grad():
        assert (masked(**batch) - removed(**batch)).abs().max() <= 1e-5
    assert B.count_parameters(removed) < B.count_parameters(model)


# --- the pipeline and the export ---------------------------------------------------------------

SMALL = ("data=stsb", "data.max_train_samples=24", "data.max_eval_samples=16")


def test_pipeline_removes_groups_and_shares_dense_and_scores(make_cfg, tmp_path):
    masked = run(make_cfg(*SMALL, "strategy=gradcam_shift", "ratio=2", f"output_dir={tmp_path / 'masked'}"))
    assert masked["structure"] is None
    cfg = make_cfg(*SMALL, "strategy=gradcam_shift", "ratio=2", "structure=heads_neurons", "save_model=true")
    res = run(cfg)
    assert res["cache"]["hits"] == ["dense", "scores"]  # a structure changes only the run
    st = res["structure"]
    assert st["kind"] == "heads_neurons" and st["scope"] == "layer"
    assert len(st["heads_kept"]) == 2 and min(st["heads_kept"]) >= 1
    # the parameter budget is the unstructured one: the same ratio, to within a neuron per layer
    assert abs(res["kept_prunable"] - masked["kept_prunable"]) <= 2 * (2 * 64 + 1)
    assert res["total_parameters"] == masked["total_parameters"]
    assert res["achieved_ratio"] == pytest.approx(res["total_parameters"] / res["nonzero_parameters"])
    assert res["achieved_ratio"] == pytest.approx(masked["achieved_ratio"], rel=0.01)
    out = tmp_path / "run"
    stored = json.loads((out / "results.json").read_text())
    assert stored["export_bytes"]["compact"] is None
    exported = load_exported(out / "pruned_model")
    assert sum(p.numel() for p in exported.encoder.parameters()) < res["total_parameters"]
    enc_cfg = json.loads((out / "pruned_model" / "config.json").read_text())
    assert enc_cfg["deepcuts_structure"]["heads_kept"] == st["heads_kept"]
    # the export reproduces the run's final dev metric
    tok = load_tokenizer(cfg.model.tokenizer)
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed)
    data.setup()
    preds, labels = [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            labels.append(batch.pop("labels"))
            preds.append(exported(**batch))
    pearson = float(TF.pearson_corrcoef(torch.cat(preds), torch.cat(labels).float()))
    assert pearson == pytest.approx(res["pruned_last_epoch"]["pearson"], abs=1e-5)


def test_structured_export_round_trip_same_outputs(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL, "structure=heads_neurons")
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok).eval()
    structure = S.Structure(model, model.layout, model.arch)
    prunable = B.prunable_parameters(model, cfg.prune.include)
    scores = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(i)) for i, (n, p) in enumerate(prunable.items())}
    structure.select(scores, prunable, 0.5, "global")
    structure.remove(model)
    folder = export_pruned(model, tmp_path / "export", tok)
    reloaded = load_exported(folder)
    batch = dict(tok(["a man plays a guitar", "a dog"], ["music", "a cat runs fast"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        want = model(**batch)
        got = reloaded(**batch)
    assert (want - got).abs().max() <= 1e-5
    with pytest.raises(Exception):  # noqa: B017 - transformers' own loader must not take it silently
        AutoModel.from_pretrained(folder)


@pytest.mark.parametrize("overrides, match", [
    (("structure.min_heads=-1",), "min_heads"),
    (("+structure.heads=2",), "unknown key"),
    (("structure.group_score=max",), "group_score"),
    (("strategy=shuffled",), "random"),
    (("model=tiny_deberta", "model.config.share_att_key=false"), "share_att_key"),
    (("ratio=3",), "smaller ratio"),
    (("structure.scope=globl",), "structure.scope"),
    (("model=tiny_deberta", "structure.min_heads=0", "ratio=2"), "min_heads=0"),
    (("strategy=gradcam_shift", "structure.group_score=native", "prune.exclude=[bert.encoder.layer.0.intermediate.dense]",
      ), "not prunable"),  # the tiny model's heads are too large a share for c = 3
    (("prune.exclude=[bert.encoder.layer.*.attention.self.key]",), "not prunable"),
])
def test_structure_config_errors_before_training(make_cfg, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run(make_cfg(*SMALL, "structure=heads_neurons", *overrides))
    assert not (tmp_path / "cache" / "dense").exists()


def test_native_cam_cut_unit_scores_by_hand(make_cfg, tmp_path):
    """Cam-Cut's channel weight U_k = sum_t |g_b,t,k (a_bar_t,k + lambda)|: the bias score
    sum_t |b_k g_b,t,k (a_bar_t,k + lambda)| is |b_k| U_k exactly, whatever the batches; the plan is
    the one its head (q, k, v units summed) and neuron (FFN input unit) scores give."""
    cfg = make_cfg(*SMALL, "strategy=gradcam_shift", "structure=heads_neurons", "structure.group_score=native",
                   "rewind=finetuned", "epochs_final=0", "ratio=2")
    res = run(cfg)
    entry = next((tmp_path / "cache" / "scores").glob("*/scores.safetensors")).parent
    from deepcuts.cache.store import read_tensors
    scores, units = read_tensors(entry / "scores.safetensors"), read_tensors(entry / "units.safetensors")
    dense = read_tensors(next((tmp_path / "cache" / "dense").glob("*/model.safetensors")))
    assert set(units) == {n.removesuffix(".bias") for n in scores if n.endswith(".bias")}
    for module, unit in units.items():
        bias = dense[f"{module}.bias"].abs()
        assert torch.allclose(unit * bias, scores[f"{module}.bias"], rtol=1e-5, atol=1e-12)
    layout = dict(res["layout"])
    groups = S.Groups([f"{layout['layers']}.{i}" for i in range(2)], layout, 2, 16, 64)  # tiny: 2 x 16 = 32
    heads, neurons = S.native_scores(units, groups)
    q = units[f"{layout['layers']}.0.{layout['query']}"] + units[f"{layout['layers']}.0.{layout['key']}"] \
        + units[f"{layout['layers']}.0.{layout['value']}"]
    assert torch.allclose(heads[0].float(), q.reshape(2, 16).sum(1))
    assert torch.equal(neurons[1].float(), units[f"{layout['layers']}.1.{layout['ffn_in']}"])
    kept = sorted(torch.sort(neurons[0], descending=True, stable=True).indices[: res["structure"]["neurons_kept"][0]].tolist())
    assert res["structure"]["neurons"][0] == kept


def test_native_needs_a_strategy_with_unit_scores(make_cfg):
    with pytest.raises(ConfigError, match="no per-unit score"):
        run(make_cfg(*SMALL, "strategy=layer_mag_grad", "structure=heads_neurons", "structure.group_score=native"))


def test_a_reused_output_folder_leaves_no_stale_export(make_cfg, tmp_path):
    """Masked, then structured into the same folder: the export is replaced whole (no compact file
    of the masked model left to be counted or loaded)."""
    run(make_cfg(*SMALL, "ratio=2", "save_model=true", "epochs_final=0"))
    assert (tmp_path / "run" / "pruned_model" / "model.compact.safetensors").is_file()
    run(make_cfg(*SMALL, "ratio=2", "save_model=true", "epochs_final=0", "structure=heads_neurons"))
    export = tmp_path / "run" / "pruned_model"
    assert not (export / "model.compact.safetensors").exists()
    assert not list(tmp_path.joinpath("run").glob(".pruned_model*"))
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["export_bytes"]["dense"] == sum(f.stat().st_size for f in export.glob("*.safetensors"))
    assert "deepcuts_structure" in json.loads((export / "config.json").read_text())
