"""Experiment tracking: Lightning's CSV logs always, and W&B runs a sweep can be browsed by.

Each job is one W&B run: in the group of its sweep (:func:`run_group`), of job type its strategy,
named ``<strategy>-r<ratio>-s<seed>``, tagged, given the resolved config with dotted keys
(:func:`flat_config`), and closed with the final metrics as summary values. It is finished at the
end of every job (also on an error), so the jobs of a multirun never merge into one run. The job
that built a dense fine-tune (``cache.builds``) also logs its history as a run of its own (job
type ``dense``): a sweep shows one dense curve per dense model, not one per job.

W&B runs silent (its banner and end-of-run summary go to its own debug log, ``WANDB_SILENT=false``
brings them back); the job logs one line per run instead: where it is and how to sync it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger

from deepcuts.config.errors import ConfigError
from deepcuts.config.nested import flatten
from deepcuts.config.neutral import dense_input

log = logging.getLogger(__name__)
STEP = "trainer/global_step"  # Lightning's x-axis in W&B; the dense run logs its epochs against it too
NAMES = {"data": "name", "model": "name", "strategy": "name", "structure": "kind"}  # also on top, for grouping


def wandb_wanted(cfg: DictConfig) -> bool:
    enabled = cfg.logger.wandb.enabled
    installed = importlib.util.find_spec("wandb") is not None
    if enabled == "auto":
        return installed
    if enabled and not installed:
        raise ConfigError("logger=wandb needs the wandb package: pip install wandb (or logger=csv).")
    return bool(enabled)


def hydra_sweep() -> Path | None:
    """This job's sweep folder (``hydra.sweep.dir``) when it runs in a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def sweep_group(sweep: Path) -> str:
    """A sweep folder as a W&B group: its parent's name and its own (``study_cpu/2024-05-01_12-30-05``,
    ``2024-05-01/12-30-05``), since the folder's own name is mostly the launch time."""
    sweep = Path(sweep).resolve()
    return f"{sweep.parent.name}/{sweep.name}"


def run_group(cfg: DictConfig) -> str:
    """``logger.wandb.group`` (or ``WANDB_RUN_GROUP``) when set; else the multirun's sweep folder;
    else, for a single run, the data set (single runs of one task browse together)."""
    if group := cfg.logger.wandb.get("group"):
        return str(group)
    sweep = hydra_sweep()
    return sweep_group(sweep) if sweep is not None else cfg.data.name


def flat_config(cfg: DictConfig) -> dict:
    """The resolved config with dotted keys (``optimizer.lr``, ``structure.kind``; lists as JSON
    text), so W&B's run table filters and groups on any setting; ``data``, ``model``,
    ``strategy`` and ``structure`` also hold their name (kind) as a top-level key."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {**flat, **{k: flat[f"{k}.{v}"] for k, v in NAMES.items() if f"{k}.{v}" in flat}}


def summary_values(results: dict) -> dict:
    """Flat summary keys such as ``pruned/pearson``, ``dense/pearson``, ``prune/compression_ratio``."""
    flat = {f"{phase}/{k}": v for phase in ("dense", "pruned") for k, v in results[phase].items()}
    flat.update(
        {
            "prune/compression_ratio": results["achieved_ratio"],
            "prune/keep_fraction": results["keep_fraction"],
            "prune/sparsity": results["prunable_sparsity"],
            "best_epoch": results["best_epoch"],
        }
    )
    flat.update({f"time/{k}": v for k, v in results["timings_s"].items()})
    return flat


def define_metrics(run, monitor: str, mode: str, *phases: str) -> None:
    """The dev curve ``val/<monitor>`` (against the optimiser step) is summed up by its best epoch,
    and each phase's result ``<phase>/<monitor>`` is declared with the task's direction (``max``
    or ``min``); that result is the kept epoch (results.json), set at the end."""
    run.define_metric(STEP)
    run.define_metric(f"val/{monitor}", step_metric=STEP, summary=mode)
    for phase in phases:
        run.define_metric(f"{phase}/{monitor}", summary=mode)


class Tracker:
    """Hands out the loggers for each phase; holds the job's W&B run, if any."""

    def __init__(self, cfg: DictConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.wandb = None
        if wandb_wanted(cfg):
            from pytorch_lightning.loggers import WandbLogger

            w, sweep = cfg.logger.wandb, hydra_sweep()
            save_dir = Path(w.dir) if w.get("dir") else sweep or Path("outputs")  # a sweep keeps its own runs
            save_dir.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_SILENT", "true")  # before the first wandb.init (its setup reads it)
            self.init = {"project": w.project, "entity": w.entity, "mode": w.mode, "group": run_group(cfg),
                         "reinit": "finish_previous"}
            name = f"{cfg.strategy.name}-r{cfg.ratio}-s{cfg.seed}"
            tags = [cfg.data.name, cfg.model.name, cfg.strategy.name, f"ratio={cfg.ratio}", f"seed={cfg.seed}",
                    f"structure={cfg.structure.kind}"]
            if cfg.get("recipe_name"):
                tags.append(f"recipe={cfg.recipe_name}")
            self.wandb = WandbLogger(**self.init, save_dir=str(save_dir), job_type=cfg.strategy.name, name=name,
                                     tags=tags, config=flat_config(cfg))
            # Lightning always passes ``anonymous`` (None), which wandb >= 0.19 warns has no effect
            getattr(self.wandb, "_wandb_init", {}).pop("anonymous", None)
            define_metrics(self.wandb.experiment, cfg.data.monitor, cfg.data.monitor_mode, "pruned", "dense")

    def loggers(self, stage: str, use_wandb: bool = True) -> list[Logger]:
        loggers: list[Logger] = []
        if self.cfg.logger.csv:
            loggers.append(CSVLogger(save_dir=str(self.out / "logs"), name=stage, version=""))
        if use_wandb and self.wandb is not None:
            loggers.append(self.wandb)
        return loggers

    def finish(self, results: dict | None, sparsity: list[dict] | None = None) -> None:
        if self.wandb is None:
            return
        import wandb

        run = self.wandb.experiment
        if results is not None:
            run.summary.update(summary_values(results))
        if sparsity:  # where the strategy cut, tensor by tensor (the run's sparsity.csv)
            columns = list(sparsity[0])
            run.log({"prune/sparsity_table": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in sparsity])})
        where = [run_location(run)]
        run.finish(exit_code=0 if results is not None else 1)
        wandb.finish()
        if results is not None and "dense" in results["cache"]["builds"] and results["history"]["dense"]:
            where.append(self.log_dense(results))
        for line in where:
            log.info("%s", line)

    def log_dense(self, results: dict) -> str:
        """The dense fine-tune this job built, as a run of its own in the same group: job type
        ``dense``, named after its stage key (results.json ``stage_keys.dense``, its cache folder),
        the config keys it reads, its dev metrics per epoch and its kept epoch as ``dense/*``."""
        import wandb

        cfg, key = self.cfg, results["stage_keys"]["dense"]
        config = {k: v for k, v in flat_config(cfg).items() if dense_input(k) or k in ("data", "model")}
        run = wandb.init(**self.init, dir=self.wandb.save_dir, job_type="dense", name=f"dense-{key}",
                         config={**config, "stage_key": key}, tags=[cfg.data.name, cfg.model.name, "dense", f"seed={cfg.seed}"])
        define_metrics(run, cfg.data.monitor, cfg.data.monitor_mode, "dense")
        for epoch in results["history"]["dense"]:
            row = {STEP: epoch["step"], "epoch": epoch["epoch"]}
            row.update({f"val/{k}": v for k, v in epoch.items() if k not in ("epoch", "step", "holdout")})
            row.update({f"holdout/{k}": v for k, v in (epoch.get("holdout") or {}).items()})
            run.log(row)
        run.summary.update({**{f"dense/{k}": v for k, v in results["dense"].items()},
                            "best_epoch": results.get("dense_best_epoch"),
                            "time/dense": results["timings_s"].get("dense")})
        where = run_location(run)
        run.finish()
        return where


def run_location(run) -> str:
    """One line: where a W&B run is, and for an offline run how to upload it."""
    settings = getattr(run, "settings", None)
    if getattr(run, "offline", False) or getattr(settings, "mode", None) in ("offline", "dryrun"):
        folder = getattr(settings, "sync_dir", None) or str(Path(run.dir).parent)
        return f"W&B run {run.name} saved offline in {folder}; upload it with: wandb sync {folder}"
    return f"W&B run {run.name}: {run.url}"


@contextlib.contextmanager
def tracking(cfg: DictConfig, out: Path) -> Iterator[Tracker]:
    tracker = Tracker(cfg, out)
    try:
        yield tracker
    except BaseException:
        tracker.finish(None)
        raise
