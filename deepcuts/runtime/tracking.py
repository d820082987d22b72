"""Experiment tracking: Lightning's CSV logs always, and one W&B run per job.

A W&B run is named after strategy, ratio and seed, grouped by data set, tagged, given the whole
resolved config, and closed with the final metrics as summary values. It is finished at the end
of every job (also on an error), so the jobs of a multirun never merge into one run.

W&B runs silent (its banner and end-of-run summary go to its own debug log, ``WANDB_SILENT=false``
brings them back); the job logs one line instead: where the run is and how to sync it.
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

log = logging.getLogger(__name__)


def wandb_wanted(cfg: DictConfig) -> bool:
    enabled = cfg.logger.wandb.enabled
    installed = importlib.util.find_spec("wandb") is not None
    if enabled == "auto":
        return installed
    if enabled and not installed:
        raise ConfigError("logger=wandb needs the wandb package: pip install wandb (or logger=csv).")
    return bool(enabled)


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


class Tracker:
    """Hands out the loggers for each phase; holds the job's W&B run, if any."""

    def __init__(self, cfg: DictConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.wandb = None
        if wandb_wanted(cfg):
            from pytorch_lightning.loggers import WandbLogger

            w = cfg.logger.wandb
            Path(w.dir).mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_SILENT", "true")  # before the first wandb.init (its setup reads it)
            self.wandb = WandbLogger(
                project=w.project, entity=w.entity, mode=w.mode, save_dir=str(w.dir),
                group=cfg.data.name, name=f"{cfg.strategy.name}-r{cfg.ratio}-s{cfg.seed}",
                tags=[cfg.data.name, cfg.model.name, cfg.strategy.name, f"ratio={cfg.ratio}", f"seed={cfg.seed}"],
                config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous",
            )
            # Lightning always passes ``anonymous`` (None), which wandb >= 0.19 warns has no effect
            getattr(self.wandb, "_wandb_init", {}).pop("anonymous", None)

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
        where = run_location(run)
        run.finish(exit_code=0 if results is not None else 1)
        wandb.finish()
        log.info("%s", where)


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
