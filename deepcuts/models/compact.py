"""Compact checkpoints of sparse (unstructured-pruned) models: kept values + a packed bitmask.

A model pruned with masks and saved normally stores every zero. The compact format stores, for
each tensor that has a mask, only the values the mask keeps and the mask itself at one bit per
entry; tensors without a mask are stored as they are. At keep fraction ``f`` a float32 tensor of
``n`` entries takes ``n * (4 f + 1/8)`` bytes instead of ``4 n``: smaller whenever ``f < 0.97``.

Layout (format ``deepcuts.models.compact``, version 1): one safetensors file, written atomically, with

* ``values/<name>``: 1-D, the original dtype, the kept entries of tensor ``<name>`` in row-major
  (C) order of the mask's True entries (``tensor.reshape(-1)[mask.reshape(-1)]``);
* ``bits/<name>``: 1-D uint8, ``ceil(n / 8)`` bytes, the flattened mask packed with
  ``numpy.packbits(mask.reshape(-1), bitorder="little")``: entry ``i`` is bit ``i % 8`` (least
  significant bit first) of byte ``i // 8``; the unused high bits of the last byte are 0;
* ``dense/<name>``: a tensor without a mask, unchanged;
* string metadata: ``format`` = ``deepcuts.models.compact``, ``format_version`` = ``1``, ``bit_order`` =
  ``little``, and ``tensors`` = a JSON list, in the state dict's order, of
  ``{"name", "kind" ("masked" | "dense"), "dtype" (e.g. "float32"), "shape", "kept" (masked only)}``.

:func:`load_compact` rebuilds the dense state dict: same names, order, dtypes and shapes, kept
entries bit for bit, pruned entries ``+0`` (a ``-0.0`` left by ``w * mask`` comes back as ``+0.0``;
they compare equal). Entries outside a mask must already be zero when saving (the masks were
applied), otherwise :func:`save_compact` refuses unless told to drop them.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file
from torch import nn

from deepcuts.cache.store import atomic_path
from deepcuts.config.errors import ConfigError
from deepcuts.pruning.masks import current_masks, detach_masked_views, remove_masks

FORMAT, VERSION, BIT_ORDER = "deepcuts.models.compact", 1, "little"
COMPACT_FILE = "model.compact.safetensors"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        if name not in state:
            hint = (" The state holds the unfolded pruning parametrisation (weight_orig + weight_mask): "
                    "fold it first with deepcuts.pruning.masks.remove_masks." if f"{name}_orig" in state else "")
            raise ConfigError(f"mask {name!r} names no tensor of the state dict.{hint}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ConfigError(f"mask {name!r} must be a boolean tensor (True = kept), got {kind}.")
        if tuple(mask.shape) != tuple(state[name].shape):
            raise ConfigError(
                f"mask {name!r} has shape {tuple(mask.shape)} but the tensor has "
                f"{tuple(state[name].shape)}: the masks come from a different model."
            )


# The selection and scatter run in numpy on the entries' bit patterns (an integer view of the
# same width): bit-exact for every dtype (bfloat16 too, which numpy lacks), and single-threaded:
# torch's 2-thread CPU ops stall for whole scheduler slices on a loaded machine (a save of
# MiniLM's pruned state took 0.4-1.9 s with them at load average ~3, 0.1-0.2 s in numpy; a load
# 0.4-1.1 s against ~0.09 s). Every dtype safetensors stores has 1, 2, 4 or 8 bytes.
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_of(t: torch.Tensor, name: str) -> np.ndarray:
    view = _INT_VIEW.get(t.element_size())
    if view is None:
        raise ConfigError(f"tensor {name!r} has dtype {t.dtype}, which the compact format cannot store.")
    return t.reshape(-1).view(view).numpy()


def _select(t: torch.Tensor, keep: np.ndarray, name: str) -> tuple[torch.Tensor, int]:
    """The kept entries of contiguous ``t`` (1-D, row-major) and how many non-zero entries the
    mask drops (``-0.0`` counts as zero, NaN as non-zero)."""
    raw = _bits_of(t, name)
    values = raw[keep]
    if t.is_floating_point():  # ignore the sign bit: -0.0 is a zero
        magnitude = raw.dtype.type(0x7F if raw.itemsize == 1 else np.iinfo(raw.dtype).max)
        lost = np.count_nonzero(raw & magnitude) - np.count_nonzero(values & magnitude)
    else:
        lost = np.count_nonzero(raw) - np.count_nonzero(values)
    return torch.from_numpy(values).view(t.dtype), int(lost)


def _scatter(values: torch.Tensor, keep: np.ndarray, name: str) -> torch.Tensor:
    """The 1-D dense tensor with ``values`` at the kept entries and +0 elsewhere."""
    raw = _bits_of(values, name)
    dense = np.zeros(keep.size, dtype=raw.dtype)  # all-zero bits: +0 for every dtype
    dense[keep] = raw
    return torch.from_numpy(dense).view(values.dtype)


def save_compact(
    state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], path: str | Path,
    drop_unmasked: bool = False,
) -> Path:
    """Write ``state`` in the compact format (module docstring) to ``path``, atomically.

    Tensors named in ``masks`` (boolean, the tensor's shape, True = kept) are stored as kept
    values + bitmask; the others as they are. Non-zero entries outside a mask raise a
    ``ValueError`` naming the tensor (the masks do not match the state, or were never applied);
    ``drop_unmasked=True`` stores the masked state instead (those entries come back as 0).
    """
    _check(state, masks)
    tensors: dict[str, torch.Tensor] = {}
    layout = []
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        entry = {"name": name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
        if name not in masks:
            tensors[f"dense/{name}"] = t
            layout.append({**entry, "kind": "dense"})
            continue
        keep = masks[name].detach().cpu().reshape(-1).numpy()
        values, lost = _select(t, keep, name)
        if lost and not drop_unmasked:
            raise ValueError(
                f"tensor {name!r} has {lost} non-zero entries outside its mask: apply the masks "
                "first (deepcuts.pruning.masks.apply_masks), check that they belong to this state, or "
                "pass drop_unmasked=True to store only the kept entries."
            )
        tensors[f"values/{name}"] = values
        tensors[f"bits/{name}"] = torch.from_numpy(np.packbits(keep, bitorder=BIT_ORDER))
        layout.append({**entry, "kind": "masked", "kept": int(values.numel())})
    metadata = {
        "format": FORMAT, "format_version": str(VERSION), "bit_order": BIT_ORDER,
        "tensors": json.dumps(layout, separators=(",", ":")),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _layout(path: Path) -> list[dict]:
    """The checked ``tensors`` list of a compact file's metadata."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist.")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a deepcuts compact checkpoint (metadata format={meta.get('format')!r}).")
    if meta.get("format_version") != str(VERSION) or meta.get("bit_order") != BIT_ORDER:
        raise ConfigError(
            f"{path} has compact format version {meta.get('format_version')!r} (bit order "
            f"{meta.get('bit_order')!r}); this deepcuts reads version {VERSION} ({BIT_ORDER})."
        )
    return json.loads(meta["tensors"])


def _unpack(path: Path, entry: dict, bits: torch.Tensor) -> np.ndarray:
    """The flattened boolean mask of a masked entry."""
    n = math.prod(entry["shape"])
    if bits.dtype != torch.uint8 or bits.numel() != (n + 7) // 8:
        raise ValueError(f"{path}: the bitmask of {entry['name']!r} does not fit its shape {entry['shape']}.")
    return np.unpackbits(bits.numpy(), count=n, bitorder=BIT_ORDER).view(np.bool_)


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """The boolean masks stored in a compact file, keyed by tensor name (e.g. to re-attach them
    with ``deepcuts.pruning.masks.apply_masks`` for further masked fine-tuning)."""
    path = Path(path)
    layout = _layout(path)
    masks = {}
    with safe_open(str(path), "pt") as fh:
        for entry in layout:
            if entry["kind"] == "masked":
                keep = _unpack(path, entry, fh.get_tensor(f"bits/{entry['name']}"))
                masks[entry["name"]] = torch.from_numpy(keep).reshape(entry["shape"])
    return masks


def load_compact(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict saved by :func:`save_compact`: the same names in the same order,
    dtypes and shapes; kept entries bit for bit, pruned entries 0."""
    path = Path(path)
    layout = _layout(path)
    raw = load_file(str(path))
    state = {}
    for entry in layout:
        name = entry["name"]
        if entry["kind"] == "dense":
            state[name] = raw[f"dense/{name}"]
            continue
        keep = _unpack(path, entry, raw[f"bits/{name}"])
        values = raw[f"values/{name}"]
        kept = int(np.count_nonzero(keep))
        if values.dim() != 1 or values.numel() != kept or values.dtype != getattr(torch, entry["dtype"]):
            raise ValueError(f"{path}: {name!r} has {values.numel()} stored {values.dtype} values for "
                             f"{kept} kept {entry['dtype']} entries: the file is corrupted.")
        state[name] = _scatter(values, keep, name).reshape(entry["shape"])
    return state


def compact_report(path: str | Path, state: dict[str, torch.Tensor] | None = None) -> dict:
    """Sizes of a compact file against the dense safetensors file of the same state.

    * ``compact_bytes``: the file's size; ``dense_bytes``: the size of ``save_file(state)`` for
      the dense state (``state`` if given, else the file's own state, rebuilt in memory);
      ``ratio`` = compact / dense.
    * ``kept``: kept entries of the masked tensors; ``numel``: entries of the masked tensors
      (``n``); ``unmasked_bytes``: data bytes of the tensors without a mask.
    * ``bound`` (target S10): ``compact_bytes / (kept values x itemsize + n / 8 + unmasked_bytes)``,
      i.e. kept x 4 + n/8 for float32. Unmasked tensors are counted as dense values on both
      sides (their bytes are in the numerator and added to the denominator), so the bound
      measures the format's overhead only (safetensors header, metadata, alignment, the last
      partial byte of each bitmask). ``masked_bound`` charges the whole overhead to the masked
      part alone: ``(compact_bytes - unmasked_bytes) / (kept x itemsize + n / 8)``.
    """
    path = Path(path)
    layout = _layout(path)
    kept = numel = kept_bytes = unmasked_bytes = 0
    for entry in layout:
        itemsize = getattr(torch, entry["dtype"]).itemsize
        n = math.prod(entry["shape"])
        if entry["kind"] == "masked":
            kept += entry["kept"]
            numel += n
            kept_bytes += entry["kept"] * itemsize
        else:
            unmasked_bytes += n * itemsize
    compact_bytes = path.stat().st_size
    dense = state if state is not None else load_compact(path)
    dense_bytes = len(save({k: v.detach().cpu().contiguous() for k, v in dense.items()}))
    ideal_masked = kept_bytes + numel / 8
    return {
        "compact_bytes": compact_bytes, "dense_bytes": dense_bytes,
        "ratio": compact_bytes / dense_bytes,
        "kept": kept, "numel": numel, "kept_fraction": kept / numel if numel else None,
        "unmasked_bytes": unmasked_bytes,
        "bound": compact_bytes / (ideal_masked + unmasked_bytes),
        "masked_bound": (compact_bytes - unmasked_bytes) / ideal_masked if ideal_masked else None,
    }


def export_compact(model: nn.Module, masks: dict[str, torch.Tensor] | None, folder: str | Path) -> Path:
    """Write ``model``'s state with its masks folded in (a deep copy; ``model`` is untouched) in
    the compact format as ``folder / "model.compact.safetensors"``. ``masks=None`` takes the masks
    attached to the model (``deepcuts.pruning.masks.current_masks``)."""
    if masks is None:
        masks = current_masks(model)
    detach_masked_views(model)  # a masked weight computed with grad cannot be deep-copied
    clone = copy.deepcopy(model).cpu()
    remove_masks(clone)
    return save_compact(clone.state_dict(), masks, Path(folder) / COMPACT_FILE)


def load_compact_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a compact file into ``model`` (same architecture, no masks attached; strict), in place."""
    if current_masks(model):
        raise ConfigError("load_compact_into needs a model without masks attached (the file holds "
                          "folded weights): use a fresh model or deepcuts.pruning.masks.remove_masks first.")
    path = Path(path)
    if path.is_dir():
        path = path / COMPACT_FILE
    model.load_state_dict(load_compact(path), strict=True)
    return model
