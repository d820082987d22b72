"""W&B offline (no network): one run per job in its sweep's group, with the flat config and the final
metrics; one run per dense model built; analysis folders in their sweep's group."""

from __future__ import annotations

import contextlib
import json
import struct
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from deepcuts.analysis.render.wandb import sweep_of
from deepcuts.pipeline.flow import run
from deepcuts.runtime.tracking import flat_config, run_group
from tests.conftest import REPO

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


def read_run(run_dir: Path) -> dict:
    """What an offline run holds: its run record (group, job type, name, tags), config and summary
    (key -> value, the last update winning, nested keys dotted), the summaries its metric
    definitions ask for, and its history rows."""
    out: dict = {"config": {}, "summary": {}, "metrics": {}, "history": []}

    def take(into: dict, updates) -> None:
        for u in updates:
            into[u.key or ".".join(u.nested_key)] = json.loads(u.value_json)

    for record in finished_run_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.update(group=r.run_group, job_type=r.job_type, name=r.display_name, tags=list(r.tags))
            take(out["config"], r.config.update)
        elif kind == "config":
            take(out["config"], record.config.update)
        elif kind == "summary":
            take(out["summary"], record.summary.update)
        elif kind == "metric":
            out["metrics"][record.metric.name] = [f.name for f, on in record.metric.summary.ListFields() if on]
        elif kind == "history":
            row: dict = {}
            take(row, record.history.item)
            out["history"].append(row)
    return out


def multirun(sweep: Path):
    """Hydra's config in a job of a multirun whose sweep folder is ``sweep`` (as its launchers set it)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.sweep.dir={sweep}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    return cfg


@contextlib.contextmanager
def in_sweep(sweep: Path):
    """Code run inside as a job of the multirun with sweep folder ``sweep`` (Hydra writes its
    ``multirun.yaml`` there first)."""
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    hydra_cfg = HydraConfig.instance()
    before = hydra_cfg.cfg
    hydra_cfg.set_config(multirun(sweep))
    try:
        yield sweep
    finally:
        hydra_cfg.cfg = before


def test_group_is_the_sweep_folder_and_for_a_single_run_the_data_set(make_cfg, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(name, raising=False)
    cfg = make_cfg("data=stsb")
    assert (cfg.logger.wandb.mode, cfg.logger.wandb.group, cfg.logger.wandb.dir) == ("offline", None, None)
    assert run_group(cfg) == "stsb"  # no multirun: a single run, grouped by task
    assert run_group(make_cfg("data=stsb", "logger.wandb.group=mine")) == "mine"
    sweep = tmp_path / "study" / "2024-05-01_12-30-05"
    with in_sweep(sweep):
        assert run_group(cfg) == "study/2024-05-01_12-30-05"
        assert run_group(make_cfg("data=stsb", "logger.wandb.group=mine")) == "mine"
    (sweep / "report").mkdir()
    assert sweep_of(sweep / "report") == sweep.resolve() and sweep_of(tmp_path) is None


def test_config_is_flat_with_names_on_top(make_cfg):
    flat = flat_config(make_cfg("data=stsb", "strategy=gradcam_shift", "structure=heads_neurons", "recipe=kshot"))
    assert not any(isinstance(v, (dict, list)) for v in flat.values())
    assert flat["strategy"] == flat["strategy.name"] == "gradcam_shift"
    assert flat["structure"] == flat["structure.kind"] == "heads_neurons"
    assert (flat["data"], flat["model"], flat["recipe_name"]) == ("stsb", "tiny", "kshot")
    assert (flat["ratio"], flat["seed"], flat["optimizer.lr"]) == (3, 0, 5e-5)


@pytest.mark.slow
def test_sweep_jobs_are_grouped_and_their_shared_dense_model_logged_once(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    sweep = tmp_path / "study" / "2024-05-01_12-30-05"
    with in_sweep(sweep):  # two jobs of one sweep; the second scores the first's dense model
        jobs = [run(make_cfg("data=stsb", f"strategy={s}", "logger.wandb.enabled=true", "epochs_dense=2",
                             f"output_dir={sweep / s}")) for s in ("layer_mag_weight", "layer_mag_grad")]
    assert "dense" in jobs[0]["cache"]["builds"] and "dense" in jobs[1]["cache"]["hits"]
    runs = [read_run(d) for d in sorted((sweep / "wandb").glob("offline-run-*"))]  # saved in the sweep folder
    assert {r["group"] for r in runs} == {"study/2024-05-01_12-30-05"}
    by_type = {r["job_type"]: r for r in runs}
    assert len(runs) == 3 and by_type.keys() == {"layer_mag_weight", "layer_mag_grad", "dense"}

    job, results = by_type["layer_mag_weight"], jobs[0]
    assert job["name"] == "layer_mag_weight-r3-s0"
    assert {"stsb", "tiny", "ratio=3", "seed=0", "structure=none"} <= set(job["tags"])
    config = job["config"]
    assert config["strategy"] == config["strategy.name"] == "layer_mag_weight" and config["structure.kind"] == "none"
    assert (config["ratio"], config["seed"], config["ratio_basis"], config["optimizer.lr"]) == (3, 0, "bert_base", 5e-5)
    summary = job["summary"]
    assert summary["pruned/pearson"] == pytest.approx(results["pruned"]["pearson"])  # the kept epoch
    assert summary["dense/pearson"] == pytest.approx(results["dense"]["pearson"])
    assert summary["prune/compression_ratio"] == pytest.approx(results["achieved_ratio"])
    assert summary["prune/keep_fraction"] == pytest.approx(results["keep_fraction"])
    assert summary["val/pearson"] == {"max": pytest.approx(max(h["pearson"] for h in results["history"]["pruned"]))}
    assert job["metrics"]["pruned/pearson"] == job["metrics"]["val/pearson"] == ["max"]

    dense = by_type["dense"]  # one run for the one dense model, logged by the job that built it
    assert dense["name"] == f"dense-{results['stage_keys']['dense']}" == f"dense-{jobs[1]['stage_keys']['dense']}"
    assert dense["config"]["seed"] == 0 and "ratio" not in dense["config"] and "strategy" not in dense["config"]
    curve = [row["val/pearson"] for row in dense["history"] if "val/pearson" in row]
    assert curve == pytest.approx([h["pearson"] for h in results["history"]["dense"]]) and len(curve) == 2
    assert dense["summary"]["dense/pearson"] == pytest.approx(results["dense"]["pearson"])
    assert dense["metrics"]["dense/pearson"] == dense["metrics"]["val/pearson"] == ["max"]


@pytest.mark.slow
def test_analysis_folder_goes_to_wandb_as_images_and_tables_in_its_sweep_group(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from deepcuts.analysis.render.wandb import log_folder

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    sweep = tmp_path / "study" / "2024-05-01_12-30-05"
    (sweep / "multirun.yaml").parent.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    out = sweep / "iou"  # an analysis written into the sweep folder (a report's default --out)
    out.mkdir()
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(out / "heatmap_mean_stsb_r3.png")
    (out / "layer_iou.csv").write_text("layer,iou_kept\n0,0.9\n1,0.8\n")
    log_folder(out, "mask-analysis")
    (run,) = (sweep / "wandb").glob("offline-run-*")  # beside the sweep's training runs
    logged = read_run(run)
    assert (logged["group"], logged["job_type"]) == ("study/2024-05-01_12-30-05", "mask-analysis")
    items = {k: v for row in logged["history"] for k, v in row.items()}
    assert items.get("mask-analysis/heatmap_mean_stsb_r3._type") == "image-file", sorted(items)
    assert items.get("mask-analysis/layer_iou._type") == "table-file", sorted(items)
    assert list((run / "files" / "media").rglob("*.png")) and list((run / "files" / "media").rglob("*.json"))
