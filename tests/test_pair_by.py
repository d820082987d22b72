"""Paired differences across one config key (``--pair-by structure.kind=none``) over synthetic
run folders: exact per-seed differences, unpaired seeds, sub-keys as variants, what never pairs,
the CSV and Markdown section, the CLI and its errors."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as st

from deepcuts.analysis.compare import PAIRED, PairByError, paired_across
from deepcuts.analysis.render.markdown import render_paired_across
from deepcuts.analysis.render.report import write_report
from deepcuts.analysis.runs import collect_runs

REPO = Path(__file__).resolve().parents[1]
HEADS = {"kind": "heads_neurons", "group_score": "sum", "scope": None, "min_heads": 1}
MASKED = {"kind": "none"}


def write_run(folder: Path, config: dict | None = None, **fields) -> Path:
    """A run folder as ``train.py`` leaves it (as in tests/test_report.py)."""
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    if config is not None:
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    results = {
        "status": "complete", "model": "minilm", "scope": "layer", "ratio_basis": "bert_base",
        "keep_fraction": 0.5, "prunable_sparsity": 0.5, "pruned_last_epoch": {}, "timings_s": {},
        "selection": "last", **fields,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def run(root: Path, strategy: str, ratio: float, seed: int, pruned: float,
        structure: dict, achieved: float | None = None, lr: float = 5e-05,
        rewind: str = "finetuned") -> Path:
    """An STS-B run of ``strategy`` at ``ratio`` with this ``structure`` config."""
    kind = structure["kind"] + "".join(f"_{v}" for k, v in structure.items() if k != "kind")
    folder = root / f"{strategy}_r{ratio}_{kind}_lr{lr}_{rewind}_s{seed}"
    config = {
        "seed": seed, "ratio": ratio, "output_dir": str(folder), "rewind": rewind,
        "data": {"name": "stsb", "monitor": "pearson", "monitor_mode": "max", "num_workers": 0},
        "strategy": {"name": strategy, "seed": seed, "scope": "layer"},
        "structure": structure, "optimizer": {"lr": lr},
    }
    return write_run(folder, config, data="stsb", strategy=strategy, ratio=ratio, seed=seed,
                     monitor="pearson", achieved_ratio=ratio if achieved is None else achieved,
                     dense={"pearson": 0.85}, pruned={"pearson": pruned})


STRUCT = [0.80, 0.78, 0.83]  # heads_neurons, seeds 0-2
MASK = [0.79, 0.80, 0.80]  # none, seeds 0-2
DIFFS = [0.01, -0.02, 0.03]


def make_pair(root: Path, strategy: str = "gradcam_shift", ratio: float = 2.0) -> None:
    for seed in range(3):
        run(root, strategy, ratio, seed, STRUCT[seed], HEADS, achieved=ratio - 0.01 * seed)
        run(root, strategy, ratio, seed, MASK[seed], MASKED)


def test_per_seed_differences_mean_and_intervals_match_hand_computed(tmp_path):
    make_pair(tmp_path)
    df, _ = collect_runs([tmp_path])
    table = paired_across(df, "structure.kind", "none")
    assert len(table) == 1
    row = table.iloc[0]
    assert row["structure.kind"] == "heads_neurons" and row["baseline"] == "none"
    assert row["strategy"] == "gradcam_shift" and row["ratio"] == 2.0
    mean = statistics.mean(DIFFS)
    half = st.t.ppf(0.975, 2) * statistics.stdev(DIFFS) / math.sqrt(3)
    assert row["mean_diff"] == pytest.approx(mean, abs=1e-12)
    assert (row["t_low"], row["t_high"]) == pytest.approx((mean - half, mean + half), abs=1e-12)
    assert row["boot_low"] <= mean <= row["boot_high"]
    assert row["seeds"] == 3 and row["paired_seeds"] == "0 1 2" and row["unpaired_seeds"] == ""
    assert row["wins"] == 2 and row["covers_zero"]
    assert row["method_mean"] == pytest.approx(statistics.mean(STRUCT), abs=1e-12)
    assert row["baseline_mean"] == pytest.approx(statistics.mean(MASK), abs=1e-12)
    assert row["achieved_ratio_mean"] == pytest.approx(1.99, abs=1e-12)
    assert row["baseline_achieved_ratio_mean"] == pytest.approx(2.0, abs=1e-12)
    assert "no difference detected with 3 seeds" in row["verdict"]
    # the paired.csv columns, in their order, then the achieved ratios of both sides
    cols = list(table.columns)
    assert cols[cols.index("control") + 1:] == [*PAIRED, "achieved_ratio_mean",
                                                 "baseline_achieved_ratio_mean"]


def test_unpaired_seeds_are_reported_and_left_out(tmp_path):
    for seed, value in {0: 0.80, 1: 0.78, 2: 0.83, 3: 0.10, 5: math.nan}.items():
        run(tmp_path, "gradcam_shift", 2.0, seed, value, HEADS)
    for seed, value in {0: 0.79, 1: 0.80, 2: 0.80, 4: 0.99, 5: 0.80}.items():
        run(tmp_path, "gradcam_shift", 2.0, seed, value, MASKED)
    row = paired_across(collect_runs([tmp_path])[0], "structure.kind", "none").iloc[0]
    assert row["seeds"] == 3 and row["paired_seeds"] == "0 1 2"
    assert row["unpaired_seeds"] == "3 4 5"  # one side only, or NaN on one side
    assert row["mean_diff"] == pytest.approx(statistics.mean(DIFFS), abs=1e-12)
    assert row["verdict"].endswith("left out: seed 3: no reference run; seed 4: reference only; "
                                   "seed 5: NaN on the method side")


def test_sub_keys_do_not_block_pairing_and_are_the_variant(tmp_path):
    make_pair(tmp_path)
    for seed in range(3):  # a second group score: only structured runs have the key
        run(tmp_path, "gradcam_shift", 2.0, seed, MASK[seed] - 0.05,
            {**HEADS, "group_score": "mean"})
    df, _ = collect_runs([tmp_path])
    table = paired_across(df, "structure.kind", "none")
    assert len(table) == 2 and (table["seeds"] == 3).all()
    assert "structure.group_score" not in table.columns  # a variant, not a cell key
    by = table.set_index("variant")["mean_diff"]
    assert by.to_dict() == pytest.approx({
        "structure.group_score=mean, structure.min_heads=1, structure.scope=null": -0.05,
        "structure.group_score=sum, structure.min_heads=1, structure.scope=null":
            statistics.mean(DIFFS)}, abs=1e-12)
    assert (table["baseline_variant"] == "").all()

    # the other way round: each structured variant is a reference of its own
    back = paired_across(df, "structure.kind", "heads_neurons")
    assert list(back["structure.kind"]) == ["none", "none"] and (back["variant"] == "").all()
    assert sorted(back["baseline_variant"].str.split(",").str[0]) == [
        "structure.group_score=mean", "structure.group_score=sum"]
    sum_row = back[back["baseline_variant"].str.startswith("structure.group_score=sum")].iloc[0]
    assert sum_row["mean_diff"] == pytest.approx(-statistics.mean(DIFFS), abs=1e-12)
    assert sum_row["seeds"] == 3 and sum_row["baseline"] == "heads_neurons"


def test_other_strategy_ratio_or_setting_never_pairs(tmp_path):
    make_pair(tmp_path)
    for seed in range(3):
        # another strategy with only masked runs: nothing of its own to pair
        run(tmp_path, "layer_mag_weight", 2.0, seed, 0.10, MASKED)
        # structured at ratio 3 with no masked run at ratio 3: listed, not paired
        run(tmp_path, "gradcam_shift", 3.0, seed, 0.50, HEADS)
        # structured with another learning rate (a sweep key outside structure.*): no reference
        run(tmp_path, "gradcam_shift", 2.0, seed, 0.40, HEADS, lr=1e-4)
    df, _ = collect_runs([tmp_path])
    table = paired_across(df, "structure.kind", "none")
    assert set(table["strategy"]) == {"gradcam_shift"}
    assert "optimizer.lr" in table.columns
    paired = table[table["seeds"] > 0]
    assert len(paired) == 1
    row = paired.iloc[0]
    assert (row["ratio"], row["optimizer.lr"]) == (2.0, 5e-05)
    assert row["mean_diff"] == pytest.approx(statistics.mean(DIFFS), abs=1e-12)
    assert row["baseline_mean"] == pytest.approx(statistics.mean(MASK), abs=1e-12)
    lone = table[table["seeds"] == 0]
    assert len(lone) == 2 and lone["unpaired_seeds"].eq("0 1 2").all()
    assert lone["mean_diff"].isna().all() and lone["verdict"].str.contains("not paired").all()
    assert sorted(zip(lone["ratio"], lone["optimizer.lr"], strict=True)) == [(2.0, 1e-4), (3.0, 5e-05)]


def test_a_top_level_key_pairs_too(tmp_path):
    for seed in range(3):
        run(tmp_path, "gradcam_shift", 2.0, seed, MASK[seed], MASKED)
        run(tmp_path, "gradcam_shift", 2.0, seed, MASK[seed] - 0.19 - 0.01 * seed, MASKED,
            rewind="pretrained")
    df, _ = collect_runs([tmp_path])
    row = paired_across(df, "rewind", "finetuned").iloc[0]
    assert row["rewind"] == "pretrained" and row["seeds"] == 3 and row["wins"] == 0
    assert row["mean_diff"] == pytest.approx(-0.2, abs=1e-12)
    assert "rewind=pretrained worse than rewind=finetuned with 3 seeds" in row["verdict"]
    # a config key no sweep varies is accepted and simply has nothing to pair
    assert paired_across(df, "structure.kind", "none").empty


def test_bad_key_or_reference_is_an_error_naming_what_there_is(tmp_path):
    make_pair(tmp_path)
    df, _ = collect_runs([tmp_path])
    with pytest.raises(PairByError, match=r"`structure.knd`.*sweep keys: .*`structure.kind`"):
        paired_across(df, "structure.knd", "none")
    with pytest.raises(PairByError, match=r"structure.kind=nope; its values: heads_neurons, none"):
        paired_across(df, "structure.kind", "nope")
    with pytest.raises(PairByError, match="--baselines"):
        paired_across(df, "strategy", "gradcam_shift")
    with pytest.raises(PairByError, match="once"):
        write_report([tmp_path], tmp_path / "out", html=False,
                     pair_by=[("structure.kind", "none"), ("structure.kind", "heads_neurons")])
    with pytest.raises(PairByError):
        write_report([tmp_path], tmp_path / "out", html=False, pair_by=[("rewnd", "x")])
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_write_report_csv_and_markdown_section(tmp_path):
    make_pair(tmp_path)
    result = write_report([tmp_path], tmp_path / "out", html=False,
                          pair_by=[("structure.kind", "none")])
    csv = pd.read_csv(tmp_path / "out" / "paired_structure.kind.csv")
    assert result["paired_across_csv"] == {"structure.kind": tmp_path / "out"
                                           / "paired_structure.kind.csv"}
    assert len(csv) == 1 and csv["mean_diff"].iloc[0] == pytest.approx(statistics.mean(DIFFS))
    paired_cols = list(pd.read_csv(tmp_path / "out" / "paired.csv").columns)
    assert [c for c in csv.columns if c in PAIRED] == paired_cols[-len(PAIRED):]
    md = result["markdown"].read_text()
    head = "## Paired across `structure.kind` (reference `none`)"
    assert head in md
    part = md.split(head, 1)[1].split("\n## ", 1)[0]
    assert "### stsb (pearson): paired across `structure.kind`" in part
    assert ("| gradcam_shift | 2 | last | heads_neurons | structure.group_score=sum, "
            "structure.min_heads=1, structure.scope=null | none | 1.99 vs 2.00 | 3 | +0.0067 |"
            in part)
    assert "| 2/3 | the 95% interval covers 0" in part


def test_render_without_pairs():
    empty = pd.DataFrame(columns=["data", "structure.kind"])
    text = render_paired_across(empty, "structure.kind", "none", "structure.kind")
    assert text.startswith("## Paired across `structure.kind` (reference `none`)")
    assert "No pairs" in text


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "experiments/report.py", *args, "--no-masks"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_pair_by_and_its_errors(tmp_path):
    make_pair(tmp_path / "runs")
    out = tmp_path / "out"
    done = _cli(str(tmp_path / "runs"), "--out", str(out), "--pair-by", "structure.kind=none")
    assert done.returncode == 0, done.stderr
    assert (out / "paired_structure.kind.csv").is_file()
    assert "## Paired across `structure.kind` (reference `none`)" in (out / "report.md").read_text()
    assert "## Paired across `structure.kind`" in done.stdout
    assert "paired_structure.kind.csv" in done.stdout

    bad = tmp_path / "bad"
    key = _cli(str(tmp_path / "runs"), "--out", str(bad), "--pair-by", "structure.knd=none")
    assert key.returncode == 2 and "structure.knd" in key.stderr
    assert "sweep keys: `structure.group_score`, `structure.kind`" in key.stderr
    ref = _cli(str(tmp_path / "runs"), "--out", str(bad), "--pair-by", "structure.kind=nope")
    assert ref.returncode == 2 and "its values: heads_neurons, none" in ref.stderr
    shape = _cli(str(tmp_path / "runs"), "--out", str(bad), "--pair-by", "structure.kind")
    assert shape.returncode == 2 and "KEY=REFERENCE" in shape.stderr
    assert not bad.exists()


def test_pair_by_does_not_import_torch():
    code = "import sys, deepcuts.analysis.compare, deepcuts.analysis.render.report; sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr or "pair_by imported torch"


def test_a_numeric_reference_is_read_as_the_config_would(tmp_path):
    for seed in range(3):
        run(tmp_path, "gradcam_shift", 2.0, seed, MASK[seed], MASKED)
        run(tmp_path, "gradcam_shift", 2.0, seed, STRUCT[seed], MASKED, lr=1e-4)
    row = paired_across(collect_runs([tmp_path])[0], "optimizer.lr", "5e-5").iloc[0]
    assert row["optimizer.lr"] == 1e-4 and row["seeds"] == 3
    assert row["mean_diff"] == pytest.approx(statistics.mean(DIFFS), abs=1e-12)
    assert row["baseline"] == "5e-05"  # as the config has it
