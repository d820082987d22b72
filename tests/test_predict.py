"""predict.py: a saved pruned model on a GLUE-format file gives the run's own dev metrics, and
predictions equal to the exported model's outputs; bad input fails clearly, leaving no file."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from deepcuts.config.errors import ConfigError
from deepcuts.data.tsv import resolve_root
from deepcuts.models.export import load_exported
from deepcuts.models.predict import file_layout, predict
from deepcuts.pipeline.flow import run
from tests.conftest import REPO, compose_cfg

_spec = importlib.util.spec_from_file_location("predict_cli", REPO / "predict.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)
main = cli.main

TOL = 1e-4  # metrics against the run's own evaluation
OUT_TOL = 1e-5  # predictions against load_exported


def make_export(folder: Path, data: str) -> dict:
    """A tiny run with ``save_model=true``; its export, results and a copy of the dev file capped
    at the run's ``max_eval_samples`` (the first rows, as the run read them)."""
    cfg = compose_cfg(folder, f"data={data}", "strategy=layer_mag_weight", "epochs_final=0",
                      "save_model=true")
    run(cfg)
    full = resolve_root(cfg.data.root) / cfg.data.folder / cfg.data.eval_file
    dev = folder / "dev.tsv"
    dev.write_text("\n".join(full.read_text().splitlines()[: 1 + cfg.data.max_eval_samples]) + "\n")
    return {"export": folder / "run" / "pruned_model", "dev": dev, "full_dev": full,
            "results": json.loads((folder / "run" / "results.json").read_text()),
            "n": cfg.data.max_eval_samples}


@pytest.fixture(scope="module")
def stsb(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("stsb"), "stsb")


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("sst2"), "sst2")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def exported_outputs(folder: Path, texts: list[tuple[str, ...]], max_length: int) -> torch.Tensor:
    """``load_exported`` on each example alone (no padding): the reference predictions."""
    model, tokenizer = load_exported(folder), AutoTokenizer.from_pretrained(str(folder))
    outs = []
    with torch.inference_mode():
        for pair in texts:
            enc = tokenizer(*pair, truncation=True, max_length=max_length, return_tensors="pt")
            outs.append(model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))[0])
    return torch.stack(outs)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "predictions" in p.name or p.name.endswith(".tmp"))


# -- metrics and predictions ------------------------------------------------------------------


def test_dev_metrics_equal_the_runs_own_evaluation(stsb, tmp_path):
    # the run's batching (eval_batch_size): the tiny model's near-constant scores make Pearson
    # sensitive to float rounding, which padding to other lengths changes (by ~1e-7)
    got = predict(stsb["export"], stsb["dev"], out=tmp_path / "p.tsv")
    want = stsb["results"]["pruned_last_epoch"]
    assert got["n"] == stsb["n"] and got["has_labels"] and got["out"] == tmp_path / "p.tsv"
    assert got["metrics"].keys() == {"pearson", "spearmanr", "mse"}
    for name, value in got["metrics"].items():
        assert value == pytest.approx(want[name], abs=TOL), name
    # --limit on the whole dev file reads the same first rows
    capped = predict(stsb["export"], stsb["full_dev"], out=tmp_path / "q.tsv", limit=stsb["n"])
    assert capped["metrics"] == pytest.approx(got["metrics"], abs=1e-6)


def test_regression_predictions_equal_the_exported_models_outputs(stsb, tmp_path):
    out = tmp_path / "p.tsv"
    predict(stsb["export"], stsb["dev"], out=out, batch_size=7)  # padded batches of mixed lengths
    rows = read_rows(out)
    source = read_rows(stsb["dev"])
    assert list(rows[0]) == ["index", "prediction", "label"]
    assert [int(r["index"]) for r in rows] == list(range(stsb["n"])) == list(range(len(source)))
    assert [float(r["label"]) for r in rows] == [float(r["score"]) for r in source]
    want = exported_outputs(stsb["export"], [(r["sentence1"], r["sentence2"]) for r in source], 128)
    got = torch.tensor([float(r["prediction"]) for r in rows])
    torch.testing.assert_close(got, want, rtol=0, atol=OUT_TOL)
    assert ((got >= 0) & (got <= 5)).all()


def test_classification_end_to_end(sst2, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([str(sst2["export"]), str(sst2["dev"])]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "sst2-dev.predictions.tsv"  # the documented default name
    assert f"predictions: {out.name}" in printed and f"{sst2['n']} examples" in printed
    acc = sst2["results"]["pruned_last_epoch"]["acc"]
    line = next(x for x in printed.splitlines() if x.startswith("acc "))
    assert float(line.split()[1]) == pytest.approx(acc, abs=5e-5)  # printed to 4 decimals

    got = predict(sst2["export"], sst2["dev"], out=tmp_path / "p.tsv")
    assert got["metrics"]["acc"] == pytest.approx(acc, abs=TOL)
    rows, source = read_rows(out), read_rows(sst2["dev"])
    assert list(rows[0]) == ["index", "prediction", "logit_0", "logit_1", "label"] and len(rows) == sst2["n"]
    logits = torch.tensor([[float(r["logit_0"]), float(r["logit_1"])] for r in rows])
    want = exported_outputs(sst2["export"], [(r["sentence"],) for r in source], 66)
    torch.testing.assert_close(logits, want, rtol=0, atol=OUT_TOL)
    assert [int(r["prediction"]) for r in rows] == logits.argmax(-1).tolist()
    assert [int(r["label"]) for r in rows] == [int(r["label"]) for r in source]
    correct = sum(int(r["prediction"]) == int(r["label"]) for r in rows)
    assert correct / len(rows) == pytest.approx(acc, abs=TOL)


def test_a_file_without_labels_gives_predictions_only(stsb, sst2, tmp_path, capsys):
    # STS-B: the dev layout without the score column
    unlabelled = tmp_path / "test.tsv"
    rows = read_rows(stsb["dev"])
    unlabelled.write_text("index\tsentence1\tsentence2\n"
                          + "".join(f"{i}\t{r['sentence1']}\t{r['sentence2']}\n" for i, r in enumerate(rows)))
    got = predict(stsb["export"], unlabelled, out=tmp_path / "u.tsv")
    assert got["metrics"] == {} and not got["has_labels"] and got["n"] == len(rows)
    labelled = read_rows(predict(stsb["export"], stsb["dev"], out=tmp_path / "l.tsv")["out"])
    plain = read_rows(tmp_path / "u.tsv")
    assert list(plain[0]) == ["index", "prediction"]
    assert [r["prediction"] for r in plain] == [r["prediction"] for r in labelled]

    # SST-2: GLUE's test layout (index, sentence), through the CLI
    test = tmp_path / "sst2-test.tsv"
    sentences = [r["sentence"] for r in read_rows(sst2["dev"])]
    test.write_text("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, s in enumerate(sentences)))
    assert main([str(sst2["export"]), str(test), "--out", str(tmp_path / "s.tsv")]) == 0
    printed = capsys.readouterr().out
    assert "no 'label' column: predictions only, no metrics" in printed and "acc" not in printed
    assert list(read_rows(tmp_path / "s.tsv")[0]) == ["index", "prediction", "logit_0", "logit_1"]

    # a labelled file with the labels ignored
    ignored = predict(sst2["export"], sst2["dev"], out=tmp_path / "i.tsv", has_labels=False)
    assert ignored["metrics"] == {} and "label" not in read_rows(tmp_path / "i.tsv")[0]


def test_a_task_without_a_header_reads_glue_test_files_by_theirs(tmp_path):
    cola = {"name": "cola", "header": False, "columns": ["source", "label", "mark", "sentence"],
            "text_columns": ["sentence"], "label_column": "label"}
    dev, test, other = tmp_path / "dev.tsv", tmp_path / "test.tsv", tmp_path / "other.tsv"
    dev.write_text("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n")
    test.write_text("index\tsentence\n0\tBill whistled past the house.\n")
    other.write_text("Bill whistled past the house.\t1\n")
    assert file_layout(dev, cola) == (False, cola["columns"])
    assert file_layout(test, cola) == (True, None)
    with pytest.raises(ConfigError, match="2 tab-separated fields.*source"):
        file_layout(other, cola)


# -- bad input ----------------------------------------------------------------------------------


def cli_error(capsys, *argv: str) -> str:
    """The CLI's message for bad input; exit code 2."""
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_bad_input_gives_a_clear_error_and_no_file(stsb, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export, dev = str(stsb["export"]), str(stsb["dev"])
    out = tmp_path / "out.tsv"
    assert "does not exist; it must be the pruned_model folder of a run made with save_model=true" in (
        cli_error(capsys, str(tmp_path / "nowhere"), dev, "--out", str(out)))
    run_folder = str(stsb["export"].parent)
    err = cli_error(capsys, run_folder, dev, "--out", str(out))
    assert "is not an export folder" in err and "pass its pruned_model folder" in err
    old = tmp_path / "old_export"
    shutil.copytree(stsb["export"], old)
    (old / "data.json").unlink()
    err = cli_error(capsys, str(old), dev, "--out", str(out))
    assert "has no data.json" in err and "save_model=true" in err and "run the job again" in err
    assert "file " + str(tmp_path / "missing.tsv") + " does not exist" in cli_error(
        capsys, export, str(tmp_path / "missing.tsv"), "--out", str(out))
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("sentence\tlabel\nhello\t1\n")
    err = cli_error(capsys, export, str(wrong), "--out", str(out))
    assert "has no column(s) ['sentence1', 'sentence2']" in err and "stsb" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tscore\na\tb\t?\n")
    err = cli_error(capsys, export, str(bad), "--out", str(out))
    assert "score='?' is not a number" in err and "--no-labels" in err
    assert "must be positive" in cli_error(capsys, export, dev, "--out", str(out), "--batch-size", "0")
    assert "is the input file" in cli_error(capsys, export, dev, "--out", dev)
    hostile = tmp_path / "hostile_export"  # an export is data: it may not name code to run
    shutil.copytree(stsb["export"], hostile)
    spec = json.loads((hostile / "data.json").read_text())
    spec["metrics"]["pearson"] = {"_target_": "os.system", "command": "touch pwned"}
    (hostile / "data.json").write_text(json.dumps(spec))
    assert "only torchmetrics classes" in cli_error(capsys, str(hostile), dev, "--out", str(out))
    assert not (tmp_path / "pwned").exists()
    assert leftovers(tmp_path) == [] and not out.exists()


def test_an_error_while_writing_leaves_the_previous_file(stsb, tmp_path, monkeypatch):
    import deepcuts.models.predict as P

    out = tmp_path / "p.tsv"
    out.write_text("previous\n")

    def half_written(path, *args):
        Path(path).write_text("index\tprediction\n0\t")
        raise OSError("disk full")

    monkeypatch.setattr(P, "write_predictions", half_written)
    with pytest.raises(OSError, match="disk full"):
        predict(stsb["export"], stsb["dev"], out=out)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tsv"]


def test_the_cli_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "predict.py"), str(tmp_path / "none"), "dev.tsv"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
