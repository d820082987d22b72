"""One fine-tuning phase with Lightning: a fresh optimiser, per-epoch dev metrics, and the best
epoch (on the task's monitor metric) loaded back into the model when asked."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from deepcuts.cache.store import write_json
from deepcuts.config.errors import ConfigError
from deepcuts.config.neutral import without_neutral
from deepcuts.pruning.masks import detach_masked_views
from deepcuts.runtime.progress import STAGE_LABELS, progress_callbacks
from deepcuts.training.distill import Teacher

PHASE_SEED_OFFSET = {"dense": 0, "pruned": 1}  # k-shot's intermediate fine-tunes "shot<t>": 100 + t


def phase_seed(seed: int, stage: str) -> int:
    """The seed a fine-tuning phase starts from: its own per stage, whatever ran before it."""
    if stage in PHASE_SEED_OFFSET:
        return seed + PHASE_SEED_OFFSET[stage]
    if stage.startswith("shot") and stage[4:].isdigit():
        return seed + 100 + int(stage[4:])
    raise ValueError(f"unknown fine-tuning stage {stage!r}")
SELECTION = ("last", "holdout", "dev")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneSettings:
    """What every fine-tuning phase of a run reads: the Trainer arguments, the run's seed (each
    phase derives its own, :func:`phase_seed`), the epoch-selection rule and the task's monitor.
    ``progress`` only changes what is printed."""

    trainer: dict
    seed: int
    selection: str = "last"
    selection_fraction: float | None = None
    monitor: str = "loss"
    monitor_mode: str = "min"
    progress: dict | None = None

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> FineTuneSettings:
        selection, fraction = cfg.selection, cfg.selection_fraction
        if selection not in SELECTION:
            raise ConfigError(f"selection={selection!r} is unknown; use one of {SELECTION}.")
        if selection == "holdout" and not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
            raise ConfigError(f"selection_fraction must be a number in (0, 1), got {fraction!r}.")
        check_trainer(cfg.trainer)
        progress = cfg.get("progress")
        return cls(
            trainer=OmegaConf.to_container(cfg.trainer, resolve=True), seed=int(cfg.seed), selection=selection,
            selection_fraction=float(fraction) if selection == "holdout" else None,
            monitor=cfg.data.monitor, monitor_mode=cfg.data.monitor_mode,
            progress=OmegaConf.to_container(progress, resolve=True) if progress is not None else None,
        )

    def spec(self) -> dict:
        """The settings that determine a fine-tune's result (cosmetic Trainer keys and progress left out)."""
        trainer = without_neutral(self.trainer, "trainer")
        if trainer.get("strategy") == "auto":  # Lightning's default, the same as no key
            del trainer["strategy"]
        return {"trainer": trainer, "seed": self.seed, "selection": self.selection,
                "selection_fraction": self.selection_fraction, "monitor": self.monitor,
                "monitor_mode": self.monitor_mode}


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Build the configured Trainer once, before any training, and refuse launchers that would
    run the job more than once.

    The pipeline's stages (cache lock, scoring, masks, results) run in one driver process that
    hands each fine-tune to Lightning. A strategy that re-launches the script per rank (``ddp``,
    and what ``strategy=auto`` picks for several devices) would run every stage in every rank,
    each waiting on the stage lock its peer holds; forked ranks (``ddp_fork``) cannot use a GPU
    the driver has used for scoring. Spawned ranks (``trainer=ddp``) are what works.
    """
    try:
        trainer = instantiate(trainer_cfg, logger=False, enable_checkpointing=False)
    except (InstantiationException, MisconfigurationException, ValueError, TypeError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
        raise ConfigError(f"the trainer config is not valid: {cause}") from None
    launcher = trainer.strategy.launcher
    start = getattr(launcher, "_start_method", None)  # None: the script is re-launched per rank
    if launcher is not None and start not in ("spawn", "forkserver"):
        how = (
            "forks its ranks, which fails once the driver has used a GPU" if start == "fork"
            else "re-launches the script in every rank, so each rank would run the whole job"
        )
        raise ConfigError(
            f"trainer.strategy={trainer_cfg.get('strategy')!r} on "
            f"{trainer.num_devices} devices {how}. Use trainer=ddp trainer.devices=N for several "
            "devices in one job (spawned ranks), or one job per device with hydra/launcher=parallel."
        )
    if trainer.world_size > 1 and trainer_cfg.get("use_distributed_sampler", True):
        raise ConfigError(
            "trainer.use_distributed_sampler must be false on several devices: the data module "
            "gives each rank its share of the length-grouped batches itself (conf/trainer/ddp.yaml "
            "sets it)."
        )


class EpochMetrics(pl.Callback):
    """Keeps every validation epoch's dev metrics (and, under ``selection=holdout``, the held-out
    slice's under ``"holdout"``), so the selected and the last epoch are both reported.

    The history goes to a JSON file (global rank 0, after every validation) as well as to memory:
    under ``ddp_spawn`` the callback runs in the spawned ranks and only files come back.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.history: list[dict[str, float]] = []
        path.unlink(missing_ok=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        def split(prefix: str) -> dict[str, float]:
            return {
                k.split("/", 1)[1]: float(v)
                for k, v in trainer.callback_metrics.items()
                if k.startswith(prefix)
            }

        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, **split("val/")}
        if holdout := split("holdout/"):
            entry["holdout"] = holdout
        self.history.append(entry)
        if trainer.is_global_zero:
            write_json(self.path, self.history)

    def read(self) -> list[dict[str, float]]:
        return json.loads(self.path.read_text()) if self.path.is_file() else self.history


def selection_value(entry: dict, selection: str, metric: str) -> float:
    """The number an epoch is selected on: the held-out slice's metric, or the dev metric."""
    source = entry.get("holdout", {}) if selection == "holdout" else entry
    return float(source.get(metric, math.nan))


def fine_tune(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    settings: FineTuneSettings,
    epochs: int,
    folder: Path,  # the run folder: logs/<stage>/ and checkpoints/<stage>/ go under it
    stage: str,
    loggers: list[Logger] | None = None,
    selection: str | None = None,
    callbacks: list[pl.Callback] = (),
    teacher: Teacher | None = None,
) -> dict:
    """Train ``epochs`` epochs (0: evaluate only) and keep one epoch by the ``selection`` rule
    (default ``settings.selection``): ``last`` keeps the last epoch (nothing selected); ``holdout``
    the best epoch on the held-out slice of train; ``dev`` the best dev epoch (the paper's
    practice, which selects on the set it reports). The model ends with the kept epoch's weights.

    Returns ``{"selected", "last", "history", "best_epoch", "selection"}``; ``best_epoch`` is
    None when nothing was selected (``last``, or a monitor that is NaN in every epoch).
    """
    selection = selection or settings.selection
    if selection not in SELECTION:
        raise ConfigError(f"selection={selection!r} is unknown; use one of {SELECTION}.")
    metric, mode = settings.monitor, settings.monitor_mode
    ckpt_dir = folder / "checkpoints" / stage
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tracker = EpochMetrics(ckpt_dir / "history.json")
    callbacks = [tracker, *callbacks]
    checkpoint = None
    if selection != "last" and epochs > 0:
        checkpoint = ModelCheckpoint(
            dirpath=ckpt_dir, monitor=f"{'holdout' if selection == 'holdout' else 'val'}/{metric}",
            mode=mode, save_top_k=1, save_weights_only=True, filename=f"{stage}-best",
        )
        callbacks.append(checkpoint)
    callbacks += progress_callbacks(settings.progress, STAGE_LABELS.get(stage, stage),
                                    settings.trainer.get("enable_progress_bar", True))
    logger = loggers if loggers is not None else [CSVLogger(save_dir=str(folder / "logs"), name=stage, version="")]
    trainer: pl.Trainer = instantiate(
        settings.trainer, max_epochs=epochs, callbacks=callbacks, logger=logger, default_root_dir=str(folder),
        enable_checkpointing=checkpoint is not None,
    )
    model.stage = stage
    # Each phase starts from its own seed, so a phase gives the same result whether the phases
    # before it ran in this process or came from the cache (or a killed job's completed stages).
    pl.seed_everything(phase_seed(settings.seed, stage), workers=True, verbose=False)
    detach_masked_views(model)  # picklable, for strategy=ddp_spawn
    start = time.perf_counter()
    if epochs > 0:
        # Lightning keeps each submodule's train/eval mode as it finds it, and transformers'
        # from_pretrained returns eval mode: without this, fine-tuning would run without dropout.
        model.train()
        with model.distilled_from(teacher):  # None: the task loss alone
            trainer.fit(model, datamodule=datamodule)
    else:
        trainer.validate(model, datamodule=datamodule, verbose=False)
    history = tracker.read()
    last = history[-1] if history else {}
    selected, best_epoch = last, None
    if checkpoint is not None:
        sign = 1 if mode == "max" else -1
        # NaN epochs never win, as in ModelCheckpoint, so the report matches the loaded weights
        finite = [h for h in history if math.isfinite(selection_value(h, selection, metric))]
        if finite and checkpoint.best_model_path:
            selected = max(finite, key=lambda h: sign * selection_value(h, selection, metric))
            best_epoch = selected["epoch"]
            state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
            model.load_state_dict(state)
        elif not finite:  # a collapsed model (constant predictions) has no correlation in any epoch
            log.warning(
                "%s: %s %s is NaN in every epoch: keeping the last epoch (best_epoch null).",
                stage, "holdout" if selection == "holdout" else "dev", metric,
            )
        else:  # fast_dev_run (debug=fdr) writes no checkpoint
            log.warning("%s: no checkpoint was written (fast_dev_run?): keeping the last epoch (best_epoch null).", stage)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # checkpoints/ only held this stage's files: no empty folder left
        ckpt_dir.parent.rmdir()
    return {"selected": selected, "last": last, "history": history, "best_epoch": best_epoch,
            "selection": selection, "seconds": time.perf_counter() - start}
