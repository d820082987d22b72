"""ONNX export and ONNX Runtime: the graph equals PyTorch on every tiny architecture, masked and
structured; predict.py gives the same metrics and predictions with either runtime, without torch
for the graph; bad input fails in one line with exit 2; the model card is read from the run;
predict.py evaluates in the run's precision."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deepcuts.config.errors import ConfigError
from deepcuts.data.tsv import resolve_root
from deepcuts.models.onnx import OnnxExportError, export_onnx
from deepcuts.models.onnx_runtime import OnnxRunner
from deepcuts.models.predict import predict, read_examples
from deepcuts.pipeline.flow import run
from tests.conftest import REPO, compose_cfg

TOL = 1e-4
STRUCTURED = ("structure=heads_neurons", "keep_fraction=0.5")


def make_run(folder: Path, *overrides: str, data: str = "stsb", save: str = "onnx") -> dict:
    cfg = compose_cfg(folder, f"data={data}", "strategy=layer_mag_weight", "epochs_final=1",
                      f"save_model={save}", *overrides)
    run(cfg)
    results = json.loads((folder / "run" / "results.json").read_text())
    full = resolve_root(cfg.data.root) / cfg.data.folder / cfg.data.eval_file
    dev = folder / "dev.tsv"
    dev.write_text("\n".join(full.read_text().splitlines()[: 1 + cfg.data.max_eval_samples]) + "\n")
    return {"export": folder / "run" / "pruned_model", "dev": dev, "results": results, "cfg": cfg}


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("masked"))


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("structured"), *STRUCTURED, data="sst2")


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def both_runtimes(made: dict, tmp_path: Path) -> tuple[dict, dict]:
    torch_run = predict(made["export"], made["dev"], out=tmp_path / "torch.tsv")
    onnx_run = predict(made["export"], made["dev"], out=tmp_path / "onnx.tsv", runtime="onnx")
    return torch_run, onnx_run


@pytest.mark.parametrize("kind", ["masked", "structured"])
def test_the_runs_graph_equals_pytorch_and_predict_gives_the_same_with_either_runtime(kind, request, tmp_path):
    made = request.getfixturevalue(kind)
    meta = json.loads((made["export"] / "onnx.json").read_text())
    assert meta["max_abs_diff"] <= TOL and meta["checked_examples"] == made["cfg"].data.max_eval_samples
    assert made["results"]["export_bytes"]["onnx"] == (made["export"] / "model.onnx").stat().st_size
    torch_run, onnx_run = both_runtimes(made, tmp_path)
    assert onnx_run["metrics"].keys() == torch_run["metrics"].keys()
    if made["cfg"].data.task.type == "classification":  # a tiny model's STS-B Pearson (near-constant
        for name, value in torch_run["metrics"].items():  # scores) moves with 1e-7 changes: compared
            assert onnx_run["metrics"][name] == pytest.approx(value, abs=TOL), name  # by predictions
    a, b = rows(tmp_path / "torch.tsv"), rows(tmp_path / "onnx.tsv")
    assert [r["index"] for r in a] == [r["index"] for r in b]
    for x, y in zip(a, b, strict=True):
        if "logit_0" in x:
            assert x["prediction"] == y["prediction"]
        assert float(x["prediction"]) == pytest.approx(float(y["prediction"]), abs=TOL)


def without_torch(folder: Path) -> dict:
    """An environment where torch is not installed: this interpreter without ``site`` (-S) and a
    copy of its site-packages (symlinks) less torch, plus the repository."""
    site = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    folder.mkdir()
    for entry in site.iterdir():
        if entry.suffix != ".pth" and entry.name.split("-")[0].split(".")[0].lower() not in ("torch", "functorch", "torchgen"):
            (folder / entry.name).symlink_to(entry)
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{REPO}", "PYTHONNOUSERSITE": "1"}


def test_the_graph_runs_without_torch(masked, tmp_path):
    """What a deployment installs: onnxruntime, numpy, transformers' tokenizer; no torch."""
    code = f"""
import importlib.util, sys
assert importlib.util.find_spec("torch") is None
from deepcuts.models.predict import predict
result = predict({str(masked['export'])!r}, {str(masked['dev'])!r}, out={str(tmp_path / 'p.tsv')!r},
                 runtime="onnx", has_labels=False)
assert result["n"] > 0 and not result["metrics"] and "torch" not in sys.modules
print("ok", result["n"])
"""
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=without_torch(tmp_path / "site"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok" in done.stdout
    expected = rows(tmp_path / "p.tsv")
    predict(masked["export"], masked["dev"], out=tmp_path / "q.tsv", runtime="onnx", has_labels=False)
    assert expected == rows(tmp_path / "q.tsv")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_export_cli_and_bad_input_exit_2_in_one_line(masked, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(masked["export"], folder)
    (folder / "model.onnx").unlink()
    (folder / "onnx.json").unlink()
    no_graph = _cli("predict.py", str(folder), str(masked["dev"]), "--runtime", "onnx")
    assert no_graph.returncode == 2 and "has no model.onnx" in no_graph.stderr
    assert "Traceback" not in no_graph.stderr and len(no_graph.stderr.strip().splitlines()) == 1
    bad_opset = _cli("-m", "deepcuts.export", "--onnx", str(folder), "--check", str(masked["dev"]), "--opset", "5")
    assert bad_opset.returncode == 2 and "opset 5" in bad_opset.stderr and not (folder / "model.onnx").exists()
    made = _cli("-m", "deepcuts.export", "--onnx", str(folder), "--check", str(masked["dev"]))
    assert made.returncode == 0, made.stderr[-2000:]
    assert "ONNX Runtime equals PyTorch" in made.stdout and (folder / "model.onnx").is_file()
    (folder / "model.onnx").write_bytes(b"not a graph")
    corrupt = _cli("predict.py", str(folder), str(masked["dev"]), "--runtime", "onnx")
    assert corrupt.returncode == 2 and "not a graph ONNX Runtime can load" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr
    (folder / "model.safetensors").unlink()
    no_weights = _cli("predict.py", str(folder), str(masked["dev"]))
    assert no_weights.returncode == 2 and "model.safetensors" in no_weights.stderr
    assert len(no_weights.stderr.strip().splitlines()) == 1


def test_a_graph_that_disagrees_with_pytorch_is_not_kept(masked, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(masked["export"], folder)
    (folder / "model.onnx").unlink()
    texts, _ = read_examples(masked["dev"], json.loads((folder / "data.json").read_text()), False, None)
    with pytest.raises(OnnxExportError, match="differ from PyTorch's"):
        export_onnx(folder, texts, tolerance=-1.0)  # nothing can pass: the check must fail the export
    assert not (folder / "model.onnx").exists()
    with pytest.raises(ConfigError, match="has no model.onnx"):
        OnnxRunner(folder)


def test_the_torchscript_exporter_gives_the_same_outputs(structured, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(structured["export"], folder)
    texts, _ = read_examples(structured["dev"], json.loads((folder / "data.json").read_text()), False, None)
    meta = export_onnx(folder, texts, exporter="torchscript")
    assert meta["exporter"] == "torchscript" and meta["opset"] == 17 and meta["max_abs_diff"] <= TOL
    with pytest.raises(ConfigError, match="exporter 'tvm'"):
        export_onnx(folder, texts, exporter="tvm")


def test_the_model_card_is_read_from_the_run(structured):
    card = (structured["export"] / "README.md").read_text()
    res = structured["results"]
    for name, value in res["pruned"].items():
        assert f"{name} {value:.4f}" in card
    for name, value in res["dense"].items():
        assert f"{name} {value:.4f}" in card
    assert f"requested c = {res['ratio']:g} on the `{res['ratio_basis']}` basis" in card
    assert f"achieved {res['achieved_ratio']:.3f}" in card
    assert f"{res['nonzero_parameters']:,} non-zero of {res['total_parameters']:,}" in card
    assert f"heads kept per layer {res['structure']['heads_kept']}" in card
    assert f"Seed {res['seed']}" in card and f"`{res['run_key']}`" in card
    assert "the last epoch (nothing selected)" in card and "model.onnx" in card


def test_predict_evaluates_in_the_runs_precision(tmp_path):
    """A bf16-mixed run reports its dev metric under autocast; predict.py does the same by
    default (so its metric is the run's), and --precision 32 is float32."""
    made = make_run(tmp_path, "trainer.precision=bf16-mixed", data="sst2", save="true")
    data = json.loads((made["export"] / "data.json").read_text())
    assert data["precision"] == "bf16-mixed"
    default = predict(made["export"], made["dev"], out=tmp_path / "a.tsv")
    assert default["precision"] == "bf16-mixed"
    for name, value in default["metrics"].items():
        assert value == pytest.approx(made["results"]["pruned"][name], abs=1e-6), name
    fp32 = predict(made["export"], made["dev"], out=tmp_path / "b.tsv", precision="32")
    assert fp32["precision"] == "32"
    logits = [[float(r[k]) for k in r if k.startswith("logit_")] for r in rows(tmp_path / "a.tsv")]
    logits32 = [[float(r[k]) for k in r if k.startswith("logit_")] for r in rows(tmp_path / "b.tsv")]
    assert logits != logits32  # bf16 autocast was applied (tiny differences, same shapes)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_roberta", "tiny_distilbert", "tiny_electra", "tiny_deberta"])
@pytest.mark.parametrize("structure", [(), STRUCTURED], ids=["masked", "structured"])
def test_every_architecture_exports_a_graph_equal_to_pytorch(model, structure, tmp_path):
    made = make_run(tmp_path, f"model={model}", *structure)
    meta = json.loads((made["export"] / "onnx.json").read_text())
    assert meta["max_abs_diff"] <= TOL
    both_runtimes(made, tmp_path)
    for x, y in zip(rows(tmp_path / "torch.tsv"), rows(tmp_path / "onnx.tsv"), strict=True):
        assert float(x["prediction"]) == pytest.approx(float(y["prediction"]), abs=TOL)
