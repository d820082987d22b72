"""The report carries every metric of a task, the constant predictor's dev score as a reference
(the majority class; the dev mean for regression) and the achieved ratio on the x axis where it
differs from the requested one. Synthetic run folders and dev files in tmp."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from deepcuts.analysis.reference import dev_references
from deepcuts.analysis.render.plots import plot_ratio
from deepcuts.analysis.render.report import write_report
from tests.test_report import section, write_run

STSB_SCORES = [0.0, 1.5, 2.0, 4.5, 5.0, 3.2, 2.8]
COLA_LABELS = [1, 1, 0, 1, 0, 1, 1]  # 5 of 7 acceptable: the majority is label 1


def stsb_data(root: Path | str, **extra) -> dict:
    return {"name": "stsb", "root": str(root), "folder": "STS-B", "eval_file": "dev.tsv",
            "header": True, "columns": None, "text_columns": ["sentence1", "sentence2"],
            "label_column": "score", "task": {"type": "regression", "min": 0.0, "max": 5.0},
            "monitor": "pearson", "monitor_mode": "max", "max_eval_samples": None, **extra}


def cola_data(root: Path | str, **extra) -> dict:
    return {"name": "cola", "root": str(root), "folder": "CoLA", "eval_file": "dev.tsv",
            "header": False, "columns": ["source", "label", "mark", "sentence"],
            "text_columns": ["sentence"], "label_column": "label",
            "task": {"type": "classification", "num_labels": 2}, "monitor": "mcc",
            "monitor_mode": "max", "max_eval_samples": None, **extra}


def write_dev_files(glue: Path) -> None:
    (glue / "STS-B").mkdir(parents=True)
    lines = ["index\tgenre\tsentence1\tsentence2\tscore"]
    lines += [f"{i}\tmain\tA \"quoted\" man.\tA man.\t{s:.3f}" for i, s in enumerate(STSB_SCORES)]
    (glue / "STS-B" / "dev.tsv").write_text("\n".join(lines) + "\n")
    (glue / "CoLA").mkdir(parents=True)
    (glue / "CoLA" / "dev.tsv").write_text("".join(
        f"gj04\t{y}\t{'' if y else '*'}\tThe sailors rode the breeze.\n" for y in COLA_LABELS))


def make_runs(root: Path, glue: Path, achieved: dict[float, float] | None = None) -> None:
    """STS-B (pearson, spearmanr, mse, loss) and CoLA (mcc, acc, f1, loss) runs: 2 strategies x
    2 ratios x 2 seeds each, with config.yaml naming the dev files under ``glue``."""
    achieved = achieved or {}
    for strategy, bonus in (("layer_mag_weight", 0.0), ("gradcam_shift", 0.02)):
        for ratio in (2.0, 3.0):
            for seed in range(2):
                level = 0.8 + bonus - 0.05 * ratio + 0.01 * seed
                common = {"strategy": strategy, "ratio": ratio, "seed": seed,
                          "achieved_ratio": achieved.get(ratio, ratio)}
                write_run(root / f"stsb_{strategy}_{ratio}_{seed}",
                          config={"seed": seed, "data": stsb_data(glue)}, data="stsb",
                          monitor="pearson",
                          pruned={"pearson": level, "spearmanr": level - 0.01, "mse": 1 - level,
                                  "loss": 1 - level},
                          dense={"pearson": 0.88, "spearmanr": 0.87, "mse": 0.5, "loss": 0.5},
                          **common)
                write_run(root / f"cola_{strategy}_{ratio}_{seed}",
                          config={"seed": seed, "data": cola_data(glue)}, data="cola",
                          monitor="mcc",
                          pruned={"mcc": level - 0.4, "acc": level, "f1": level + 0.05,
                                  "loss": 0.6},
                          dense={"mcc": 0.5, "acc": 0.82, "f1": 0.87, "loss": 0.5}, **common)


@pytest.fixture
def report(tmp_path):
    glue = tmp_path / "glue"
    write_dev_files(glue)
    make_runs(tmp_path / "sweep", glue)
    return write_report([tmp_path / "sweep"], tmp_path / "report", html=False)


def test_markdown_has_every_metric_monitor_first_and_loss_only_in_the_csv(report):
    md = report["markdown"].read_text()
    stsb = section(md, "## stsb (pearson)", "## Paired")
    assert ("| achieved ratio | pruned pearson | pruned spearmanr | pruned mse | pruned pearson "
            "(last epoch) | dense pearson | dense spearmanr | dense mse | seeds |") in stsb
    cola = section(md, "## cola (mcc)", "## stsb")
    assert ("| achieved ratio | pruned mcc | pruned acc | pruned f1 | pruned mcc (last epoch) | "
            "dense mcc | dense acc | dense f1 | seeds |") in cola
    assert "loss" not in stsb and "loss" not in cola
    row = [line for line in cola.splitlines() if line.startswith("| gradcam_shift | 3 |")][0]
    acc = [0.8 + 0.02 - 0.15, 0.8 + 0.02 - 0.15 + 0.01]
    assert f"| {statistics.mean(acc):.4f} ± {statistics.stdev(acc):.4f} |" in row
    csv = pd.read_csv(report["csv"])
    assert {"pruned_loss_mean", "dense_loss_mean", "pruned_f1_mean",
            "pruned_spearmanr_mean"} <= set(csv.columns)


def test_reference_values_equal_the_hand_computed_ones(report):
    refs = report["references"]
    (cola,) = refs["cola"]
    share = 5 / 7
    assert cola.values == pytest.approx({"mcc": 0.0, "acc": share,
                                         "f1": 2 * share / (1 + share)})  # always 1: recall 1
    (stsb,) = refs["stsb"]
    assert stsb.values["mse"] == pytest.approx(statistics.pvariance(STSB_SCORES), abs=1e-12)
    assert stsb.values["pearson"] == 0.0 and stsb.values["spearmanr"] == 0.0
    assert "loss" not in stsb.values and not cola.notes and not stsb.notes

    md = report["markdown"].read_text()
    cola_md = section(md, "## cola (mcc)", "## stsb")
    assert "majority class (label 1, 71.4% of 7 dev examples)" in cola_md
    assert "mcc 0, acc 0.7143, f1 0.8333" in cola_md
    assert cola_md.count("Reference, majority class") == 1  # no control table here
    stsb_md = section(md, "## stsb (pearson)", "## Paired")
    var = statistics.pvariance(STSB_SCORES)
    assert f"mse {var:.4g} (the dev label variance)" in stsb_md
    assert ("pearson 0, spearmanr 0 (undefined for a constant prediction; shown as no "
            "correlation), mse") in stsb_md

    csv = pd.read_csv(report["csv"]).set_index("data")
    assert csv.loc["cola", "reference_acc"].tolist() == pytest.approx([share] * 4)
    assert csv.loc["stsb", "reference_mse"].tolist() == pytest.approx([var] * 4)
    assert csv.loc["stsb", "reference_acc"].isna().all()


def test_plots_have_a_panel_per_metric_and_are_written(report):
    for data in ("stsb", "cola"):
        png = report["plots"][data]
        assert png.is_file() and png.stat().st_size > 5000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary, runs = report["summary"], report["runs"]
    part = summary[summary["data"] == "cola"]
    fig = plot_ratio("cola", part, runs[runs["data"] == "cola"], report["group_keys"],
                     report["plots"]["cola"].with_suffix(".again.png"),
                     references=report["references"]["cola"])
    assert [ax.get_ylabel() for ax in fig.axes] == ["dev mcc", "dev acc", "dev f1"]
    # the reference is a labelled line where it is near the data, else named in a corner
    labels = fig.axes[1].get_legend_handles_labels()[1]
    assert "majority class: 0.714" in labels
    assert fig.axes[0].get_xlabel().startswith("compression ratio")


def test_text_labels_an_extra_dev_set_and_a_subset(tmp_path):
    glue = tmp_path / "glue"
    (glue / "MNLI").mkdir(parents=True)
    gold = ["neutral", "entailment", "neutral", "contradiction", "entailment", "entailment"]
    (glue / "MNLI" / "dev_matched.tsv").write_text(
        "sentence1\tsentence2\tgold_label\n" + "".join(f"a\tb\t{g}\n" for g in gold))
    (glue / "MNLI" / "dev_mismatched.tsv").write_text(
        "sentence1\tsentence2\tgold_label\n" + "".join(
            f"a\tb\t{g}\n" for g in ["contradiction"] * 3 + ["neutral"]))
    data = {"name": "mnli", "root": str(glue), "folder": "MNLI", "eval_file": "dev_matched.tsv",
            "extra_eval_files": {"mismatched": "dev_mismatched.tsv"}, "header": True,
            "columns": None, "label_column": "gold_label", "max_eval_samples": 4,
            "task": {"type": "classification", "num_labels": 3,
                     "labels": ["entailment", "neutral", "contradiction"]}}
    for seed in range(2):
        write_run(tmp_path / "runs" / f"s{seed}", config={"seed": seed, "data": data},
                  data="mnli", strategy="random", ratio=2.0, seed=seed, monitor="acc",
                  achieved_ratio=2.0, pruned={"acc": 0.4, "mismatched/acc": 0.41},
                  dense={"acc": 0.8, "mismatched/acc": 0.81})
    result = write_report([tmp_path / "runs"], tmp_path / "report", html=False)
    (ref,) = result["references"]["mnli"]
    # the first 4 rows as the run evaluated them: neutral 2, entailment 1, contradiction 1
    assert ref.values == pytest.approx({"acc": 0.5, "mismatched/acc": 0.75})
    md = result["markdown"].read_text()
    assert "majority class (label neutral (id 1), 50.0% of 4 dev examples)" in md
    assert "majority class (label contradiction (id 2), 75.0% of 4 dev examples)" in md
    assert "| pruned acc | pruned mismatched/acc |" in md


def test_no_reference_line_and_a_note_when_the_dev_file_is_missing(tmp_path):
    make_runs(tmp_path / "sweep", tmp_path / "nowhere")
    result = write_report([tmp_path / "sweep"], tmp_path / "report", html=False)
    for data in ("stsb", "cola"):
        (ref,) = result["references"][data]
        assert ref.values == {} and len(ref.notes) == 1
        assert result["plots"][data].stat().st_size > 5000
    md = result["markdown"].read_text()
    assert "Reference, " not in md
    note = "No reference line for the dev set: its file `CoLA/dev.tsv` is not under data.root"
    assert note in section(md, "## cola (mcc)", "## stsb")
    assert str(tmp_path) not in md  # issue 22, item 7: no machine paths
    assert not any(c.startswith("reference_") for c in pd.read_csv(result["csv"]).columns)


def test_a_relative_root_and_glue_dir(tmp_path, monkeypatch):
    """data.root null (or the unresolved ``${oc.env:GLUE_DIR,null}``): $GLUE_DIR, as train.py."""
    glue = tmp_path / "glue"
    write_dev_files(glue)
    run = write_run(tmp_path / "runs" / "s0",
                    config={"seed": 0, "data": cola_data("${oc.env:GLUE_DIR,null}")},
                    data="cola", strategy="random", ratio=2.0, seed=0, monitor="mcc",
                    achieved_ratio=2.0, pruned={"mcc": 0.0, "acc": 0.7}, dense={"mcc": 0.5})
    monkeypatch.setenv("GLUE_DIR", str(glue))
    runs = pd.DataFrame({"data": ["cola"], "metric": ["mcc"], "path": [str(run)],
                         "pruned_mcc": [0.0], "pruned_acc": [0.7]})
    (ref,) = dev_references(runs)["cola"]
    assert ref.values == pytest.approx({"mcc": 0.0, "acc": 5 / 7})


def test_achieved_ratio_on_the_x_axis_when_it_differs(tmp_path):
    glue = tmp_path / "glue"
    write_dev_files(glue)
    make_runs(tmp_path / "sweep", glue, achieved={2.0: 1.44, 3.0: 1.68})
    result = write_report([tmp_path / "sweep"], tmp_path / "report", html=False)
    summary, runs = result["summary"], result["runs"]
    assert set(summary["ratio"]) == {2.0, 3.0}  # still grouped by the requested ratio
    part = summary[summary["data"] == "stsb"]
    fig = plot_ratio("stsb", part, runs[runs["data"] == "stsb"], result["group_keys"],
                     tmp_path / "again.png", references=result["references"]["stsb"])
    for ax in fig.axes:
        assert ax.get_xlabel().startswith("achieved compression ratio (requested c = 2, 3)")
        assert list(ax.get_xticks()) == pytest.approx([1.44, 1.68])
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1.44\n(c=2)", "1.68\n(c=3)"]
        xs = sorted({round(float(x), 6) for line in ax.get_lines() for x in line.get_xdata()
                     if not math.isnan(float(x))} - {0.0, 1.0})  # axhline spans 0..1
        assert xs == pytest.approx([1.44, 1.68])
    # Pearson 0 is far below 0.65-0.88: named in a corner, not drawn (the panel stays readable)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("constant (dev mean): 0 (below the axis)" in t for t in texts)
    md = result["markdown"].read_text()
    assert "| 1.44 |" in md and "| 1.68 |" in md


def test_html_report_carries_the_metrics_the_reference_and_the_achieved_axis(tmp_path):
    glue = tmp_path / "glue"
    write_dev_files(glue)
    make_runs(tmp_path / "sweep", glue, achieved={2.0: 1.44, 3.0: 1.68})
    page = write_report([tmp_path / "sweep"], tmp_path / "report", masks=False)["html"]
    text = page.read_text(encoding="utf-8")
    assert "pruned spearmanr" in text and "dense f1" in text
    assert "Reference: majority class (label 1, 71.4% of 7 dev examples)" in text
    assert "majority class (mcc 0)" in text  # the line on the monitored metric's plot
    assert "achieved compression ratio (requested c = 2, 3)" in text
