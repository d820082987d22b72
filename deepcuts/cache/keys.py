"""What each cached stage is keyed by: the config that determines it, and the content a config
cannot see (the code, the library versions, the data files and the initial weights).

A key is derived, never maintained: editing a strategy's ``batch_term`` changes the digest of its
class chain, so the next run finds no entry and scores again; a new torch changes the library
versions, so the dense model is fine-tuned again. Nothing here is bumped by hand.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import linecache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from deepcuts.cache.code import code_digest as closure_digest
from deepcuts.cache.store import config_key, file_sha256

PACKAGE = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers", "tokenizers", "pytorch-lightning", "datasets", "torchmetrics", "numpy")
FINE_TUNE_CODE = ("deepcuts.data.glue", "deepcuts.models.module", "deepcuts.training.fine_tune", "deepcuts.scoring.trace")
SCORING_CODE = ("deepcuts.scoring.passes",)  # with the files of the scoring strategy's class chain
RUN_CODE = ("deepcuts.pipeline.flow",)  # + the run strategy's files
TRAINER_COSMETIC = ("log_every_n_steps", "enable_progress_bar", "enable_model_summary", "accelerator")
NOT_DATA = ("root", "cache_dir", "num_workers")  # where the data is, not what it is


def library_versions() -> dict[str, str]:
    """The installed versions of the libraries whose numerics a fine-tune depends on."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def code_digest(modules: tuple[str, ...], *objects: object) -> str:
    """The import-closure digest of ``modules`` and ``objects`` (deepcuts.cache.code)."""
    return closure_digest(*modules, *objects)


def strategy_digest(cls: type) -> str:
    """sha256 over the whole source files that define a strategy's class chain (its MRO minus
    ``object`` and Lightning's Callback, which the library versions cover): the classes and
    the helpers beside them (activation capture, noise hooks, the base callback)."""
    files = sorted({
        inspect.getsourcefile(c) for c in inspect.getmro(cls)
        if c is not object and not c.__module__.startswith("pytorch_lightning")
    })
    return _digest([Path(f).read_text() for f in files])


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state dict (the model's initial state)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:24]


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def _trainer_spec(trainer: DictConfig) -> dict:
    spec = {k: v for k, v in _plain(trainer).items() if k not in TRAINER_COSMETIC}
    if spec.get("strategy") == "auto":  # Lightning's default, the same as no key
        del spec["strategy"]
    return spec


def data_files(cfg: DictConfig) -> dict:
    """The sha256 of the task's train and dev files: edited data never hits an old model, and a
    copy of the same files (another machine, another mtime) still does."""
    from deepcuts.data.glue import resolve_root

    folder = resolve_root(cfg.data.get("root")) / cfg.data.folder
    return {
        name: file_sha256(folder / name) if (folder / name).is_file() else None
        for name in (cfg.data.train_file, cfg.data.eval_file, *(cfg.data.get("extra_eval_files") or {}).values())
    }


def stage_specs(
    cfg: DictConfig,
    initial_state: str,
    scorer: object,
    scoring_batches: int,
    strategy: object,
    scored: DictConfig | None = None,
    at: str = "finetuned",
    keep_fraction: float | None = None,
) -> dict[str, dict]:
    """The spec of each cached stage: dense fine-tune, scores, finished run.

    ``initial_state``: :func:`state_digest` of the model before fine-tuning (pretrained weights
    and the seeded head). ``scorer``: the strategy that computes the scores and
    ``scoring_batches`` the number of batches it will see (resolved: 0 for data-free scores);
    ``strategy``: the run's own strategy (a control such as shuffled scores with another,
    ``scored`` being the config that names it). Never the ratio, output folder or logger.
    """
    scored = cfg if scored is None else scored
    dense = {
        "data": {k: v for k, v in _plain(cfg.data).items() if k not in NOT_DATA},
        "data_files": data_files(cfg),
        "model": _plain(cfg.model),
        "initial_state": initial_state,
        "optimizer": _plain(cfg.optimizer),
        "scheduler": _plain(cfg.scheduler) if cfg.get("scheduler") else None,
        "trainer": _trainer_spec(cfg.trainer),
        "epochs_dense": cfg.epochs_dense,
        "trace_movement": bool(cfg.scoring.get("trace_movement", True)),  # the entry holds the trace
        "seed": cfg.seed,
        "selection": cfg.selection,  # the dense model kept is the selected epoch's
        "selection_fraction": cfg.selection_fraction if cfg.selection == "holdout" else None,
        "code": code_digest(FINE_TUNE_CODE),
        "libraries": library_versions(),
    }
    # the scoring settings only matter to scores computed from data; the batch count resolved
    scoring = {k: v for k, v in _plain(cfg.scoring).items() if k not in ("batches", "at")} if scoring_batches else None
    scores = {
        "dense": dense,
        "strategy": {k: v for k, v in _plain(scored.strategy).items() if k not in ("name", "scope")},
        "scoring": scoring,
        "scoring_batches": scoring_batches,
        "at": at,  # the state scored, resolved (scoring.at or the strategy's default)
        "prune": _plain(cfg.prune),
        "code": [code_digest(SCORING_CODE), strategy_digest(type(scorer))],
    }
    run = {
        "scores": scores,
        "strategy": _plain(cfg.strategy),
        **{k: cfg.get(k) for k in ("ratio", "ratio_basis", "keep_fraction", "rewind", "epochs_final", "save_model")},
        "kept": keep_fraction,  # resolved: a reference basis (ratio_basis) is part of it
        **({"structure": _plain(cfg.structure), "structure_code": code_digest(("deepcuts.pruning.structured",))}
           if _structured(cfg) else {}),  # none: keys as before
        "code": [code_digest(RUN_CODE), strategy_digest(type(strategy))],
        **_recipe(cfg),  # entries only for the levers a run uses
    }
    return {"dense": dense, "scores": scores, "run": run}


def _recipe(cfg: DictConfig) -> dict:
    """The run-key entries of the recovery levers, present only when one is used."""
    extra = {}
    if cfg.get("shots", 1) != 1:
        extra |= {"shots": cfg.shots, "shot_epochs": cfg.get("shot_epochs", 1), "gradual_code": code_digest(("deepcuts.pruning.schedule",))}
    if (distill := cfg.get("distill")) is not None and distill.get("alpha", 0):
        extra |= {"distill": _plain(distill), "distill_code": code_digest(("deepcuts.training.distill",))}
    if str(cfg.get("rewind")).startswith(("step:", "epoch:")):
        from deepcuts.training.rewind import RewindPoint

        extra |= {"rewind": RewindPoint.parse(cfg.rewind).spec(), "rewind_code": code_digest(("deepcuts.training.rewind",))}
    return extra


def _structured(cfg: DictConfig) -> bool:
    return cfg.get("structure") is not None and cfg.structure.get("kind", "none") != "none"


def run_key(specs: dict[str, dict]) -> str:
    """The hash of everything that determines a run's results (recorded in results.json)."""
    return config_key(specs["run"])
