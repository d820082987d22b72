"""Every architecture by config: the tiny RoBERTa, DistilBERT, ELECTRA and DeBERTa-v2 run the whole
pipeline, their masks are analysed per head through the layout, and their exports load back; a
checkpoint of the wrong architecture or with missing weights is refused; pooling is checked by hand."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from deepcuts.analysis import mask_iou as MI
from deepcuts.config.errors import ConfigError
from deepcuts.models.encoders import random_encoder, unexplained_keys
from deepcuts.models.export import export_pruned, load_exported
from deepcuts.models.module import build_model, load_tokenizer, pool
from deepcuts.pipeline.flow import run
from deepcuts.pruning import budget as B
from deepcuts.pruning import masks as M

# name -> (arch, encoder class, backbone, layer list, pooling, encoder inputs, Linears per layer)
TINY = {
    "tiny_roberta": ("roberta", "RobertaModel", "roberta", "roberta.encoder.layer", "first",
                     ("input_ids", "attention_mask")),
    "tiny_distilbert": ("distilbert", "DistilBertModel", "distilbert", "distilbert.transformer.layer",
                        "first", ("input_ids", "attention_mask")),
    "tiny_electra": ("electra", "ElectraModel", "electra", "electra.encoder.layer", "first",
                     ("input_ids", "attention_mask", "token_type_ids")),
    "tiny_deberta": ("deberta-v2", "DebertaV2Model", "deberta", "deberta.encoder.layer", "first",
                     ("input_ids", "attention_mask")),  # type_vocab_size 0: no token types passed
}
LAYERS, HEADS = 2, 2  # every tiny config
ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
SMALL = ("data=stsb", "data.max_train_samples=24", "data.max_eval_samples=16")
# the second strategy on each dense model: a CAM strategy
SECOND = {"tiny_roberta": "gradcam_shift", "tiny_distilbert": "gradcam_shift",
          "tiny_electra": "gradcam_shift", "tiny_deberta": "gradcam_shift"}


def tiny_model(make_cfg, name: str, *overrides: str):
    cfg = make_cfg(f"model={name}", "data=stsb", *overrides)
    tok = load_tokenizer(cfg.model.tokenizer)
    return cfg, tok, build_model(cfg, tok)


def padded_batch(tok):
    """Two sentence pairs of different lengths: the shorter one is padded."""
    batch = tok(["a man is playing a guitar on the stage tonight", "a dog"], ["music", "a cat runs"],
                padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    return dict(batch)


# --- the model each YAML builds ----------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_each_yaml_builds_its_architecture(make_cfg, name):
    arch, cls, backbone, layers, pooling, inputs = TINY[name]
    cfg, tok, model = tiny_model(make_cfg, name)
    assert type(model.encoder).__name__ == cls and model.arch == arch
    assert getattr(model, backbone) is model.encoder and model.backbone == backbone
    assert model.pooling == pooling and model.inputs == inputs
    assert model.layout == dict(cfg.model.layout) and model.layout["layers"] == layers
    # parameter names follow transformers' conventions; no pooler anywhere (it would be dead)
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(f"{backbone}.") or n.startswith("head.") for n in names)
    assert not any(".pooler." in n for n in names)
    # the prunable set: exactly the 6 Linears of each layer, as the layout names them
    prunable = B.prunable_parameters(model, cfg.prune.include)
    linears = {f"{layers}.{i}.{model.layout[r]}" for i in range(LAYERS) for r in ROLES}
    assert set(prunable) == {f"{lin}.{kind}" for lin in linears for kind in ("weight", "bias")}
    assert model.encoder.config.num_attention_heads == HEADS  # what results.json records
    batch = padded_batch(tok)  # with token_type_ids: the model passes on only its inputs
    out = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_electra_embedding_projection_is_not_prunable(make_cfg):
    cfg, _, model = tiny_model(make_cfg, "tiny_electra")
    assert isinstance(model.electra.embeddings_project, torch.nn.Linear)  # embedding_size 16 < 32
    assert not any("embeddings_project" in n for n in B.prunable_parameters(model, cfg.prune.include))


def test_bert_keeps_its_pooler_and_names(make_cfg):
    cfg, _, model = tiny_model(make_cfg, "tiny")
    assert model.bert is model.encoder and model.pooling == "pooler"
    assert model.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert "bert.pooler.dense.weight" in B.prunable_parameters(model, cfg.prune.include)


def test_one_token_type_means_no_token_type_ids(make_cfg):
    """RoBERTa's forward takes token_type_ids but has one type: with the tokenizer's inputs
    (null), a BERT tokenizer's sentence-pair ids would index out of range, so they are dropped."""
    _, tok, model = tiny_model(make_cfg, "tiny_roberta", "model.inputs=null")
    assert model.inputs == ("input_ids", "attention_mask")
    pair = tok(["a first sentence"], ["and a second one"], return_tensors="pt")
    assert pair["token_type_ids"].max() == 1
    model(pair["input_ids"], pair["attention_mask"], pair["token_type_ids"])  # no IndexError


def test_inputs_follow_the_encoder_signature(make_cfg):
    """DistilBERT's forward takes no token_type_ids, even when the YAML names them."""
    _, _, model = tiny_model(make_cfg, "tiny_distilbert", "model.inputs=[input_ids,attention_mask,token_type_ids]")
    assert model.inputs == ("input_ids", "attention_mask")
    with pytest.raises(ConfigError, match="attention_mask"):
        tiny_model(make_cfg, "tiny_electra", "model.inputs=[input_ids]")


@pytest.mark.parametrize(("override", "message"), [
    ("model.pooling=cls", "pooling='cls' is unknown"),
    ("model.pooling=pooler", "has no pooler"),  # ELECTRA never builds one
    ("model.layout.query=attention.self.q", "name no nn.Linear"),
    ("model.layout.layers=bert.encoder.layer", "must start with the backbone"),
    ("model.arch=electron", "not a transformers model_type"),
    ("model.backbone=head", "free attribute name"),
    ("model.config.pad_token_id=3", "pad_token_id=0"),
])
def test_bad_architecture_keys_fail_clearly(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_model(make_cfg, "tiny_electra", override)


# --- pooling -----------------------------------------------------------------------------------


def test_pooling_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # the first sequence is padded
    output = SimpleNamespace(last_hidden_state=hidden, pooler_output=torch.full((2, 2), 7.0))
    torch.testing.assert_close(pool(output, mask, "first"), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))
    # mean over the real tokens only: (1+3)/2, (2+4)/2; (5+7+9)/3, (6+8+10)/3
    torch.testing.assert_close(pool(output, mask, "mean"), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))
    assert torch.equal(pool(output, mask, "pooler"), output.pooler_output)


def test_mean_pooling_ignores_padding_in_the_model(make_cfg):
    """A padded batch gives each sequence what it gives alone, unpadded."""
    _, tok, model = tiny_model(make_cfg, "tiny_distilbert", "model.pooling=mean")
    model.eval()
    batch = padded_batch(tok)
    with torch.no_grad():
        together = model(batch["input_ids"], batch["attention_mask"])
        n = int(batch["attention_mask"][1].sum())
        alone = model(batch["input_ids"][1:, :n], batch["attention_mask"][1:, :n])
        hidden = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-5)
    by_hand = hidden[1, :n].mean(0)  # the real tokens of the padded sequence; STS-B: 5 sigmoid
    torch.testing.assert_close(5 * torch.sigmoid(model.head(by_hand)[0]), together[1], rtol=1e-5, atol=1e-5)


# --- checkpoints -------------------------------------------------------------------------------


def save_encoder(encoder, folder: Path) -> Path:
    encoder.save_pretrained(folder)
    return folder


def test_checkpoint_of_another_architecture_is_refused(make_cfg, tmp_path):
    roberta = random_encoder("roberta", {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                                         "num_attention_heads": 2, "intermediate_size": 64,
                                         "max_position_embeddings": 130, "pad_token_id": 0}, "first")
    folder = save_encoder(roberta, tmp_path / "roberta")
    with pytest.raises(ConfigError) as err:
        tiny_model(make_cfg, "tiny", f"model.pretrained={folder}")
    message = str(err.value)
    assert "'roberta' checkpoint" in message and "arch: bert" in message
    assert "model=roberta_base" in message and "model=tiny" in message
    # the right YAML loads it, pooler-free, with no weight left random
    _, _, model = tiny_model(make_cfg, "tiny_roberta", f"model.pretrained={folder}")
    for name, p in roberta.state_dict().items():
        assert torch.equal(model.roberta.state_dict()[name], p), name


def test_checkpoint_with_a_missing_encoder_weight_is_refused(make_cfg, tmp_path):
    _, _, model = tiny_model(make_cfg, "tiny")
    folder = save_encoder(model.bert, tmp_path / "bert")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["encoder.layer.1.output.dense.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"missing: encoder.layer.1.output.dense.weight"):
        tiny_model(make_cfg, "tiny", f"model.pretrained={folder}")


def test_checkpoint_with_an_unknown_weight_is_refused_but_pretraining_heads_are_not(make_cfg, tmp_path):
    _, _, model = tiny_model(make_cfg, "tiny")
    folder = save_encoder(model.bert, tmp_path / "bert")
    weights = load_file(str(folder / "model.safetensors"))
    heads = {"cls.predictions.bias": torch.zeros(3), "cls.seq_relationship.weight": torch.zeros(2, 32)}
    save_file({**weights, **heads}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tiny_model(make_cfg, "tiny", f"model.pretrained={folder}")  # pretraining heads: fine
    save_file({**weights, "adapter.weight": torch.zeros(2)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="unexpected: adapter.weight"):
        tiny_model(make_cfg, "tiny", f"model.pretrained={folder}")


def test_the_key_rule():
    info = {"missing_keys": {"pooler.dense.weight"}, "unexpected_keys": {
        "bert.pooler.dense.bias", "lm_head.dense.weight", "generator_lm_head.bias", "vocab_projector.bias",
        "discriminator_predictions.dense.weight", "mask_predictions.classifier.bias", "pre_classifier.weight"}}
    assert unexplained_keys(info, "bert", "first") == {"missing": [], "unexpected": [], "mismatched": []}
    # with pooling=pooler the pooler must be there, and a checkpoint's pooler is not "extra"
    bad = unexplained_keys(info, "bert", "pooler")
    assert bad["missing"] == ["pooler.dense.weight"] and bad["unexpected"] == ["bert.pooler.dense.bias"]


def test_minilm_loads_with_every_weight_and_its_pooler(make_cfg):
    """The offline default: a BERT checkpoint with a pooler, nothing missing or unexpected."""
    _, _, model = tiny_model(make_cfg, "minilm")
    assert model.bert is model.encoder and model.pooling == "pooler"
    assert model.bert.pooler is not None and model.encoder.config.hidden_size == 384
    names = {n for n, _ in model.named_parameters()}
    assert "bert.encoder.layer.5.attention.self.query.weight" in names and "bert.pooler.dense.weight" in names


# --- export ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", *TINY])
def test_export_loads_back_with_the_same_outputs(make_cfg, tmp_path, name):
    cfg, tok, model = tiny_model(make_cfg, name)
    prunable = B.prunable_parameters(model, cfg.prune.include)
    gen = torch.Generator().manual_seed(0)
    M.apply_masks(model, {n: torch.rand(p.shape, generator=gen) < 0.5 for n, p in prunable.items()})
    model.eval()
    folder = export_pruned(model, tmp_path / "export")
    spec = json.loads((folder / "head.json").read_text())
    assert spec["arch"] == model.arch and spec["pooling"] == model.pooling and spec["inputs"] == list(model.inputs)
    batch = padded_batch(tok)
    given = {k: batch[k] for k in model.inputs}
    encoder, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(encoder) is type(model.encoder)
    with torch.no_grad():
        want = model.encoder(**given).last_hidden_state
        torch.testing.assert_close(encoder.eval()(**given).last_hidden_state, want, rtol=0, atol=0)
        reloaded = load_exported(folder)
        torch.testing.assert_close(reloaded(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")),
                                   model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")),
                                   rtol=0, atol=0)
    assert not info["unexpected_keys"] and not info["mismatched_keys"]


# --- the whole pipeline ------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_pipeline_runs_exports_and_analyses(make_cfg, tmp_path, name):
    _, cls, backbone, layers, pooling, _ = TINY[name]
    results = run(make_cfg(f"model={name}", *SMALL, "strategy=layer_mag_grad", "save_model=true"))
    out = tmp_path / "run"
    assert results["status"] == "complete" and results["num_attention_heads"] == HEADS
    cfg, _, model = tiny_model(make_cfg, name)
    prunable = B.prunable_parameters(model, cfg.prune.include)
    masks = load_file(str(out / "masks.safetensors"))
    assert masks.keys() == prunable.keys() and all(n.startswith(f"{layers}.") for n in masks)
    assert results["prunable_parameters"] == sum(p.numel() for p in prunable.values())
    assert results["total_parameters"] == B.count_parameters(model)

    # the export: the architecture's own class, every weight in place, pruned entries exact zeros
    encoder, info = AutoModel.from_pretrained(out / "pruned_model", output_loading_info=True)
    assert type(encoder).__name__ == cls
    assert not info["unexpected_keys"] and all(".pooler." in f".{k}" for k in info["missing_keys"])
    params = dict(encoder.named_parameters())
    strip = len(backbone) + 1
    assert sum(int(torch.count_nonzero(params[n[strip:]][~m])) for n, m in masks.items()) == 0
    assert load_exported(out / "pruned_model").spec["pooling"] == pooling

    # a second strategy on the same dense model, then the per-head mask analysis via the layout
    second = run(make_cfg(f"model={name}", *SMALL, f"strategy={SECOND[name]}", f"output_dir={tmp_path / 'second'}"))
    assert second["status"] == "complete" and second["cache"]["hits"][0] == "dense"
    tables, runs, skipped = MI.pair_tables([out, tmp_path / "second"])
    assert len(runs) == 2 and not skipped
    assert runs[0].layout == dict(cfg.model.layout)
    assert len(tables["tensor_iou"]) == len(masks)
    assert set(tables["tensor_iou"]["layer"]) == {str(i) for i in range(LAYERS)}
    heads = tables["head_iou"]
    assert sorted(zip(heads["layer"], heads["head"], strict=True)) == [(i, h) for i in range(LAYERS) for h in range(HEADS)]
    assert heads["iou_kept"].between(0, 1).all()


@pytest.mark.parametrize("strategy", ["wanda", "smoothgrad_cam", "integrated_gradients"])
def test_hooked_strategies_run_on_deberta(make_cfg, tmp_path, strategy):
    """DeBERTa-v3 also runs query/key projections over its relative-position embeddings
    ([1, 2k, H], not [batch, tokens, H]): the activation and input hooks skip those calls."""
    results = run(make_cfg("model=tiny_deberta", *SMALL, f"strategy={strategy}", "strategy.eta=2" if "smooth" in strategy else "seed=0"))
    assert results["status"] == "complete"
