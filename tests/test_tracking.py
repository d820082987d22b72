"""W&B: one offline run per job, with the resolved config and the final metrics (no network)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from deepcuts.pipeline.flow import run

WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of framed chunks
CHUNK_HEADER = struct.Struct("<IHB")  # crc32c, length, type (1 full, 2 first, 3 middle, 4 last)
FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version


def wandb_records(path: Path) -> list:
    """Every ``Record`` protobuf in an offline run's ``.wandb`` file, in order.

    wandb 0.31 ships the protobuf classes but no reader for its log format, so the framing is
    undone here: records longer than what is left of a block continue in the next block.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, _, _ = FILE_HEADER.unpack_from(data)
    assert ident == b":W&B", f"{path} is not a W&B log (starts {data[:8]!r})"
    records, pending, pos = [], b"", FILE_HEADER.size
    while pos + CHUNK_HEADER.size <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < CHUNK_HEADER.size:  # block tail too short for a header: zero padding
            pos += left
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pos += CHUNK_HEADER.size
        if kind == 0 and length == 0:
            break
        if pos + length > len(data):  # still being written
            break
        chunk, pos = data[pos : pos + length], pos + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def finished_run_records(run_dir: Path, wait_s: float = 60.0) -> list:
    """The run's records once its ``exit`` record is on disk.

    ``run.finish()`` returns when the wandb service has the run's last record, which its writer
    may still hold in a buffer for a moment; a loaded machine shows that gap.
    """
    deadline = time.monotonic() + wait_s
    while True:
        records = wandb_records(next(run_dir.glob("*.wandb")))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            kinds = [r.WhichOneof("record_type") for r in records]
            raise AssertionError(f"{run_dir}: no exit record after {wait_s:.0f} s; records so far: {kinds}")
        time.sleep(0.2)


def wandb_items(run_dir: Path) -> dict[str, object]:
    """Key -> value of the run's config and summary, the last update winning (nested keys dotted)."""
    items: dict[str, object] = {}

    def take(updates) -> None:
        for u in updates:
            items[u.key or ".".join(u.nested_key)] = json.loads(u.value_json)

    for record in finished_run_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            take(record.run.config.update)
        elif kind == "config":
            take(record.config.update)
        elif kind == "summary":
            take(record.summary.update)
    return items


@pytest.mark.slow
def test_wandb_offline_run_has_config_and_summary(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("data=stsb", "strategy=layer_mag_weight", "logger.wandb.enabled=true",
                   f"logger.wandb.dir={tmp_path / 'wb'}")
    results = run(cfg)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    items = wandb_items(runs[0])
    assert {"ratio", "pruned/pearson"} <= items.keys(), f"config/summary keys found: {sorted(items)}"
    assert items["ratio"] == 3 and items["ratio_basis"] == "bert_base" and items["seed"] == 0
    assert items["pruned/pearson"] == pytest.approx(results["pruned"]["pearson"])
    assert items["dense/pearson"] == pytest.approx(results["dense"]["pearson"])
    assert items["prune/compression_ratio"] == pytest.approx(results["achieved_ratio"])
    assert items["prune/keep_fraction"] == pytest.approx(results["keep_fraction"])
    # a second job is a second run, not merged into the first
    run(make_cfg("data=stsb", "strategy=random", "logger.wandb.enabled=true",
                 f"logger.wandb.dir={tmp_path / 'wb'}", f"output_dir={tmp_path / 'run2'}"))
    assert len(list((tmp_path / "wb" / "wandb").glob("offline-run-*"))) == 2


@pytest.mark.slow
def test_analysis_folder_goes_to_wandb_as_images_and_tables(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from deepcuts.analysis.render.wandb import log_folder

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "iou"
    out.mkdir()
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(out / "heatmap_mean_stsb_r3.png")
    (out / "layer_iou.csv").write_text("layer,iou_kept\n0,0.9\n1,0.8\n")
    log_folder(out, "mask-analysis")
    (run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    logged = {u.key or ".".join(u.nested_key): u.value_json for r in finished_run_records(run)
              if r.WhichOneof("record_type") == "history" for u in r.history.item}
    assert json.loads(logged.get("mask-analysis/heatmap_mean_stsb_r3._type", "null")) == "image-file", sorted(logged)
    assert json.loads(logged.get("mask-analysis/layer_iou._type", "null")) == "table-file", sorted(logged)
    assert list((run / "files" / "media").rglob("*.png")) and list((run / "files" / "media").rglob("*.json"))
