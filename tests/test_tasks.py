"""Every GLUE-format task by one YAML: small files of each shape (text labels, a byte-order mark in
the header, column names that need YAML quoting, an F1 task) through the tiny pipeline, and the
errors a wrong YAML gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepcuts.config.errors import ConfigError
from deepcuts.data.tsv import label_map, parse_labels
from deepcuts.pipeline.flow import run

PAIRS = [("a man is playing a guitar", "a man plays music"), ("a dog runs in the park", "a cat sleeps"),
         ("the sun is shining", "it is a sunny day"), ("she reads a book", "nobody is reading"),
         ("two kids play football", "children are playing a game"), ("a car is parked", "the car drives fast")]
SMALL = ("data.max_train_samples=12", "data.max_eval_samples=8", "epochs_dense=1", "epochs_final=1")


def write_task(root: Path, folder: str, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    """``root/folder/{train,dev}.tsv`` with the same rows (the pipeline only needs the shape)."""
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    text = "\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    for name in ("train.tsv", "dev.tsv"):
        (path / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return root


def rte_rows(n: int = 12) -> list[list[str]]:
    labels = ["entailment", "not_entailment"]
    return [[str(i), *PAIRS[i % len(PAIRS)], labels[i % 2]] for i in range(n)]


def test_text_labels_through_the_label_map(make_cfg, tmp_path):
    root = write_task(tmp_path / "glue", "RTE", ["index", "sentence1", "sentence2", "label"], rte_rows())
    res = run(make_cfg("data=rte", f"data.root={root}", *SMALL))
    assert set(res["pruned"]) >= {"acc"} and 0 <= res["pruned"]["acc"] <= 1


def test_label_map_ids_by_hand():
    task = {"type": "classification", "num_labels": 3, "labels": ["entailment", "neutral", "contradiction"]}
    assert parse_labels(["neutral", "contradiction ", "entailment"], task, Path("f"), "gold") == [1, 2, 0]
    by_name = {"type": "classification", "num_labels": 2, "labels": {"not_entailment": 1, "entailment": 0}}
    assert parse_labels(["not_entailment", "entailment"], by_name, Path("f"), "label") == [1, 0]
    assert label_map({"type": "classification", "num_labels": 2}) is None


def test_an_unmapped_label_names_the_labels_found_and_the_key(make_cfg, tmp_path):
    rows = rte_rows()
    rows[5][-1] = "neutral"
    root = write_task(tmp_path / "glue", "RTE", ["index", "sentence1", "sentence2", "label"], rows)
    with pytest.raises(ConfigError) as err:
        run(make_cfg("data=rte", f"data.root={root}", *SMALL))
    msg = str(err.value)
    assert "row 6" in msg and "'neutral'" in msg and "data.task.labels" in msg
    assert "entailment, not_entailment, neutral" in msg  # the labels this file has


def test_text_labels_without_a_map_say_which_key_fixes_it(make_cfg, tmp_path):
    root = write_task(tmp_path / "glue", "RTE", ["index", "sentence1", "sentence2", "label"], rte_rows())
    with pytest.raises(ConfigError, match=r"is not a number.*data\.task\.labels.*labels: \[entailment, not_entailment\]"):
        run(make_cfg("data=rte", f"data.root={root}", "~data.task.labels", *SMALL))


@pytest.mark.parametrize("labels, num", [(["a", "b", "c"], 2), ({"a": 0, "b": 2}, 2), ("ab", 2)])
def test_a_malformed_label_map_fails_before_reading(make_cfg, tmp_path, labels, num):
    task = {"type": "classification", "num_labels": num, "labels": labels}
    with pytest.raises(ConfigError, match="data.task.labels"):
        label_map(task)


def test_a_byte_order_mark_in_the_header(make_cfg, tmp_path):
    """Excel's UTF-8 starts with a byte-order mark: it must not stick to the first column's name
    (pandas' reader strips it; this guards that)."""
    rows = [[s, str(i % 2)] for i, (s, _) in enumerate(PAIRS * 2)]
    root = write_task(tmp_path / "glue", "SST-2", ["sentence", "label"], rows, bom=True)
    res = run(make_cfg("data=sst2", f"data.root={root}", *SMALL))
    assert "acc" in res["pruned"]


def test_quoted_column_names_and_an_f1_task(make_cfg, tmp_path):
    """MRPC's header has '#1 String': quoted in the YAML; F1 is the monitored metric, accuracy beside it."""
    rows = [[str(i % 2), str(100 + i), str(200 + i), *PAIRS[i % len(PAIRS)]] for i in range(12)]
    root = write_task(tmp_path / "glue", "MRPC", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], rows)
    cfg = make_cfg("data=mrpc", f"data.root={root}", *SMALL)
    assert list(cfg.data.text_columns) == ["#1 String", "#2 String"]
    res = run(cfg)
    assert res["monitor"] == "f1" and {"f1", "acc"} <= set(res["pruned"])


def test_unquoted_hash_column_names_give_a_clear_error(make_cfg, tmp_path):
    """Unquoted, '#1 String' starts a YAML comment: the column list is cut and the run says which
    columns the file has."""
    rows = [[str(i % 2), "1", "2", *PAIRS[i % len(PAIRS)]] for i in range(12)]
    root = write_task(tmp_path / "glue", "MRPC", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], rows)
    with pytest.raises(ConfigError, match=r"has no column\(s\).*it has \['Quality', '#1 ID'"):
        run(make_cfg("data=mrpc", f"data.root={root}", "data.text_columns=[String]", *SMALL))


def test_two_dev_sets(make_cfg, tmp_path):
    """MNLI: the matched dev set is the reported one (val/acc), mismatched is logged and kept beside it
    (val/mismatched/acc) in every epoch's history; they differ when the files differ."""
    labels = ["entailment", "neutral", "contradiction"]
    rows = [[*PAIRS[i % len(PAIRS)], labels[i % 3]] for i in range(12)]
    root = write_task(tmp_path / "glue", "MNLI", ["sentence1", "sentence2", "gold_label"], rows)
    folder = root / "MNLI"
    (folder / "train.tsv").rename(folder / "dev_matched.tsv")
    write_task(root, "MNLI", ["sentence1", "sentence2", "gold_label"], rows)  # train.tsv again
    (folder / "dev.tsv").unlink()
    mismatched = [[r[1], r[0], labels[(i + 1) % 3]] for i, r in enumerate(rows)]
    (folder / "dev_mismatched.tsv").write_text("sentence1\tsentence2\tgold_label\n" + "".join("\t".join(r) + "\n" for r in mismatched))
    res = run(make_cfg("data=mnli", f"data.root={root}", *SMALL))
    assert {"acc", "mismatched/acc", "mismatched/loss"} <= set(res["pruned"])
    assert all("mismatched/acc" in epoch for epoch in res["history"]["pruned"])
    assert res["pruned"]["acc"] != res["pruned"]["mismatched/acc"] or res["pruned"]["loss"] != res["pruned"]["mismatched/loss"]


def test_a_bad_extra_dev_set_name(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="plain word"):
        run(make_cfg("data=mnli", "+data.extra_eval_files={mis-matched: x.tsv}", *SMALL))
