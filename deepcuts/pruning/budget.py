"""The prunable set, parameter counts, and compression ratio -> keep fraction.

The compression ratio follows ShrinkBench and the paper: ``c = total / non-zero`` over the whole
model, so with ``T`` total parameters, ``P`` prunable and ``N = T - P`` never pruned, keeping a
fraction ``f`` of the prunable ones gives ``c = T / (N + f P)``, i.e. ``f = (T / c - N) / P``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from deepcuts.config.errors import ConfigError

# bert-base-uncased with a 2-way head: the counts the paper's ratios refer to.
BERT_BASE_TOTAL = 109_483_778
BERT_BASE_PRUNABLE = 85_608_192
MODEL_CONF = Path(__file__).resolve().parents[2] / "conf" / "model"

# The published config.json values of each reference checkpoint (the hub model its model YAML
# names), as far as they change parameter counts. With the model YAML of the same name (arch,
# backbone, pooling, prunable) they give a ratio basis: see reference_budget.
REFERENCE_CONFIGS = {
    "bert_base": {  # google-bert/bert-base-uncased
        "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
    },
    "roberta_base": {  # FacebookAI/roberta-base
        "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1,
        "pad_token_id": 1, "layer_norm_eps": 1e-5,
    },
    "distilbert_base": {  # distilbert/distilbert-base-uncased
        "vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
        "max_position_embeddings": 512, "sinusoidal_pos_embds": False,
    },
    "electra_base": {  # google/electra-base-discriminator
        "vocab_size": 30522, "embedding_size": 768, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
        "type_vocab_size": 2,
    },
    "deberta_v3_base": {  # microsoft/deberta-v3-base
        "vocab_size": 128100, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 0,
        "relative_attention": True, "position_buckets": 256, "max_relative_positions": -1,
        "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": "p2c|c2p",
        "position_biased_input": False, "layer_norm_eps": 1e-7,
    },
}


@dataclass(frozen=True)
class Budget:
    """How many parameters exist, how many may be pruned, and the basis the ratio refers to."""

    total: int
    prunable: int

    @property
    def unprunable(self) -> int:
        return self.total - self.prunable

    @property
    def max_ratio(self) -> float:
        """The ratio reached by pruning every prunable parameter (not reachable itself)."""
        return self.total / self.unprunable if self.unprunable else float("inf")

    def keep_fraction(self, ratio: float) -> float:
        """``f = (T/c - N) / P``; fails for a ratio the model cannot reach."""
        try:
            c = float(ratio)
        except (TypeError, ValueError):
            raise ConfigError(f"ratio must be a number such as 3 or 3.5, got {ratio!r}.") from None
        if not c > 1:
            raise ConfigError(
                f"ratio={ratio} is not a compression: it must be > 1 (total / non-zero parameters)."
            )
        f = (self.total / c - self.unprunable) / self.prunable
        if f <= 0:
            raise ConfigError(
                f"ratio={ratio} cannot be reached: with {self.unprunable:,} parameters that are never "
                f"pruned the maximum compression is {self.max_ratio:.3f} (exclusive). Choose a smaller "
                "ratio, or ratio_basis=model/bert_base to change the counts it refers to."
            )
        return min(f, 1.0)


@cache
def reference_budget(name: str, num_labels: int = 2) -> Budget:
    """The counts of reference model ``name`` with a ``num_labels``-way head: its published config
    (``REFERENCE_CONFIGS``) built on the meta device (shapes only, no weights), wrapped like
    GlueModel (the encoder under the YAML's ``backbone``, a pooler only for ``pooling: pooler``),
    prunable = the Linears matching the model YAML ``conf/model/<name>.yaml``'s ``prunable``."""
    import yaml

    from deepcuts.models.encoders import random_encoder

    spec = yaml.safe_load((MODEL_CONF / f"{name}.yaml").read_text())
    with torch.device("meta"):
        wrapper = nn.Module()
        encoder = random_encoder(spec["arch"], REFERENCE_CONFIGS[name], spec["pooling"])
        setattr(wrapper, spec["backbone"], encoder)
        wrapper.head = nn.Linear(encoder.config.hidden_size, num_labels)
    return model_budget(wrapper, prunable_parameters(wrapper, spec["prunable"]))


class Bases(Mapping):
    """The named ratio bases: ``bert_base`` (the paper's literal counts) and the other reference
    models, each computed by :func:`reference_budget` on first use (nothing at import)."""

    def __getitem__(self, name: str) -> Budget:
        if name == "bert_base":
            return _BERT_BASE
        if name not in REFERENCE_CONFIGS:
            raise KeyError(name)
        return reference_budget(name)

    def __iter__(self) -> Iterator[str]:
        return iter(REFERENCE_CONFIGS)

    def __len__(self) -> int:
        return len(REFERENCE_CONFIGS)


_BERT_BASE = Budget(BERT_BASE_TOTAL, BERT_BASE_PRUNABLE)
BASES = Bases()


def prunable_parameters(
    model: nn.Module, include: list[str], exclude: list[str] = ()
) -> dict[str, nn.Parameter]:
    """Weights and biases of the ``nn.Linear`` modules whose names match ``include`` and no
    ``exclude`` pattern (shell-style patterns on module names, e.g. ``bert.encoder.layer.*``).

    Keys are the parameter names (``bert.encoder.layer.0.attention.self.query.weight``); pruned
    modules (``weight_orig``) are reported under their original names.
    """
    params: dict[str, nn.Parameter] = {}
    for pattern in include:
        hits = [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and fnmatch.fnmatchcase(name, pattern)
        ]
        if not hits:
            raise ConfigError(
                f"prune.include pattern {pattern!r} matches no nn.Linear module of the model. "
                "Module names look like 'bert.encoder.layer.0.attention.self.query'."
            )
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        for pname in ("weight", "bias"):
            p = getattr(module, f"{pname}_orig", None)
            if p is None:
                p = getattr(module, pname, None)
            if isinstance(p, nn.Parameter):
                params[f"{name}.{pname}"] = p
    return params


def count_parameters(model: nn.Module) -> int:
    """All parameters of the model (pruned modules count their ``*_orig`` once)."""
    return sum(p.numel() for p in model.parameters())


def model_budget(model: nn.Module, prunable: dict[str, nn.Parameter]) -> Budget:
    return Budget(count_parameters(model), sum(p.numel() for p in prunable.values()))


def budget_for(basis: str, model_budget_: Budget) -> Budget:
    """The budget a ratio refers to: the model's own counts, or a named reference model's."""
    if basis == "model":
        return model_budget_
    if basis in BASES:
        return BASES[basis]
    raise ConfigError(f"ratio_basis={basis!r} is unknown; use one of: model, {', '.join(BASES)}.")


@torch.no_grad()
def count_nonzero(model: nn.Module) -> int:
    """Non-zero entries of the *effective* parameters (weight_orig * mask for pruned modules)."""
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("_orig"):
                mask = getattr(module, name[: -len("_orig")] + "_mask")
                total += int(torch.count_nonzero(p * mask))
            else:
                total += int(torch.count_nonzero(p))
    return total
