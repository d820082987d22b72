"""Structured pruning: whole attention heads and FFN neurons, scored from element scores and
*removed* (the fine-tune and the export run on the smaller model).

Groups, per encoder layer (names from the model YAML's ``layout``):

- head ``h`` (head size ``d``): rows ``h d .. (h+1) d - 1`` of the query, key and value weights
  and biases, and the same columns of the attention output projection;
- FFN neuron ``j``: row ``j`` of the FFN input weight and its bias, and column ``j`` of the FFN
  output weight.

A group's score is the sum (or mean) of its entries' element scores, from any strategy, or
(``native``) the strategy's own per-unit score: Cam-Cut's channel weight ``|g_b (a_bar + lambda)|``
summed over a head's query, key and value units, or a neuron's FFN input unit. The budget
is the unstructured one, in parameters: the prunable parameters kept are ``f P`` (``f`` from the
ratio, as for masks). Prunable tensors outside every group (the output biases, the pooler) are kept
whole, so the groups keep ``f P - N`` parameters: heads keep that share of their count
(``round``, at least ``min_heads`` per layer), then FFN neurons take the remainder in whole
neurons, so the achieved ratio is the requested one to within one neuron per layer. Ranking is
within each layer (``scope: layer``) or over all layers (``global``); ties go to the lower index.

Removal uses ``transformers.pytorch_utils.prune_linear_layer`` (transformers 5 no longer has
``prune_heads``): its attention reshapes with ``view(..., -1, head_size)``, so a layer runs with any
number of heads >= 1; the attention module's head-count attributes are updated for readers.

Over 300 lines on purpose: grouping, the parameter budget, the plan and the removal share the
``Groups`` index arithmetic; :class:`deepcuts.pruning.selectors.HeadsNeuronsSelector` is the
interface the pipeline sees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from deepcuts.config.errors import ConfigError

KINDS = ("none", "heads_neurons")
GROUP_SCORES = ("sum", "mean", "native")  # of the element scores; native: the strategy's per-unit scores
OPTIONS = {"group_score", "scope", "min_heads"}
PARTS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")  # the layout's Linears in a group
HEAD_ATTRS = ("num_attention_heads", "n_heads", "num_heads")  # per architecture; updated if present
# (DeBERTa-v2 reshapes by num_attention_heads: without the update its output is silently wrong)
NO_EMPTY_ATTENTION = ("deberta-v2",)  # view(..., heads, -1) cannot infer a size with 0 heads
UNSHARED = ("pos_key_proj", "pos_query_proj")  # DeBERTa-v2 with share_att_key=false: not grouped


@dataclass(frozen=True)
class Groups:
    """The heads and neurons of one model: names of the grouped tensors and group sizes."""

    layers: list[str]  # module prefix of each layer, e.g. "bert.encoder.layer.0"
    layout: dict
    heads: int  # heads per layer (before removal)
    head_size: int
    neurons: int  # FFN width per layer (before removal)

    def name(self, layer: int, part: str, param: str = "weight") -> str:
        return f"{self.layers[layer]}.{self.layout[part]}.{param}"


def model_groups(model: nn.Module, layout: dict, num_heads: int) -> Groups:
    stack = model.get_submodule(layout["layers"])
    layers = [f"{layout['layers']}.{i}" for i in range(len(stack))]
    query = model.get_submodule(f"{layers[0]}.{layout['query']}")
    ffn_in = model.get_submodule(f"{layers[0]}.{layout['ffn_in']}")
    if query.out_features % num_heads:
        raise ConfigError(f"{query.out_features} query rows do not split into {num_heads} heads.")
    return Groups(layers, dict(layout), num_heads, query.out_features // num_heads, ffn_in.out_features)


@dataclass
class Plan:
    """The kept head and neuron indices of every layer (sorted)."""

    heads: list[list[int]]
    neurons: list[list[int]]

    def head_rows(self, layer: int, head_size: int) -> torch.Tensor:
        return torch.tensor([h * head_size + i for h in self.heads[layer] for i in range(head_size)], dtype=torch.long)

    def summary(self) -> dict:
        return {"heads_kept": [len(h) for h in self.heads], "neurons_kept": [len(n) for n in self.neurons]}


def _sum_parts(parts: list[torch.Tensor], reduce: str) -> torch.Tensor:
    """``parts``: score tensors already cut into ``[groups, ...]``; summed (or averaged) per group."""
    total = sum(t.double().reshape(t.shape[0], -1).sum(1) for t in parts)
    if reduce == "mean":
        total = total / sum(t[0].numel() for t in parts)
    return total


def native_scores(units: dict[str, torch.Tensor], groups: Groups) -> tuple[torch.Tensor, torch.Tensor]:
    """Group scores from a strategy's per-output-unit scores: a head sums its query, key and value
    units, a neuron is its FFN input unit."""
    def unit(layer: int, part: str) -> torch.Tensor:
        name = groups.name(layer, part).removesuffix(".weight")
        if name not in units:
            raise ConfigError(f"structure.group_score=native needs the strategy's unit score of {name!r} "
                              "(Cam-Cut records one for every Linear whose bias is prunable).")
        return units[name].double()

    layers = range(len(groups.layers))
    heads = [sum(unit(i, p).reshape(groups.heads, -1).sum(1) for p in ("query", "key", "value")) for i in layers]
    return torch.stack(heads), torch.stack([unit(i, "ffn_in") for i in layers])


def group_scores(scores: dict[str, torch.Tensor], groups: Groups, reduce: str = "sum",
                 units: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer scores ``[layers, heads]`` and ``[layers, neurons]`` from element scores (a group
    tensor missing from ``scores``, a bias outside the prunable set, adds nothing; the weights
    are required), or from per-unit scores (``native``)."""
    if reduce not in GROUP_SCORES:
        raise ConfigError(f"structure.group_score must be one of {GROUP_SCORES}, got {reduce!r}.")
    if reduce == "native":
        return native_scores(units or {}, groups)
    d, heads, neurons = groups.head_size, [], []

    def get(layer: int, part: str, param: str) -> torch.Tensor | None:
        name = groups.name(layer, part, param)
        if name not in scores and param == "weight":
            raise ConfigError(f"structured pruning scores whole heads and neurons, but {name!r} is not prunable: "
                              "prune.include must cover the layout's query, key, value, attn_out, ffn_in and ffn_out.")
        return scores.get(name)

    for i in range(len(groups.layers)):
        parts = []
        for part in ("query", "key", "value"):
            for param in ("weight", "bias"):
                if (t := get(i, part, param)) is not None:
                    parts.append(t.reshape(groups.heads, d, *t.shape[1:]))
        out = get(i, "attn_out", "weight")
        parts.append(out.reshape(out.shape[0], groups.heads, d).transpose(0, 1))
        heads.append(_sum_parts(parts, reduce))
        parts = [t for param in ("weight", "bias") if (t := get(i, "ffn_in", param)) is not None]
        parts.append(get(i, "ffn_out", "weight").t())
        neurons.append(_sum_parts(parts, reduce))
    return torch.stack(heads), torch.stack(neurons)


def group_sizes(prunable: dict[str, torch.Tensor], groups: Groups) -> tuple[int, int]:
    """Prunable parameters per head and per neuron (biases counted when they are prunable)."""
    shapes = {name: t.shape for name, t in prunable.items()}
    missing = [groups.name(i, part) for i in range(len(groups.layers)) for part in PARTS if groups.name(i, part) not in shapes]
    if missing:
        raise ConfigError(f"structured pruning removes whole heads and neurons, but {missing[:3]} are not prunable: "
                          "prune.include must cover the layout's query, key, value, attn_out, ffn_in and ffn_out.")
    d, hidden = groups.head_size, shapes[groups.name(0, "query")][1]
    head = sum(d * hidden + (d if groups.name(0, p, "bias") in shapes else 0) for p in ("query", "key", "value"))
    head += shapes[groups.name(0, "attn_out")][0] * d
    neuron = hidden + (1 if groups.name(0, "ffn_in", "bias") in shapes else 0) + shapes[groups.name(0, "ffn_out")][0]
    return head, neuron


def _top(score: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest entries; ties to the lower index (a stable sort)."""
    return torch.sort(score, descending=True, stable=True).indices[:k].tolist()


def _top_global(score: torch.Tensor, k: int, floor: int) -> list[list[int]]:
    """``k`` entries of ``[layers, n]`` ranked over all layers, at least ``floor`` in each layer."""
    layers, n = score.shape
    chosen = {(i, j) for i in range(layers) for j in _top(score[i], floor)}
    flat = _top(score.reshape(-1), layers * n)
    for idx in flat:
        if len(chosen) >= k:
            break
        chosen.add(divmod(idx, n))
    return [sorted(j for i2, j in chosen if i2 == i) for i in range(layers)]


def group_budget(prunable: dict[str, torch.Tensor], groups: Groups, keep_fraction: float,
                 min_heads: int) -> tuple[int, int, int, float]:
    """(parameters per head, per neuron, in all groups, the groups' share of ``keep_fraction``);
    a ConfigError when that share cannot hold ``min_heads`` heads per layer."""
    head_size, neuron_size = group_sizes(prunable, groups)
    layers = len(groups.layers)
    grouped = layers * (groups.heads * head_size + groups.neurons * neuron_size)
    total = sum(t.numel() for t in prunable.values())
    target = keep_fraction * total - (total - grouped)  # parameters the groups keep
    least = layers * min_heads * head_size
    if target < least:
        raise ConfigError(
            f"keep_fraction {keep_fraction:.4f} leaves {max(target, 0):,.0f} parameters to heads and neurons, fewer "
            f"than {least:,} for structure.min_heads={min_heads} per layer: choose a smaller ratio (or min_heads).")
    return head_size, neuron_size, grouped, target


def plan_groups(
    scores: dict[str, torch.Tensor], prunable: dict[str, torch.Tensor], groups: Groups, keep_fraction: float,
    scope: str = "layer", reduce: str = "sum", min_heads: int = 1, units: dict[str, torch.Tensor] | None = None,
) -> Plan:
    """The heads and neurons kept for ``keep_fraction`` of the prunable parameters (module doc)."""
    if scope not in ("layer", "global"):
        raise ConfigError(f"structure.scope must be 'layer' or 'global' (or null: the strategy's), got {scope!r}.")
    if not 0 <= min_heads <= groups.heads:
        raise ConfigError(f"structure.min_heads must be in [0, {groups.heads}], got {min_heads}.")
    head_scores, neuron_scores = group_scores(scores, groups, reduce, units)
    for name, s in (("head", head_scores), ("neuron", neuron_scores)):
        if not torch.isfinite(s).all():
            raise FloatingPointError(f"NaN/inf in the {name} scores: check the dense model's loss and the strategy.")
    head_size, neuron_size, grouped, target = group_budget(prunable, groups, keep_fraction, min_heads)
    layers = len(groups.layers)
    g = target / grouped
    if scope == "layer":
        h = min(groups.heads, max(min_heads, round(g * groups.heads)))
        n = min(groups.neurons, max(0, round((target / layers - h * head_size) / neuron_size)))
        return Plan([sorted(_top(s, h)) for s in head_scores], [sorted(_top(s, n)) for s in neuron_scores])
    h = min(layers * groups.heads, max(layers * min_heads, round(g * layers * groups.heads)))
    n = min(layers * groups.neurons, max(0, round((target - h * head_size) / neuron_size)))
    return Plan(_top_global(head_scores, h, min_heads), _top_global(neuron_scores, n, 0))


def plan_masks(plan: Plan, prunable: dict[str, torch.Tensor], groups: Groups) -> dict[str, torch.Tensor]:
    """The element masks of a plan, in the original shapes (True = kept): what the removal equals,
    and what the mask analysis reads. Prunable tensors outside the groups are kept whole."""
    masks = {name: torch.ones(t.shape, dtype=torch.bool) for name, t in prunable.items()}
    for i in range(len(groups.layers)):
        rows = torch.zeros(groups.heads * groups.head_size, dtype=torch.bool)
        rows[plan.head_rows(i, groups.head_size)] = True
        units = torch.zeros(groups.neurons, dtype=torch.bool)
        units[plan.neurons[i]] = True
        for part, keep, dim in (("query", rows, 0), ("key", rows, 0), ("value", rows, 0), ("attn_out", rows, 1),
                                ("ffn_in", units, 0), ("ffn_out", units, 1)):
            weight = groups.name(i, part)
            masks[weight] = (keep[:, None] if dim == 0 else keep[None, :]).expand_as(masks[weight]).clone()
            bias = groups.name(i, part, "bias")
            if dim == 0 and bias in masks:  # an output projection's bias is not part of any group
                masks[bias] = keep.clone()
    return masks


def _replace(model: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, child)
    with warnings.catch_warnings():  # a group removed whole leaves a zero-size Linear: a no-op init
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = prune_linear_layer(old, index, dim)
    setattr(parent, child, new.to(dtype=old.weight.dtype))  # prune_linear_layer builds in the default dtype


@torch.no_grad()
def remove_groups(model: nn.Module, plan: Plan, groups: Groups) -> None:
    """Remove the heads and neurons ``plan`` does not keep, in place (new, smaller Linears with the
    kept rows/columns; parameter names unchanged). Call before the optimiser is built."""
    for i, prefix in enumerate(groups.layers):
        rows = plan.head_rows(i, groups.head_size)
        units = torch.tensor(plan.neurons[i], dtype=torch.long)
        for part, index, dim in (("query", rows, 0), ("key", rows, 0), ("value", rows, 0), ("attn_out", rows, 1),
                                 ("ffn_in", units, 0), ("ffn_out", units, 1)):
            _replace(model, f"{prefix}.{groups.layout[part]}", index, dim)
        attention = model.get_submodule(f"{prefix}.{groups.layout['query']}".rpartition(".")[0])
        for attr in HEAD_ATTRS:
            if isinstance(getattr(attention, attr, None), int):
                setattr(attention, attr, len(plan.heads[i]))
        if isinstance(getattr(attention, "all_head_size", None), int):
            attention.all_head_size = len(plan.heads[i]) * groups.head_size


def shrink_to(model: nn.Module, structure: dict, layout: dict, num_heads: int) -> None:
    """Give a freshly built full-size model the shapes of a removed one (``structure`` as
    recorded by :func:`record`), so its saved weights load; the values are placeholders."""
    groups = model_groups(model, layout, num_heads)
    plan = Plan([list(range(h)) for h in structure["heads_kept"]], [list(range(n)) for n in structure["neurons_kept"]])
    remove_groups(model, plan, groups)


def record(plan: Plan, groups: Groups, scope: str, reduce: str) -> dict:
    """What results.json and the export keep of a plan: the per-layer counts and kept indices."""
    return {"kind": "heads_neurons", "scope": scope, "group_score": reduce, "head_size": groups.head_size,
            **plan.summary(), "heads": plan.heads, "neurons": plan.neurons}


class Structure:
    """The run's ``structure`` config, checked before any training: picks the groups from the
    scores (:meth:`select`, giving the equivalent element masks) and removes the rest after the
    rewind (:meth:`remove`)."""

    def __init__(self, model: nn.Module, layout: dict, arch: str | None = None, scope: str | None = None,
                 group_score: str = "sum", min_heads: int = 1) -> None:
        attention = model.get_submodule(f"{layout['layers']}.0.{layout['query']}".rpartition(".")[0])
        unshared = [a for a in UNSHARED if isinstance(getattr(attention, a, None), nn.Linear)]
        if unshared:
            raise ConfigError(f"structured pruning does not group {unshared} (arch={arch!r} with share_att_key=false: "
                              "separate relative-position projections per head); use structure=none, or a model "
                              "with share_att_key=true (DeBERTa-v3's default).")
        if group_score not in GROUP_SCORES:
            raise ConfigError(f"structure.group_score must be one of {GROUP_SCORES}, got {group_score!r}.")
        self.groups = model_groups(model, layout, model.encoder.config.num_attention_heads)
        if not isinstance(min_heads, int) or not 0 <= min_heads <= self.groups.heads:
            raise ConfigError(f"structure.min_heads must be an integer in [0, {self.groups.heads}], got {min_heads!r}.")
        if scope not in (None, "layer", "global"):
            raise ConfigError(f"structure.scope must be layer, global or null (the strategy's), got {scope!r}.")
        if min_heads == 0 and arch in NO_EMPTY_ATTENTION:
            raise ConfigError(f"structure.min_heads=0 is not supported for arch={arch!r}: its attention reshapes by "
                              "the head count and fails with no heads; use min_heads >= 1.")
        self.arch, self.scope, self.reduce, self.min_heads = arch, scope, group_score, min_heads
        self.used_scope = scope
        self.plan: Plan | None = None

    @classmethod
    def from_cfg(cls, node, model: nn.Module, scorer, prunable: dict | None = None,
                 keep_fraction: float | None = None) -> Structure | None:
        """None for ``kind: none``; refuses ``group_score: native`` for a scorer without per-unit scores, and a keep fraction too small for
        ``min_heads`` (all before any training)."""
        kind = node.get("kind", "none") if node is not None else "none"
        if kind not in KINDS:
            raise ConfigError(f"structure.kind must be one of {KINDS}, got {kind!r} (structure=none or structure=heads_neurons).")
        if kind == "none":
            return None
        options = {k: v for k, v in node.items() if k != "kind"}
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ConfigError(f"structure has unknown key(s) {unknown}; it takes kind and {sorted(OPTIONS)}.")
        if options.get("group_score") == "native":
            if not scorer.unit_scores:
                raise ConfigError(f"structure.group_score=native: strategy {scorer.name!r} has no per-unit score "
                                  "(gradcam and gradcam_shift have one); use group_score=sum or mean.")
            if prunable is not None:
                groups = model_groups(model, model.layout, model.encoder.config.num_attention_heads)
                missing = [groups.name(i, p, "bias") for i in range(len(groups.layers)) for p in ("query", "key", "value", "ffn_in")
                           if groups.name(i, p, "bias") not in prunable]
                if missing:
                    raise ConfigError(f"structure.group_score=native reads the unit scores recorded with each bias, but "
                                      f"{missing[:2]} are not prunable (or absent); use group_score=sum or mean.")
        structure = cls(model, model.layout, getattr(model, "arch", None), **options)
        if prunable is not None and keep_fraction is not None:
            group_budget(prunable, structure.groups, keep_fraction, structure.min_heads)
        return structure

    def select(self, scores: dict, prunable: dict, keep_fraction: float, strategy_scope: str,
               units: dict | None = None) -> dict[str, torch.Tensor]:
        """Plan the kept heads and neurons; returns the equivalent element masks (original shapes)."""
        scope = self.scope or ("global" if strategy_scope == "global" else "layer")
        self.plan = plan_groups(scores, prunable, self.groups, keep_fraction, scope, self.reduce, self.min_heads, units)
        self.used_scope = scope
        return plan_masks(self.plan, prunable, self.groups)

    def remove(self, model: nn.Module) -> None:
        """Remove the unkept groups; the encoder's config records the per-layer counts so an
        export can be rebuilt (``deepcuts.models.export.load_exported``)."""
        remove_groups(model, self.plan, self.groups)
        model.encoder.config.deepcuts_structure = {**self.plan.summary(), "head_size": self.groups.head_size}

    def record(self) -> dict:
        return record(self.plan, self.groups, self.used_scope, self.reduce)
