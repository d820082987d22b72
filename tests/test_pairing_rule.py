"""One pairing rule for every report (issue 22), on small synthetic run folders: two dense models
in one seed, progress keys, zero variance, machine paths, per-key dense lines, and the shape of
``deepcuts/analysis`` (render imports computation, no circles, no private names across modules).

Each test names the mutation it was checked with: with that change to the code it fails.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from deepcuts.analysis.compare import pair, paired_across, paired_differences
from deepcuts.analysis.recovery import load_runs, recovery_table
from deepcuts.analysis.render.recovery import write_recovery
from deepcuts.analysis.render.report import write_report
from deepcuts.analysis.runs import collect_runs, sweep_keys
from deepcuts.analysis.summary import dense_lines, series, summarise

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / "deepcuts" / "analysis"


def write_run(root: Path, name: str, *, strategy: str, seed: int, pruned: float, dense_key: str = "D",
              config: dict | None = None, model: str = "minilm", dense: float = 0.85,
              recipe: dict | None = None, run_key: str | None = None, **fields) -> Path:
    """An STS-B run folder: results.json with stage keys and run key, and its config.yaml."""
    folder = root / name
    folder.mkdir(parents=True)
    config = {"seed": seed, "output_dir": str(folder), "strategy": {"name": strategy, "seed": seed},
              "data": {"name": "stsb", "monitor": "pearson"}, **(config or {})}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    results = {
        "status": "complete", "data": "stsb", "model": model, "strategy": strategy, "ratio": 3.0,
        "ratio_basis": "bert_base", "seed": seed, "monitor": "pearson", "achieved_ratio": 3.0,
        "selection": "last", "dense": {"pearson": dense}, "pruned": {"pearson": pruned},
        "run_key": run_key or f"{name}", "stage_keys": {"dense": f"{dense_key}{seed}", "scores": f"S{name}"},
        "timings_s": {"dense": 100.0, "scoring": 10.0, "pruned": 50.0, "setup": 1.0},
        "cache": {"builds": ["dense", "scores"]}, **({"recipe": recipe} if recipe else {}), **fields,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


METHOD = [0.80, 0.78, 0.83]
BASE = [0.70, 0.71, 0.69]


def two_dense_models(root: Path) -> None:
    """Seed 0's baseline was re-run after a code change: an identical config, a new dense model."""
    for seed in range(3):
        write_run(root, f"cam_s{seed}", strategy="gradcam_shift", seed=seed, pruned=METHOD[seed])
        write_run(root, f"grad_s{seed}", strategy="layer_mag_grad", seed=seed, pruned=BASE[seed],
                  dense_key="NEW" if seed == 0 else "D")


# --- item 1: pairs come from one dense model -------------------------------------------------------


def test_two_dense_models_in_one_seed_are_never_paired_in_the_report(tmp_path):
    """Mutation checked: ``pair`` ignoring the dense keys (``same_dense`` forced False) pairs
    seed 0 and fails this test."""
    two_dense_models(tmp_path)
    df, _ = collect_runs([tmp_path])
    row = paired_differences(df, ["layer_mag_grad"]).iloc[0]
    assert row["paired_seeds"] == "1 2" and row["seeds"] == 2
    assert row["unpaired_seeds"] == "0"
    assert row["left_out"].startswith("seed 0: different dense models (D0 vs NEW0)")
    assert row["mean_diff"] == pytest.approx(((0.78 - 0.71) + (0.83 - 0.69)) / 2, abs=1e-12)
    assert "left out: seed 0: different dense models" in row["verdict"]


def test_pair_by_and_the_recovery_table_follow_the_same_rule(tmp_path):
    """``--pair-by structure.kind`` (not a dense input) leaves seed 0 out; ``--pair-by
    optimizer.lr`` (a dense input: other dense models by design) pairs all three; the recovery
    table leaves out the seed whose single shot came from another dense model. Mutation checked:
    the recovery table's old check (annotate the verdict, keep the pair) fails it."""
    for seed in range(3):
        write_run(tmp_path / "s", f"heads_s{seed}", strategy="gradcam_shift", seed=seed, pruned=METHOD[seed],
                  config={"structure": {"kind": "heads_neurons"}})
        write_run(tmp_path / "s", f"none_s{seed}", strategy="gradcam_shift", seed=seed, pruned=BASE[seed],
                  config={"structure": {"kind": "none"}}, dense_key="NEW" if seed == 0 else "D")
        write_run(tmp_path / "l", f"lr4_s{seed}", strategy="gradcam_shift", seed=seed, pruned=METHOD[seed],
                  config={"optimizer": {"lr": 1e-4}}, dense_key="L4")
        write_run(tmp_path / "l", f"lr5_s{seed}", strategy="gradcam_shift", seed=seed, pruned=BASE[seed],
                  config={"optimizer": {"lr": 5e-5}}, dense_key="L5")
    structure = paired_across(collect_runs([tmp_path / "s"])[0], "structure.kind", "none").iloc[0]
    assert structure["paired_seeds"] == "1 2" and "different dense models" in structure["left_out"]
    lr = paired_across(collect_runs([tmp_path / "l"])[0], "optimizer.lr", "5e-05").iloc[0]
    assert lr["paired_seeds"] == "0 1 2" and lr["left_out"] == ""

    single = {"shots": 1, "rounds": []}
    kshot = {"shots": 2, "shot_epochs": 1, "rounds": [{"round": 1}]}
    for seed in range(3):
        write_run(tmp_path / "r", f"one_s{seed}", strategy="gradcam_shift", seed=seed, pruned=BASE[seed],
                  config={"recipe_name": "single_shot"}, recipe=single, epochs_final=2,
                  dense_key="NEW" if seed == 2 else "D")
        write_run(tmp_path / "r", f"two_s{seed}", strategy="gradcam_shift", seed=seed, pruned=METHOD[seed],
                  config={"recipe_name": "kshot"}, recipe=kshot, epochs_final=1)
    runs, _ = load_runs([tmp_path / "r"])
    table = recovery_table(runs).set_index("recipe")
    assert table.loc["kshot", "paired_seeds"] == "0 1" and table.loc["kshot", "paired_n"] == 2
    assert "seed 2: different dense models" in table.loc["kshot", "verdict"]


def test_pair_takes_one_run_per_seed_and_names_every_seed_left_out(tmp_path):
    two_dense_models(tmp_path)
    df, _ = collect_runs([tmp_path])
    method, base = df[df["strategy"] == "gradcam_shift"], df[df["strategy"] == "layer_mag_grad"]
    base = base.sort_values("seed")
    p = pair(method, base.iloc[[0, 1]], higher_better=True)
    assert p.seeds == [1] and p.left_out == {0: "different dense models (D0 vs NEW0): rerun one side",
                                             2: "no reference run"}
    with pytest.raises(ValueError, match="several runs of seed"):
        pair(pd.concat([method, method]), base, higher_better=True)


# --- item 4: report.html draws the PNG's dense lines and labels ----------------------------------


def test_html_draws_one_dense_line_per_model_with_the_pngs_labels(tmp_path):
    """Two models of one data set: two dense lines, labelled by model, and series labels naming
    the model, in the PNG and the HTML alike. Mutation checked: the old HTML line (the mean of
    every run's dense metric, "dense (mean over seeds)") fails it."""
    for seed in range(2):
        for model, dense in (("minilm", 0.85), ("bert_base", 0.89)):
            for strategy, value in (("gradcam_shift", 0.8), ("layer_mag_grad", 0.7)):
                write_run(tmp_path / "runs", f"{model}_{strategy}_s{seed}", strategy=strategy, seed=seed,
                          pruned=value + 0.01 * seed, model=model, dense=dense + 0.01 * seed,
                          dense_key=model)
    written = write_report([tmp_path / "runs"], tmp_path / "report", masks=False)
    summary, runs, keys = written["summary"], written["runs"], written["group_keys"]
    assert "model" in keys
    lines = dense_lines(summary, runs, keys)
    assert [(d.label, round(d.value, 6)) for d in lines] == [("dense · bert_base", 0.895),
                                                             ("dense · minilm", 0.855)]
    labels = [s.label for s in series(summary, keys)]
    assert "gradcam_shift · minilm" in labels and "layer_mag_grad · bert_base" in labels
    assert len(labels) == 4
    page = written["html"].read_text()
    assert '<th class="txt">model</th>' in page  # the HTML tables tell the models apart
    for label in [*labels, "dense · bert_base (mean over seeds)", "dense · minilm (mean over seeds)"]:
        assert json.dumps(label)[1:-1] in page, label
    legend = {t.get_text() for t in written_png_legend(written, tmp_path)}
    assert {"dense · bert_base", "dense · minilm", *labels} <= legend


def written_png_legend(written: dict, tmp_path: Path):
    from deepcuts.analysis.reference import dev_references
    from deepcuts.analysis.render.plots import plot_ratio

    summary, runs = written["summary"], written["runs"]
    fig = plot_ratio("stsb", summary, runs, written["group_keys"], tmp_path / "x.png",
                     references=dev_references(runs).get("stsb", []))
    return fig.axes[0].get_legend().get_texts()


# --- item 5: result-neutral keys never split cells -------------------------------------------------


def test_progress_logger_and_export_keys_never_split_cells(tmp_path):
    """Three seeds shown as log lines and exported, three without: one cell, paired. Mutation
    checked: dropping ``neutral(key)`` from ``runs.ignored`` makes ``progress.mode`` a sweep key
    and fails it."""
    for seed in range(3):
        extra = {"progress": {"mode": "log", "every_s": 60}, "save_model": True,
                 "logger": {"wandb": {"enabled": True}}} if seed < 2 else {}
        write_run(tmp_path, f"cam_s{seed}", strategy="gradcam_shift", seed=seed, pruned=METHOD[seed], config=extra)
        write_run(tmp_path, f"grad_s{seed}", strategy="layer_mag_grad", seed=seed, pruned=BASE[seed],
                  config={} if seed < 2 else extra)
    df, _ = collect_runs([tmp_path])
    assert sweep_keys(df) == []
    assert len(summarise(df)) == 2
    row = paired_differences(df, ["layer_mag_grad"]).iloc[0]
    assert row["paired_seeds"] == "0 1 2"


# --- item 6: zero variance --------------------------------------------------------------------------


def test_a_zero_variance_difference_says_all_seeds_equal_not_detected(tmp_path):
    """Every seed +0.25 exactly: no interval, "all seeds equal", not "detected". Mutation
    checked: without ``Paired.constant`` the t-interval is [0.25, 0.25] and the verdict says the
    interval excludes 0."""
    for seed, (m, b) in enumerate([(0.5, 0.25), (0.25, 0.0), (0.75, 0.5)]):
        write_run(tmp_path, f"cam_s{seed}", strategy="gradcam_shift", seed=seed, pruned=m)
        write_run(tmp_path, f"grad_s{seed}", strategy="layer_mag_grad", seed=seed, pruned=b)
        write_run(tmp_path, f"mag_s{seed}", strategy="layer_mag_weight", seed=seed, pruned=b)
    df, _ = collect_runs([tmp_path])
    paired = paired_differences(df, ["layer_mag_grad"]).set_index("strategy")
    cam = paired.loc["gradcam_shift"]
    assert cam["mean_diff"] == 0.25 and pd.isna(cam["t_low"]) and cam["covers_zero"] is None
    assert cam["verdict"].startswith("all seeds equal: gradcam_shift better by exactly +0.25")
    assert "excludes 0" not in cam["verdict"]
    same = paired.loc["layer_mag_weight"]
    assert same["verdict"].startswith("all seeds equal: no difference in any of the 3 seeds")


# --- item 7: no machine paths in reports -------------------------------------------------------------


def test_reports_print_paths_relative_to_where_they_are_made(tmp_path):
    """Mutation checked: printing the folders as given (``str(folder)``) puts tmp_path into
    report.md and fails it."""
    two_dense_models(tmp_path / "sweep")
    (tmp_path / "sweep" / "killed").mkdir()
    (tmp_path / "sweep" / "killed" / "config.yaml").write_text("seed: 0\n")
    written = write_report([tmp_path / "sweep"], tmp_path / "sweep" / "report")
    for path in (written["markdown"], written["html"]):
        text = path.read_text()
        assert str(tmp_path) not in text, path.name
    md = written["markdown"].read_text()
    assert "under `..`" in md and "- `../killed`: no results.json" in md

    single = {"shots": 1, "rounds": []}
    for seed in range(2):
        write_run(tmp_path / "rec", f"one_s{seed}", strategy="gradcam_shift", seed=seed, pruned=0.5,
                  config={"recipe_name": "single_shot"}, recipe=single, epochs_final=2)
    multirun = {"hydra": {"overrides": {"task": [f"cache_dir={tmp_path / 'cache'}", "shots=1"]},
                          "job": {"name": "train"}}}
    (tmp_path / "rec" / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(multirun)))
    rec = write_recovery([tmp_path / "rec"], tmp_path / "rec" / "table", echo=False,
                         command=f"python experiments/recovery_table.py {tmp_path / 'rec'} --out x")
    text = rec["markdown"].read_text()
    assert str(tmp_path) not in text
    assert "cache_dir=…/cache shots=1" in text and "recovery_table.py .. --out x" in text


# --- item 8: the package's shape ------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for p in ANALYSIS.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _targets(module: str, names: list[str], modules: dict[str, Path]) -> set[str]:
    found = {module} if module in modules else set()
    found |= {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
    return found


def test_render_imports_computation_never_the_reverse_and_no_circles():
    """Mutation checked: ``from deepcuts.analysis.render.markdown import DEV_FLAG`` in
    summary.py fails the first assertion; ``from deepcuts.analysis import summary`` inside a
    function of keys.py fails the cycle check."""
    modules = _modules()
    graph = {m: set().union(*(_targets(mod, names, modules) for mod, names in _imports(p))) - {m}
             for m, p in modules.items()}
    render = "deepcuts.analysis.render"
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() if not m.startswith(render)
                    for t in ts if t.startswith(render))
    assert not upward, f"computation modules importing render: {upward}"
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, m, t])}")
            if t not in state:
                visit(t, [*trail, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_no_private_names_across_modules_and_one_way_to_find_runs():
    """Mutation checked: importing ``_mean`` from compare into render/report.py, or calling
    ``rglob("results.json")`` outside runs.py fails it."""
    private, finders = [], []
    for name, path in _modules().items():
        text = path.read_text()
        for module, names in _imports(path):
            if module.startswith("deepcuts.") and any(n.startswith("_") for n in names):
                private.append(f"{name}: from {module} import {names}")
        tree = ast.parse(text)
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names if (getattr(n, "module", "") or "").startswith("deepcuts")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")):
                private.append(f"{name}: {node.value.id}.{node.attr}")
        if name != "deepcuts.analysis.runs" and re.search(r"rglob\(|os\.walk\(", text):
            finders.append(name)
    assert not private, private
    assert not finders, f"run folders found outside deepcuts.analysis.runs: {finders}"


def test_every_table_splits_by_the_sweep_keys(tmp_path):
    """Summary, paired and timing tables each have a row per ``structure.kind`` value. Mutation
    checked: grouping the timing table by (data, model, strategy, seed) only fails it."""
    for seed in range(2):
        for kind in ("none", "heads_neurons"):
            for strategy, value in (("gradcam_shift", METHOD[seed]), ("layer_mag_grad", BASE[seed])):
                write_run(tmp_path / "runs", f"{kind}_{strategy}_s{seed}", strategy=strategy, seed=seed,
                          pruned=value, config={"structure": {"kind": kind}})
    written = write_report([tmp_path / "runs"], tmp_path / "report", html=False)
    assert written["sweep_keys"] == ["structure.kind"]
    for table in ("summary", "paired", "timing"):
        frame = written[table]
        assert sorted(set(frame["structure.kind"])) == ["heads_neurons", "none"], table
    assert len(written["summary"]) == 4 and len(written["paired"]) == 2
    assert len(written["timing"]) == 4 * 2  # (strategy, kind) x seed
    md = written["markdown"].read_text()
    timing = md.split("## End-to-end time", 1)[1]
    assert timing.count("| heads_neurons |") == 2 and timing.count("| none |") == 2


def test_the_recovery_table_says_all_seeds_equal_for_zero_variance(tmp_path):
    """Mutation checked: without the ``covers_zero is None`` case the cell reads "better"."""
    single = {"shots": 1, "rounds": []}
    kshot = {"shots": 2, "shot_epochs": 1, "rounds": [{"round": 1}]}
    for seed, base in enumerate((0.5, 0.25, 0.75)):
        write_run(tmp_path / "r", f"one_s{seed}", strategy="gradcam_shift", seed=seed, pruned=base,
                  config={"recipe_name": "single_shot"}, recipe=single, epochs_final=2)
        write_run(tmp_path / "r", f"two_s{seed}", strategy="gradcam_shift", seed=seed, pruned=base + 0.25,
                  config={"recipe_name": "kshot"}, recipe=kshot, epochs_final=1)
    text = write_recovery([tmp_path / "r"], tmp_path / "out", echo=False)["markdown"].read_text()
    assert "+0.250, 3 pairs: all seeds equal (no interval)" in text
    assert "all seeds equal: kshot better by exactly +0.25 in each of the 3 seeds" in text
    assert ": better" not in text
