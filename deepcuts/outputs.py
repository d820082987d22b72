"""The outputs contract of a run, and the specs that key the shared-stage cache.

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

from deepcuts import budget as B
from deepcuts import masks as M
from deepcuts.errors import ConfigError
from deepcuts.store import (
    StageCache,
    atomic_path,
    config_key,
    read_tensors,
    write_json,
    write_tensors,
)

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


def is_complete(out: Path, key: str) -> bool:
    """Complete results of *this* config (a changed config in the same folder is redone)."""
    try:
        results = read_results(out)
    except (OSError, ValueError):
        return False
    return results.get("status") == "complete" and results.get("run_key") == key and (out / MASKS).is_file()


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _trainer_spec(trainer: DictConfig) -> dict:
    spec = {k: v for k, v in _plain(trainer).items() if k not in TRAINER_COSMETIC}
    if spec.get("strategy") == "auto":  # Lightning's default, as before the key existed: same cache keys
        del spec["strategy"]
    return spec


def stage_specs(cfg: DictConfig, scored: DictConfig | None = None) -> dict[str, dict]:
    """Exactly the config each shared stage depends on (never the ratio, output folder or logger).
    Eval-set limits are part of the dense spec because the dense metrics are stored with it.
    ``scored``: the config whose strategy computes the scores, when not the run's own (controls)."""
    scored = cfg if scored is None else scored
    data = {k: v for k, v in _plain(cfg.data).items() if k not in ("root", "cache_dir", "num_workers")}
    dense = {
        "data": data,
        "data_files": _file_ids(cfg),
        "model": _plain(cfg.model),
        "optimizer": _plain(cfg.optimizer),
        "scheduler": _plain(cfg.scheduler) if cfg.get("scheduler") else None,
        "trainer": _trainer_spec(cfg.trainer),
        "epochs_dense": cfg.epochs_dense,
        "seed": cfg.seed,
        "selection": cfg.selection,  # the dense model kept is the selected epoch's
        "selection_fraction": cfg.selection_fraction if cfg.selection == "holdout" else None,
        "version": 1,
    }
    strategy = {k: v for k, v in _plain(scored.strategy).items() if k not in ("name", "scope")}
    scores = {
        "dense": dense,
        "strategy": strategy,
        "scoring": _plain(cfg.scoring),
        "prune": _plain(cfg.prune),
        "version": 2,  # 2: SmoothGrad noise at real tokens only
    }
    run = {
        "scores": scores,
        "strategy": _plain(cfg.strategy),
        **{k: cfg.get(k) for k in ("ratio", "ratio_basis", "keep_fraction", "rewind", "epochs_final", "save_model")},
    }
    return {"dense": dense, "scores": scores, "run": run}


TRAINER_COSMETIC = ("log_every_n_steps", "enable_progress_bar", "enable_model_summary", "accelerator")


def run_key(cfg: DictConfig) -> str:
    """The hash of everything that determines a run's results (recorded in results.json)."""
    return config_key(stage_specs(cfg)["run"])


def _file_ids(cfg: DictConfig) -> dict:
    """Size and mtime of the task's files, so edited data never hits an old dense model."""
    from deepcuts.data import resolve_root

    folder = resolve_root(cfg.data.get("root")) / cfg.data.folder
    ids = {}
    for name in (cfg.data.train_file, cfg.data.eval_file):
        path = folder / name
        ids[name] = [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else None
    return ids


RUN_FILES = (RESULTS, MASKS, "sparsity.csv", "config.yaml")


def store_run(folder: Path, out: Path) -> None:
    """Copy a finished run's contract files into a cache entry (results.json last)."""
    for name in RUN_FILES:
        if (out / name).is_file():
            shutil.copy2(out / name, folder / name)


def restore_run(entry: Path, out: Path) -> dict:
    """Copy a cached finished run into ``out``; results.json is written last, saying so."""
    for name in RUN_FILES[1:]:
        if (entry / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copy2(entry / name, tmp)
    results = json.loads((entry / RESULTS).read_text())
    results["cache"] = {"hits": ["run"], "builds": []}
    write_json(out / RESULTS, results)
    return results


def save_dense(folder: Path, model, result: dict) -> None:
    write_tensors(folder / "model.safetensors", model.state_dict())
    write_json(folder / "metrics.json", result)


def load_dense(folder: Path, model) -> dict:
    model.load_state_dict(read_tensors(folder / "model.safetensors"))
    return json.loads((folder / "metrics.json").read_text())


def _metrics_only(epoch: dict) -> dict:
    """One epoch's dev metrics, without its position (epoch, optimiser step)."""
    return {k: v for k, v in epoch.items() if k not in ("epoch", "step", "holdout")}


def collect_results(
    cfg, model, masks: dict, own_budget: B.Budget, keep_fraction: float, dense: dict, pruned: dict,
    timings: dict, cache: StageCache, score_dir: Path, strategy, scorer,
) -> dict:
    total = B.count_parameters(model)
    nonzero = B.count_nonzero(model)
    kept = sum(int(m.sum()) for m in masks.values())
    meta = _score_meta(score_dir)
    return {
        "status": "complete",
        "run_key": run_key(cfg),
        "data": cfg.data.name,
        "model": cfg.model.name,
        "strategy": cfg.strategy.name,
        "scope": scorer.scope,
        "control": strategy.control,
        "ratio": float(cfg.ratio),
        "ratio_basis": cfg.ratio_basis,
        "seed": int(cfg.seed),
        "rewind": cfg.rewind,
        "monitor": cfg.data.monitor,
        "num_attention_heads": model.bert.config.num_attention_heads,  # for per-head mask analysis
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
        "scoring_batches": meta.get("batches"),
        "timings_s": timings,
        "cache": {"hits": list(cache.hits), "builds": list(cache.builds)},
    }


def _score_meta(score_dir: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(score_dir / "scores.safetensors"), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {k: int(v) for k, v in meta.items()}


def write_run(out: Path, results: dict, masks: dict, model, cfg: DictConfig) -> None:
    """Masks, sparsity table and config first; ``results.json`` last, so it marks completion."""
    write_tensors(out / MASKS, masks, metadata={"strategy": results["strategy"], "ratio": str(results["ratio"])})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["parameter", "numel", "kept", "kept_fraction"])
    writer.writeheader()
    writer.writerows(M.sparsity_rows(masks))
    with atomic_path(out / "sparsity.csv") as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("save_model"):
        from deepcuts.export import export_pruned

        export_pruned(model, out / "pruned_model")
    write_json(out / RESULTS, results)
