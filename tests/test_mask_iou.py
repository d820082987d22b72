"""Mask IoU analysis: hand-made masks, the random baseline, head slicing, which runs are compared
with which (variants, strategy settings, copies, reruns), and an end-to-end run on fake run folders
(no training)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from deepcuts.analysis import mask_iou as MI
from deepcuts.analysis.render import masks as RM

HIDDEN, INTER, HEADS, LAYERS = 4, 8, 2, 2


def bert_shapes(layers: int = LAYERS, hidden: int = HIDDEN, inter: int = INTER) -> dict[str, tuple]:
    shapes = {}
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for part in ("query", "key", "value"):
            shapes[f"{p}attention.self.{part}.weight"] = (hidden, hidden)
            shapes[f"{p}attention.self.{part}.bias"] = (hidden,)
        shapes[f"{p}attention.output.dense.weight"] = (hidden, hidden)
        shapes[f"{p}intermediate.dense.weight"] = (inter, hidden)
        shapes[f"{p}output.dense.weight"] = (hidden, inter)
    shapes["bert.pooler.dense.weight"] = (hidden, hidden)
    shapes["bert.pooler.dense.bias"] = (hidden,)
    return shapes


def random_masks(seed: int, shapes: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=gen) < 0.4 for name, shape in (shapes or bert_shapes()).items()}


def write_run(folder: Path, strategy: str, masks: dict, seed: int = 0, status: str = "complete",
              with_masks: bool = True, config: dict | None = None, run_key: str | None = None,
              dense_key: str | None = None, selection: str = "last") -> Path:
    """A run folder as the outputs contract has it: results.json (``run_key``: default unique per
    folder), masks.safetensors, and ``config`` as config.yaml when given."""
    folder.mkdir(parents=True)
    if with_masks:
        save_file({k: v.contiguous() for k, v in masks.items()}, str(folder / "masks.safetensors"))
    results = {"status": status, "data": "sst2", "model": "tiny", "strategy": strategy,
               "ratio": 6.8, "ratio_basis": "prunable", "seed": seed, "monitor": "acc",
               "achieved_ratio": 6.8, "dense": {"acc": 0.9}, "pruned": {"acc": 0.8},
               "run_key": run_key or f"job-{folder.as_posix()}", "keep_fraction": 0.147,
               "num_attention_heads": HEADS, "selection": selection,
               **({"stage_keys": {"dense": dense_key}} if dense_key else {})}
    (folder / "results.json").write_text(json.dumps(results))
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def pairs(tensors: pd.DataFrame) -> list[tuple]:
    """The (variant, strategy_a, strategy_b, seed) compared, once each."""
    rows = tensors[["variant", "strategy_a", "strategy_b", "seed"]].drop_duplicates()
    return sorted(rows.itertuples(index=False, name=None))


# --- IoU and the random baseline -------------------------------------------------------------


def test_iou_hand_made():
    assert MI.iou(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])) == pytest.approx(1 / 3)
    a = torch.tensor([[True, False], [True, True]])
    assert MI.iou(a, a) == 1.0
    assert MI.iou(a, ~a) == 0.0
    assert MI.iou(torch.zeros(5, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)) == 1.0
    with pytest.raises(ValueError, match=r"\(4,\) and \(3,\)"):
        MI.iou(torch.ones(4, dtype=torch.bool), torch.ones(3, dtype=torch.bool))


def test_random_iou_closed_form():
    assert MI.random_iou(0.147, 0.147) == pytest.approx(0.0794, abs=1e-4)
    assert MI.random_iou(1 - 0.147, 1 - 0.147) == pytest.approx(0.743, abs=1e-3)
    assert MI.random_iou(1.0, 1.0) == 1.0
    assert MI.random_iou(0.0, 0.0) == 1.0  # both empty
    assert MI.random_iou(0.0, 0.5) == 0.0
    with pytest.raises(ValueError):
        MI.random_iou(1.5, 0.2)


def test_random_iou_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    n = 10_000
    for p, q in ((0.147, 0.147), (0.3, 0.6)):
        ious = []
        for _ in range(100):
            a = torch.zeros(n, dtype=torch.bool)
            b = torch.zeros(n, dtype=torch.bool)
            a[torch.randperm(n, generator=gen)[: round(p * n)]] = True
            b[torch.randperm(n, generator=gen)[: round(q * n)]] = True
            ious.append(MI.iou(a, b))
        assert sum(ious) / len(ious) == pytest.approx(MI.random_iou(p, q), abs=0.01)


def test_layer_index():
    assert MI.layer_index("bert.encoder.layer.0.attention.self.query.weight") == 0
    assert MI.layer_index("bert.encoder.layer.11.output.dense.weight") == 11
    assert MI.layer_index("bert.pooler.dense.weight") is None
    assert MI.layer_label("bert.pooler.dense.bias") == "pooler"
    assert MI.layer_label("bert.encoder.layer.3.intermediate.dense.weight") == "3"


# --- heads --------------------------------------------------------------------------------------


def test_head_slices_pick_rows_and_columns():
    p = "bert.encoder.layer.0."
    index = torch.arange(HIDDEN * HIDDEN).reshape(HIDDEN, HIDDEN)
    masks = {
        # head 0 = rows 0-1, head 1 = rows 2-3: query keeps only head 0's rows, key only head 1's
        f"{p}attention.self.query.weight": torch.tensor([[1] * 4, [1] * 4, [0] * 4, [0] * 4]).bool(),
        f"{p}attention.self.query.bias": torch.tensor([1, 0, 0, 0]).bool(),
        f"{p}attention.self.key.weight": torch.tensor([[0] * 4, [0] * 4, [1] * 4, [1] * 4]).bool(),
        f"{p}attention.self.key.bias": torch.tensor([0, 0, 0, 1]).bool(),
        f"{p}attention.self.value.weight": index % 2 == 0,
        f"{p}attention.self.value.bias": torch.tensor([0, 1, 1, 0]).bool(),
        # columns 0-1 belong to head 0: keep column 0 only
        f"{p}attention.output.dense.weight": torch.tensor([[1, 0, 0, 0]] * 4).bool(),
        f"{p}intermediate.dense.weight": torch.ones(INTER, HIDDEN, dtype=torch.bool),
    }
    heads = MI.head_slices(masks, 0, HEADS)
    assert set(heads) == {0, 1}
    expected_keys = {f"{part}.{kind}" for part in ("query", "key", "value") for kind in ("weight", "bias")}
    assert set(heads[0]) == set(heads[1]) == expected_keys | {"attn_out.weight"}
    assert heads[0]["query.weight"].all() and not heads[1]["query.weight"].any()
    assert not heads[0]["key.weight"].any() and heads[1]["key.weight"].all()
    assert heads[0]["query.bias"].tolist() == [True, False]
    assert heads[1]["query.bias"].tolist() == [False, False]
    assert heads[1]["key.bias"].tolist() == [False, True]
    assert heads[0]["value.bias"].tolist() == [False, True]
    assert heads[1]["value.bias"].tolist() == [True, False]
    assert torch.equal(heads[1]["value.weight"], (index % 2 == 0)[2:4])
    assert heads[0]["query.weight"].shape == (2, HIDDEN)
    # attention output: columns, not rows
    assert heads[0]["attn_out.weight"].shape == (HIDDEN, 2)
    assert heads[0]["attn_out.weight"].tolist() == [[True, False]] * 4
    assert not heads[1]["attn_out.weight"].any()
    with pytest.raises(ValueError, match="3 heads"):
        MI.head_slices(masks, 0, 3)


def test_head_iou_per_head():
    masks_a = random_masks(1)
    masks_b = {k: v.clone() for k, v in masks_a.items()}
    # change only head 1 of layer 0 (query rows 2-3)
    masks_b["bert.encoder.layer.0.attention.self.query.weight"][2:4] ^= True
    ious = MI.head_iou(masks_a, masks_b, 0, HEADS)
    assert ious[0] == 1.0 and ious[1] < 1.0
    assert MI.head_iou(masks_a, masks_b, 1, HEADS) == [1.0, 1.0]


# --- end to end ---------------------------------------------------------------------------------


def test_analyse_end_to_end(tmp_path):
    root = tmp_path / "multirun"
    for i, strategy in enumerate("abc"):
        write_run(root / str(i), strategy, random_masks(i))
    write_run(root / "no_masks", "d", {}, with_masks=False)
    write_run(root / "running", "e", random_masks(7), status="running")
    out = tmp_path / "analysis"
    written = RM.analyse([root], out)

    stems = ["tensor_iou", "layer_iou", "head_iou", "summary", "heatmap_mean_sst2_r6.8",
             "heatmap_min_sst2_r6.8", "layers_sst2_r6.8", "sparsity_sst2_r6.8",
             *(f"heads_sst2_r6.8_{a}_vs_{b}" for a, b in itertools.combinations("abc", 2))]
    for stem in stems:
        assert written[stem].is_file() and written[stem].stat().st_size > 0, stem
        assert written[stem].parent == out
    assert {p.name for p in written.values()} >= {"tensor_iou.csv", "summary.md", "heads_sst2_r6.8_a_vs_b.png"}

    tensors = pd.read_csv(out / "tensor_iou.csv")
    n_tensors = len(bert_shapes())
    assert len(tensors) == 3 * n_tensors
    assert set(zip(tensors["strategy_a"], tensors["strategy_b"], strict=True)) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert tensors["iou_kept"].between(0, 1).all() and tensors["iou_kept_random"].between(0, 1).all()
    layers = pd.read_csv(out / "layer_iou.csv")
    assert len(layers) == 3 * (LAYERS + 1)  # two encoder layers and the pooler
    assert (layers["iou_kept_min"] <= layers["iou_kept_mean"] + 1e-12).all()
    heads = pd.read_csv(out / "head_iou.csv")
    assert len(heads) == 3 * LAYERS * HEADS

    summary = (out / "summary.md").read_text()
    assert "× chance" in summary and "| a | b |" in summary
    assert "no masks.safetensors" in summary and "status 'running'" in summary

    run_a = MI.load_run(root / "0")
    same = MI.compare_runs(run_a, run_a)
    assert len(same) == n_tensors
    assert (same["iou_kept"] == 1.0).all() and (same["iou_pruned"] == 1.0).all()
    assert (same["density_a"] == same["density_b"]).all()
    assert MI.compare_heads(run_a, run_a)["iou_kept"].eq(1.0).all()


def test_seeds_are_compared_separately_then_averaged(tmp_path):
    for seed in (0, 1):
        for strategy in "ab":
            write_run(tmp_path / f"s{seed}{strategy}", strategy, random_masks(10 * seed + ord(strategy)), seed=seed)
    out = tmp_path / "out"
    RM.analyse([tmp_path], out)
    tensors = pd.read_csv(out / "tensor_iou.csv")
    assert sorted(tensors["seed"].unique()) == [0, 1]
    assert len(tensors) == 2 * len(bert_shapes())
    assert "seeds 0, 1" in (out / "summary.md").read_text()


def test_mismatched_masks_raise(tmp_path):
    masks_a = random_masks(0)
    masks_b = dict(masks_a)
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    masks_b[name] = torch.ones(INTER + 2, HIDDEN, dtype=torch.bool)
    run_a = write_run(tmp_path / "a", "a", masks_a)
    run_b = write_run(tmp_path / "b", "b", masks_b)
    with pytest.raises(ValueError, match=rf"{name}.*\(8, 4\).*\(10, 4\)"):
        MI.compare_runs(run_a, run_b)
    missing = {k: v for k, v in masks_a.items() if k != "bert.pooler.dense.bias"}
    run_c = write_run(tmp_path / "c", "c", missing)
    with pytest.raises(ValueError, match="bert.pooler.dense.bias"):
        MI.compare_runs(run_a, run_c)


def test_cli_main(tmp_path, capsys):
    for strategy in "ab":
        write_run(tmp_path / "runs" / strategy, strategy, random_masks(ord(strategy)))
    assert RM.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "summary.md").is_file()
    assert "tensor_iou" in capsys.readouterr().out


# --- layouts: the per-head analysis of any architecture -----------------------------------------

DISTIL_LAYOUT = {"layers": "distilbert.transformer.layer", "query": "attention.q_lin", "key": "attention.k_lin",
                 "value": "attention.v_lin", "attn_out": "attention.out_lin", "ffn_in": "ffn.lin1",
                 "ffn_out": "ffn.lin2"}


def distil_shapes(layers: int = LAYERS, hidden: int = HIDDEN, inter: int = INTER) -> dict[str, tuple]:
    shapes = {}
    for i in range(layers):
        p = f"distilbert.transformer.layer.{i}."
        for part in ("q_lin", "k_lin", "v_lin", "out_lin"):
            shapes[f"{p}attention.{part}.weight"] = (hidden, hidden)
            shapes[f"{p}attention.{part}.bias"] = (hidden,)
        shapes[f"{p}ffn.lin1.weight"] = (inter, hidden)
        shapes[f"{p}ffn.lin2.weight"] = (hidden, inter)
    return shapes


def test_layout_names_layers_and_heads():
    assert MI.layer_index("distilbert.transformer.layer.1.ffn.lin1.weight", DISTIL_LAYOUT) == 1
    assert MI.layer_index("distilbert.transformer.layer.1.ffn.lin1.weight") is None  # no layout: BERT-style
    assert MI.layer_index("bert.encoder.layer.1.output.dense.weight", DISTIL_LAYOUT) is None
    masks = random_masks(3, distil_shapes())
    heads = MI.head_slices(masks, 1, HEADS, DISTIL_LAYOUT)
    p = "distilbert.transformer.layer.1.attention."
    assert torch.equal(heads[1]["key.weight"], masks[f"{p}k_lin.weight"][2:4])
    assert torch.equal(heads[0]["attn_out.weight"], masks[f"{p}out_lin.weight"][:, 0:2])
    assert set(heads[0]) == {f"{r}.{k}" for r in ("query", "key", "value") for k in ("weight", "bias")} | {"attn_out.weight"}
    with pytest.raises(ValueError, match="no mask for"):
        MI.head_slices(masks, 1, HEADS)  # the BERT layout finds no query of this model


def test_analysis_uses_the_layout_of_results_json(tmp_path):
    for strategy in "ab":
        folder = write_run(tmp_path / strategy, strategy, random_masks(ord(strategy), distil_shapes()))
        results = json.loads((folder / "results.json").read_text())
        (folder / "results.json").write_text(json.dumps({**results, "layout": DISTIL_LAYOUT}))
    tables, runs, _ = MI.pair_tables([tmp_path])
    assert runs[0].layout == DISTIL_LAYOUT
    assert set(tables["tensor_iou"]["layer"]) == {"0", "1"}  # no "other"
    heads = tables["head_iou"]
    assert sorted(zip(heads["layer"], heads["head"], strict=True)) == [(i, h) for i in range(LAYERS) for h in range(HEADS)]


def test_layout_from_config_yaml_when_results_json_has_none(tmp_path):
    folder = write_run(tmp_path / "a", "a", random_masks(0, distil_shapes()))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"layout": DISTIL_LAYOUT, "config": {"n_heads": 4}}}))
    run = MI.load_run(folder)
    assert run.layout == DISTIL_LAYOUT
    assert MI.load_run(write_run(tmp_path / "b", "b", random_masks(0))).layout == MI.BERT_LAYOUT  # older results
    assert MI.compare_heads(run, run)["iou_kept"].eq(1.0).all()


# --- which runs are compared with which ---------------------------------------------------------


def test_a_structured_and_a_masked_variant_are_both_compared(tmp_path):
    """Runs that differ in a swept key (here structure.kind) are two variants: each variant's
    strategies are compared with each other, never across variants, and none is a duplicate."""
    for i, (kind, strategy) in enumerate(itertools.product(("none", "heads_neurons"), "ab")):
        write_run(tmp_path / f"{kind}_{strategy}", strategy, random_masks(i),
                  config={"structure": {"kind": kind}, "strategy": {"name": strategy}})
    tables, runs, skipped = MI.pair_tables([tmp_path])
    assert len(runs) == 4 and not skipped
    assert pairs(tables["tensor_iou"]) == [("structure.kind=heads_neurons", "a", "b", 0),
                                           ("structure.kind=none", "a", "b", 0)]
    assert len(tables["tensor_iou"]) == 2 * len(bert_shapes())
    grids = MI.kept_iou_grids(tables)
    assert [g.variant for g in grids] == ["structure.kind=heads_neurons", "structure.kind=none"]
    assert all(g.names == ["a", "b"] and g.seeds == 1 for g in grids)

    out = tmp_path / "out"
    written = RM.analyse([tmp_path], out)
    assert {"heatmap_mean_sst2_r6.8_structure.kind_none", "heatmap_mean_sst2_r6.8_structure.kind_heads_neurons",
            "heads_sst2_r6.8_structure.kind_none_a_vs_b"} <= set(written)
    summary = (out / "summary.md").read_text()
    assert "## sst2 · tiny · ratio 6.8 · structure.kind=none (seeds 0)" in summary
    assert "## sst2 · tiny · ratio 6.8 · structure.kind=heads_neurons (seeds 0)" in summary


def test_runs_that_differ_only_in_selection_are_two_variants(tmp_path):
    """``selection`` is a column of the report's group keys, not a sweep key: runs of both rules
    are compared within their rule, none skipped as a rerun. Mutation checked: leaving
    ``selection`` out of the variant skips two runs as older reruns."""
    for i, (rule, strategy) in enumerate(itertools.product(("dev", "last"), "ab")):
        write_run(tmp_path / f"{rule}_{strategy}", strategy, random_masks(i), selection=rule)
    tables, runs, skipped = MI.pair_tables([tmp_path])
    assert len(runs) == 4 and not skipped
    assert pairs(tables["tensor_iou"]) == [("selection=dev", "a", "b", 0), ("selection=last", "a", "b", 0)]


def test_strategy_sweep_values_make_two_members(tmp_path):
    """A strategy run at two settings of its own key is two members, labelled by the setting."""
    for sigma in (0.5, 1.0):
        write_run(tmp_path / f"sg{sigma}", "smoothgrad", random_masks(int(10 * sigma)),
                  config={"strategy": {"name": "smoothgrad", "sigma": sigma}})
    write_run(tmp_path / "b", "b", random_masks(3), config={"strategy": {"name": "b"}})
    tables, runs, skipped = MI.pair_tables([tmp_path])
    assert len(runs) == 3 and not skipped
    a, b, c = "b", "smoothgrad (strategy.sigma=0.5)", "smoothgrad (strategy.sigma=1)"
    assert pairs(tables["tensor_iou"]) == [("", a, b, 0), ("", a, c, 0), ("", b, c, 0)]
    (grid,) = MI.kept_iou_grids(tables)
    assert grid.variant == "" and grid.names == [a, b, c]
    assert [grid.z[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert 0 < grid.chance < 1


def test_identical_jobs_count_once(tmp_path):
    """A sweep copied into another folder (same run keys) is the same jobs, not a second set of
    runs: no strategy is compared with its own copy."""
    for strategy in "ab":
        write_run(tmp_path / "sweep" / strategy, strategy, random_masks(ord(strategy)))
    shutil.copytree(tmp_path / "sweep", tmp_path / "copy")
    tables, runs, skipped = MI.pair_tables([tmp_path / "sweep", tmp_path / "copy"])
    assert [r.folder for r in runs] == [tmp_path / "sweep" / s for s in "ab"]
    assert pairs(tables["tensor_iou"]) == [("", "a", "b", 0)]
    assert len(tables["tensor_iou"]) == len(bert_shapes())
    assert sorted((s.path, s.reason, s.other) for s in skipped) == [
        (tmp_path / "copy" / s, "same job (run key) as", tmp_path / "sweep" / s) for s in "ab"]


def test_a_rerun_replaces_the_older_run(tmp_path):
    """Two runs of one label, data, model, ratio, variant and seed with different run keys: the
    newest results.json counts (whatever the folder names), the older is named as skipped."""
    masks_b = random_masks(2)
    new = write_run(tmp_path / "1_new", "a", masks_b)  # same masks as b: IoU 1 proves it is used
    old = write_run(tmp_path / "2_old", "a", random_masks(1))
    write_run(tmp_path / "b", "b", masks_b)
    os.utime(old / "results.json", (1_000_000, 1_000_000))
    tables, runs, skipped = MI.pair_tables([tmp_path])
    assert sorted(r.folder.name for r in runs) == ["1_new", "b"]
    assert skipped == [MI.Skipped(old, "older rerun of", new)]
    assert tables["tensor_iou"]["iou_kept"].eq(1.0).all()
    assert skipped[0].text(lambda p: p.name) == "older rerun of 1_new"


def test_summary_prints_no_absolute_path(tmp_path):
    root = tmp_path / "runs"
    for strategy in "ab":
        write_run(root / strategy, strategy, random_masks(ord(strategy)))
    old = write_run(root / "a_old", "a", random_masks(5))
    os.utime(old / "results.json", (1_000_000, 1_000_000))
    write_run(root / "no_masks", "c", {}, with_masks=False)
    write_run(root / "running", "d", random_masks(6), status="running")
    out = tmp_path / "analysis"
    RM.analyse([root], out)
    summary = (out / "summary.md").read_text()
    assert "- `../runs/a_old`: older rerun of `../runs/a`" in summary
    assert "- `../runs/no_masks`: no masks.safetensors" in summary
    assert "- `../runs/running`: status 'running'" in summary
    assert str(tmp_path) not in summary


def test_kept_grid_is_nan_where_a_pair_was_not_compared(tmp_path):
    """Seed 0 has a and b, seed 1 a and c: b and c never met."""
    for seed, strategies in ((0, "ab"), (1, "ac")):
        for strategy in strategies:
            write_run(tmp_path / f"{strategy}{seed}", strategy, random_masks(10 * seed + ord(strategy)), seed=seed)
    (grid,) = MI.kept_iou_grids(MI.pair_tables([tmp_path])[0])
    assert grid.names == ["a", "b", "c"] and grid.seeds == 1
    assert pd.isna(grid.z[1][2]) and pd.isna(grid.z[2][1]) and 0 < grid.z[0][1] < 1


def test_no_runs_write_empty_tables(tmp_path):
    (tmp_path / "empty").mkdir()
    written = RM.analyse([tmp_path / "empty"], tmp_path / "out")
    assert sorted(written) == ["head_iou", "layer_iou", "layer_sparsity", "summary", "tensor_iou"]
    assert "Runs analysed: 0; skipped: 0." in written["summary"].read_text()
    assert MI.kept_iou_grids(MI.pair_tables([tmp_path / "empty"])[0]) == []


def test_masks_of_two_dense_models_are_not_compared(tmp_path):
    """The pairing rule of the reports: a and b share a dense model, c was scored on another one
    (e.g. re-run after a code change), so c is compared with neither and named in the skipped.
    Mutation checked: dropping the dense check in pair_tables fails it."""
    write_run(tmp_path / "a", "a", random_masks(1), dense_key="D")
    write_run(tmp_path / "b", "b", random_masks(2), dense_key="D")
    write_run(tmp_path / "c", "c", random_masks(3), dense_key="NEW")
    tables, _, skipped = MI.pair_tables([tmp_path])
    assert pairs(tables["tensor_iou"]) == [("", "a", "b", 0)]
    assert sorted((s.path.name, s.other.name) for s in skipped) == [("c", "a"), ("c", "b")]
    assert all("another dense model" in s.reason for s in skipped)
