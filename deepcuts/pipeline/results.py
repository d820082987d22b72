"""The outputs contract of a run, and the copy of a finished run kept in the cache (``runs``).

Every run folder holds ``results.json`` (written last, atomically, with ``"status": "complete"``),
``masks.safetensors`` (one boolean tensor per pruned parameter, keyed by parameter name),
``sparsity.csv`` (kept fraction per tensor), ``config.yaml`` and Lightning's CSV logs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deepcuts.cache.store import (
    atomic_path,
    write_json,
    write_tensors,
)
from deepcuts.config.errors import ConfigError
from deepcuts.data.tsv import resolve_root
from deepcuts.models.card import write_card
from deepcuts.pruning import budget as B
from deepcuts.pruning import masks as M

RESULTS = "results.json"
MASKS = "masks.safetensors"


def prepare_output_dir(path: str | os.PathLike) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"output folder {out} is not writable ({err.strerror}). Choose another with "
            "output_dir=... (single run) or hydra.sweep.dir=... (multirun)."
        ) from None
    return out


def read_results(out: Path) -> dict:
    return json.loads((out / RESULTS).read_text())


def is_complete(out: Path, key: str, save_model: bool = False) -> bool:
    """Complete results of *this* config (a changed config in the same folder is redone)."""
    try:
        results = read_results(out)
    except (OSError, ValueError):
        return False
    wanted = ["data.json", "README.md"] if save_model else []  # older exports lack them: redone
    if save_model == "onnx":
        wanted.append("model.onnx")
    return (
        results.get("status") == "complete" and results.get("run_key") == key and (out / MASKS).is_file()
        and all((out / EXPORT / name).is_file() for name in wanted)
    )


RUN_FILES = (RESULTS, MASKS, "sparsity.csv")  # config.yaml is the job's own, never copied
EXPORT = "pruned_model"


def store_run(folder: Path, out: Path) -> None:
    """Copy a finished run's contract files (and its export) into a cache entry."""
    for name in RUN_FILES:
        if (out / name).is_file():
            shutil.copy2(out / name, folder / name)
    if (out / EXPORT).is_dir():
        shutil.copytree(out / EXPORT, folder / EXPORT)


def restore_run(entry: Path, out: Path, cfg: DictConfig) -> dict:
    """Copy a cached finished run into ``out`` with this job's own config.yaml; results.json is
    written last, saying so."""
    for name in RUN_FILES[1:]:
        if (entry / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copy2(entry / name, tmp)
    write_config(out, cfg)
    if (entry / EXPORT).is_dir():
        shutil.rmtree(out / EXPORT, ignore_errors=True)
        with atomic_path(out / EXPORT) as tmp:
            tmp.unlink()
            shutil.copytree(entry / EXPORT, tmp)
    results = json.loads((entry / RESULTS).read_text())
    results["cache"] = {"hits": ["run"], "builds": []}
    write_json(out / RESULTS, results)
    return results


def write_config(out: Path, cfg: DictConfig) -> None:
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def _metrics_only(epoch: dict) -> dict:
    """One epoch's dev metrics, without its position (epoch, optimiser step)."""
    return {k: v for k, v in epoch.items() if k not in ("epoch", "step", "holdout")}


def collect_results(plan, model, masks: dict, dense: dict, pruned: dict, timings: dict, stages,
                    score_batches: int | None) -> dict:
    """``results.json``'s content (the outputs contract) from the plan and what the stages gave."""
    cfg, own_budget, keep_fraction, cache = plan.cfg, plan.budget, plan.keep_fraction, plan.cache
    total = own_budget.total  # before any removal (structure): the ratio's own basis
    nonzero = B.count_nonzero(model)
    kept = sum(int(m.sum()) for m in masks.values())
    return {
        "status": "complete",
        "run_key": plan.run_key,
        "data": cfg.data.name,
        "model": cfg.model.name,
        "strategy": cfg.strategy.name,
        "scope": plan.scorer.scope,
        "control": plan.strategy.control,
        "ratio": float(cfg.ratio),
        "ratio_basis": cfg.ratio_basis,
        "seed": int(cfg.seed),
        "rewind": cfg.rewind,
        "monitor": cfg.data.monitor,
        "num_attention_heads": model.encoder.config.num_attention_heads,  # for per-head mask analysis
        "arch": getattr(model, "arch", None),  # the transformers model_type
        "layout": getattr(model, "layout", None),  # the per-layer module names (per-head analysis)
        "keep_fraction": keep_fraction,
        "kept_prunable": kept,
        "prunable_parameters": own_budget.prunable,
        "total_parameters": total,
        "nonzero_parameters": nonzero,
        "achieved_ratio": total / nonzero,
        "prunable_sparsity": 1 - kept / own_budget.prunable,
        "selection": cfg.selection,  # dev: selected on the reported set (the paper's practice)
        "dense": _metrics_only(dense["selected"]),
        "dense_last_epoch": _metrics_only(dense["last"]),
        "pruned": _metrics_only(pruned["selected"]),
        "pruned_last_epoch": _metrics_only(pruned["last"]),
        "best_epoch": pruned["best_epoch"],
        "dense_best_epoch": dense.get("best_epoch"),
        "history": {"dense": dense["history"], "pruned": pruned["history"]},
        "epochs_dense": cfg.epochs_dense,
        "epochs_final": cfg.epochs_final,
        "scoring_batches": score_batches,  # optimiser steps for movement (traced in training)
        "scoring_at": plan.at,
        "dense_skipped": bool(dense.get("skipped")),
        "time_saved_s": dense.get("time_saved_s"),  # skipped dense: the identical cached run's time
        "timings_s": timings,
        "machine": machine(),
        "cache": {"hits": list(cache.hits), "builds": list(cache.builds)},
        "stage_keys": dict(stages.keys),  # the cache entries this run's stages came from: what runs share
    }


def machine() -> dict:
    """Where the numbers came from: every figure in a report should be able to say so."""
    import platform

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "device": device,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def cpu_model() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``; None elsewhere): ``platform`` says x86_64 only."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def write_run(out: Path, results: dict, masks: dict, model, cfg: DictConfig, tokenizer=None) -> None:
    """Masks, sparsity table and config first; ``results.json`` last, so it marks completion."""
    write_tensors(out / MASKS, masks, metadata={"strategy": results["strategy"], "ratio": str(results["ratio"])})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["parameter", "numel", "kept", "kept_fraction"])
    writer.writeheader()
    writer.writerows(M.sparsity_rows(masks))
    with atomic_path(out / "sparsity.csv") as tmp:
        tmp.write_text(buf.getvalue())
    write_config(out, cfg)
    if cfg.get("save_model"):
        from deepcuts.models.compact import export_compact
        from deepcuts.models.export import export_pruned

        tmp = out / f".{EXPORT}.tmp"  # built aside, then swapped in: no stale or half-written files
        shutil.rmtree(tmp, ignore_errors=True)
        data = {**OmegaConf.to_container(cfg.data, resolve=True), "precision": str(cfg.trainer.get("precision", "32"))}
        export_pruned(model, tmp, tokenizer, data)
        compact = None  # a structured model is already dense and small: no compact copy
        if results.get("structure") is None:
            compact = export_compact(model, masks, tmp)  # the whole model: kept values + bitmasks
        dense = sum(f.stat().st_size for f in tmp.glob("*.safetensors") if f != compact)
        sizes = {"dense": dense, "compact": compact.stat().st_size if compact else None}
        if cfg.save_model == "onnx":
            from deepcuts.models.onnx import export_onnx
            from deepcuts.models.predict import read_examples

            dev = resolve_root(cfg.data.get("root")) / cfg.data.folder / cfg.data.eval_file
            texts, _ = read_examples(dev, data, has_labels=False, limit=cfg.data.get("max_eval_samples"))
            export_onnx(tmp, texts)  # checked against PyTorch on the dev set, or the job fails
            sizes["onnx"] = (tmp / "model.onnx").stat().st_size
        results = {**results, "export_bytes": sizes}
        write_card(tmp, results, cfg)
        shutil.rmtree(out / EXPORT, ignore_errors=True)
        tmp.rename(out / EXPORT)
    write_json(out / RESULTS, results)
