"""Compact sparse checkpoints: exact round trips, the size bound, clear errors, a real model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from deepcuts.config.errors import ConfigError
from deepcuts.models import compact as K
from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.pruning import budget as B
from deepcuts.pruning import masks as M

BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


def pruned(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype))  # +0 where pruned


def sample(dtype: torch.dtype):
    """Masked tensors with all-kept, none-kept and random rows, entry counts not divisible by 8
    (35, 13, 9, 1), a 0-d one, a masked int64 one, and unmasked tensors of other dtypes."""
    g = torch.Generator().manual_seed(0)
    rows = torch.rand(5, 7, generator=g) < 0.5
    rows[0], rows[1] = True, False  # an all-kept row, a none-kept row
    masks = {
        "layer.weight": rows,
        "layer.bias": torch.ones(13, dtype=torch.bool),
        "none.weight": torch.zeros(3, 3, dtype=torch.bool),
        "one.weight": torch.tensor([True]),
        "scalar": torch.tensor(True),
    }
    state = {}
    for name, keep in masks.items():
        state[name] = pruned(torch.randn(keep.shape, generator=g).to(dtype), keep)
    masks["counts"] = torch.tensor([[True, False, True], [False, False, True]])
    state["counts"] = pruned(torch.tensor([[7, 0, -3], [0, 0, 2**40]]), masks["counts"])
    state["embeddings.weight"] = torch.randn(11, 3, generator=g).to(dtype)
    state["position_ids"] = torch.arange(17)
    state["flag"] = torch.tensor([True, False, True])
    return state, masks


def assert_identical(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        if w.dtype in BITS:
            assert torch.equal(g.view(BITS[w.dtype]), w.view(BITS[w.dtype])), name  # bit for bit
        else:
            assert torch.equal(g, w), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_identical(tmp_path, dtype):
    state, masks = sample(dtype)
    path = K.save_compact(state, masks, tmp_path / "m.safetensors")
    assert_identical(K.load_compact(path), state)
    back = K.load_masks(path)
    assert list(back) == list(masks) and all(torch.equal(back[k], masks[k]) for k in masks)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


def test_layout_kept_values_row_major_and_little_endian_bits(tmp_path):
    state, masks = sample(torch.float32)
    path = K.save_compact(state, masks, tmp_path / "m.safetensors")
    raw = load_file(str(path))
    keep = masks["layer.weight"]
    values, bits = raw["values/layer.weight"], raw["bits/layer.weight"]
    assert values.dim() == 1 and values.dtype == torch.float32
    assert torch.equal(values, state["layer.weight"][keep])  # row-major order of the True entries
    assert bits.dtype == torch.uint8 and bits.numel() == 5  # ceil(35 / 8)
    flat = keep.reshape(-1).tolist()
    for i, kept in enumerate(flat):  # entry i is bit i % 8 of byte i // 8, LSB first
        assert bool((int(bits[i // 8]) >> (i % 8)) & 1) == kept
    assert int(bits[-1]) >> (35 % 8) == 0  # unused high bits are 0
    assert raw["values/none.weight"].numel() == 0
    assert torch.equal(raw["dense/position_ids"], state["position_ids"])


def test_negative_zero_comes_back_as_zero(tmp_path):
    w = torch.tensor([[1.5, -2.0], [-0.5, 3.0]])
    keep = torch.tensor([[True, False], [False, True]])
    state = {"w": w * keep}  # what apply_masks leaves: -0.0 where a negative weight was pruned
    assert torch.signbit(state["w"]).sum() == 2
    got = K.load_compact(K.save_compact(state, {"w": keep}, tmp_path / "z.safetensors"))["w"]
    assert torch.equal(got, state["w"]) and not torch.signbit(got[~keep]).any()


def test_ninety_percent_sparse_file_is_near_the_ideal_size(tmp_path):
    g = torch.Generator().manual_seed(1)
    n = 1001 * 999  # not divisible by 8
    score = torch.rand(1001, 999, generator=g)
    keep = M.topk_mask(score, M.keep_count(0.1, n))
    state = {"w": pruned(torch.randn(1001, 999, generator=g), keep)}
    path = K.save_compact(state, {"w": keep}, tmp_path / "s.safetensors")
    kept = int(keep.sum())
    ideal = kept * 4 + n / 8
    assert path.stat().st_size <= 1.15 * ideal
    report = K.compact_report(path, state)
    assert report["compact_bytes"] == path.stat().st_size and report["kept"] == kept
    assert report["numel"] == n and report["unmasked_bytes"] == 0
    assert report["bound"] == pytest.approx(path.stat().st_size / ideal)
    assert report["dense_bytes"] >= 4 * n and report["ratio"] < 0.14
    assert K.compact_report(path)["dense_bytes"] == report["dense_bytes"]  # rebuilt from the file


@pytest.mark.parametrize(
    "masks, match",
    [
        ({"w": torch.ones(3, 4, dtype=torch.bool)}, r"mask 'w' has shape \(3, 4\) but the tensor has \(4, 3\)"),
        ({"w": torch.ones(4, 3)}, r"mask 'w' must be a boolean tensor.*torch.float32"),
        ({"missing.weight": torch.ones(2, dtype=torch.bool)}, r"mask 'missing.weight' names no tensor"),
        ({"w": torch.eye(4, 3, dtype=torch.bool)}, r"tensor 'w' has 9 non-zero entries outside its mask"),
    ],
)
def test_bad_input_names_the_tensor(tmp_path, masks, match):
    state = {"w": torch.ones(4, 3), "b": torch.ones(2)}
    target = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match=match):
        K.save_compact(state, masks, target)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_bad_input_kinds(tmp_path):
    with pytest.raises(ConfigError, match="weight_mask.*remove_masks"):
        K.save_compact({"l.weight_orig": torch.ones(2), "l.weight_mask": torch.ones(2)},
                       {"l.weight": torch.ones(2, dtype=torch.bool)}, tmp_path / "x")
    state = {"w": torch.eye(4, 3)}
    keep = torch.zeros(4, 3, dtype=torch.bool)
    K.save_compact(state, {"w": keep}, tmp_path / "dropped", drop_unmasked=True)
    assert torch.equal(K.load_compact(tmp_path / "dropped")["w"], torch.zeros(4, 3))
    K.save_compact(state, {}, tmp_path / "plain")
    assert torch.equal(K.load_compact(tmp_path / "plain")["w"], state["w"])  # no masks: stored as is
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="not a deepcuts compact checkpoint"):
        K.load_compact(tmp_path / "other")


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    state, masks = sample(torch.float32)
    path = K.save_compact(state, masks, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(K, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        K.save_compact(state, masks, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_pruned_bert_exported_compact_gives_the_same_outputs(make_cfg, tmp_path):
    cfg = make_cfg("data=stsb")
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    prunable = B.prunable_parameters(model, cfg.prune.include)
    masks = M.build_masks({k: p.detach().abs() for k, p in prunable.items()}, 0.3, "layer")
    M.apply_masks(model, masks)
    path = K.export_compact(model, masks, tmp_path / "export")
    assert path == tmp_path / "export" / K.COMPACT_FILE
    assert M.current_masks(model).keys() == masks.keys()  # the model keeps its masks

    fresh = build_model(make_cfg("data=stsb", "seed=1"), tok)  # other initial weights
    assert not torch.equal(fresh.head.weight, model.head.weight)
    K.load_compact_into(fresh, path)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tok.vocab_size, (4, 12), generator=g)
    attention = torch.ones(4, 12, dtype=torch.long)
    attention[1, 7:] = attention[3, 4:] = 0
    types = torch.zeros_like(ids)
    model.eval(), fresh.eval()
    with torch.no_grad():
        want, got = model(ids, attention, types), fresh(ids, attention, types)
    assert (got - want).abs().max() <= 1e-6
    for name, keep in masks.items():
        loaded = fresh.get_parameter(name)
        assert not loaded[~keep].any() and torch.equal(loaded[keep], prunable[name][keep])
    with pytest.raises(ConfigError, match="without masks attached"):
        K.load_compact_into(model, path)
    # the same file from the masks attached to the model
    assert torch.equal(K.load_compact(K.export_compact(model, None, tmp_path / "again"))["head.weight"],
                       model.head.weight)
