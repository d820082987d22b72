"""Progress where the user looks: Lightning's rich bar on a terminal, log lines in a file.

Sent to a file (nohup, CI, SLURM), a progress bar is written once, finished. There a job logs
lines instead (logger ``deepcuts.runtime.progress``), one at least every ``progress.every_s`` seconds and,
when set, every ``progress.every_n_steps`` steps, plus one at the end of each epoch and stage::

    dense fine-tune | epoch 1/3 | step 40/96 | 2.1 it/s | ETA 0:00:27 | train/loss 1.255
    scoring gradcam_shift | step 12/32 | 10.7 it/s | ETA 0:00:02

Settings (``progress`` in ``conf/train.yaml``): ``mode`` auto (lines when stdout is not a
terminal, else the bar) | bar | log; ``every_s``; ``every_n_steps`` (null: time only).
``trainer.enable_progress_bar=false`` turns both the bar and the lines off.
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks.progress import ProgressBar, RichProgressBar
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE

from deepcuts.config.errors import ConfigError

log = logging.getLogger(__name__)
MODES = ("auto", "bar", "log")
DEFAULTS = {"mode": "auto", "every_s": 30.0, "every_n_steps": None}
STAGE_LABELS = {"dense": "dense fine-tune", "pruned": "masked fine-tune"}


def progress_settings(settings: Mapping | None) -> dict:
    """The ``progress`` config with defaults filled in, checked."""
    s = {**DEFAULTS, **(dict(settings) if settings else {})}
    if s["mode"] not in MODES:
        raise ConfigError(f"progress.mode={s['mode']!r} is unknown; use one of {MODES}.")
    for key in ("every_s", "every_n_steps"):
        v = s[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"progress.{key} must be a positive number or null, got {v!r}.")
    return s


def stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def progress_callbacks(settings: Mapping | None, label: str, enable_progress_bar: bool = True,
                       announce: bool = True, label_bar: bool = False) -> list[pl.Callback]:
    """``[LogProgress]`` when progress goes to log lines, else ``[]``: Lightning then adds its own
    bar (none under ``enable_progress_bar=false``), or, with ``label_bar``, a rich bar that shows
    ``label`` instead of "Epoch 0/0" (the one-epoch scoring pass)."""
    s = progress_settings(settings)
    if not enable_progress_bar:
        return []
    if s["mode"] == "bar" or (s["mode"] == "auto" and stdout_is_terminal()):
        bar = labelled_rich_bar(label) if label_bar else None
        return [bar] if bar is not None else []
    return [LogProgress(label, every_s=s["every_s"], every_n_steps=s["every_n_steps"], announce=announce)]


class LabelledRichBar(RichProgressBar):
    """Lightning's rich bar, described by ``label`` instead of "Epoch 0/0"."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def _get_train_description(self, current_epoch: int) -> str:  # RichProgressBar's own hook
        return self.label


def labelled_rich_bar(label: str) -> pl.Callback | None:
    """A :class:`LabelledRichBar`; None without rich (Lightning's own bar is used then)."""
    return LabelledRichBar(label) if _RICH_AVAILABLE else None


def duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


def number(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


def fitting(trainer: pl.Trainer) -> bool:
    return trainer.state.fn == TrainerFn.FITTING


class LogProgress(ProgressBar):
    """Lightning progress as log lines (global rank 0 only); it takes the place of the bar.

    ``label`` names the stage (``dense fine-tune``, ``scoring gradcam_shift``); a stage of one
    epoch (the scoring pass) shows no epoch counter. The rate is the stage's average so far,
    validation included, so the ETA covers the validation passes still to come.
    """

    def __init__(self, label: str, every_s: float | None = 30.0, every_n_steps: int | None = None,
                 announce: bool = True) -> None:
        super().__init__()
        self.label, self.every_s, self.every_n_steps, self.announce = label, every_s, every_n_steps, announce
        self._enabled = True
        self._start = self._last_t = 0.0
        self._done = self._last_step = self._val_done = 0
        self._total: float = 0

    # ProgressBar's interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._emit(" ".join(str(a) for a in args))

    def _emit(self, line: str) -> None:
        if not self._enabled:
            return
        if log.hasHandlers():
            log.info("%s", line)
        else:  # a spawned rank (trainer=ddp) has no logging configured
            print(line, flush=True)

    def _due(self, now: float, step: int) -> bool:
        return bool(
            (self.every_n_steps and step - self._last_step >= self.every_n_steps)
            or (self.every_s and now - self._last_t >= self.every_s)
        )

    def _epochs(self, trainer: pl.Trainer) -> str:
        return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}" if (trainer.max_epochs or 0) > 1 else ""

    def _line(self, *parts: str) -> str:
        return " | ".join([self.label, *(p for p in parts if p)])

    def _rate_eta(self, now: float) -> tuple[str, str]:
        elapsed = now - self._start
        rate = self._done / elapsed if elapsed > 0 else math.nan
        left = (self._total - self._done) / rate if rate and rate > 0 else math.nan
        return (f"{rate:.3g} it/s" if math.isfinite(rate) else "? it/s"), f"ETA {duration(left)}"

    def _metrics(self, trainer: pl.Trainer, which: str) -> str:
        items = trainer.progress_bar_metrics
        keys = [k for k in items if "loss" in k and not k.startswith("val")] if which == "loss" else list(items)
        return ", ".join(f"{k} {number(items[k])}" for k in keys)

    # training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_epoch = self.total_train_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        self._total = per_epoch * epochs
        if trainer.max_steps and trainer.max_steps > 0:
            self._total = min(self._total, trainer.max_steps * trainer.accumulate_grad_batches)
        self._done = self._last_step = 0
        self._start = self._last_t = time.perf_counter()
        if self.announce:
            size = f"{epochs} epoch{'s' if epochs != 1 else ''} x {per_epoch} steps" if epochs > 1 else f"{per_epoch} steps"
            self._emit(f"{self.label}: {size}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._done += 1
        now = time.perf_counter()
        if batch_idx + 1 >= self.total_train_batches or not self._due(now, self._done):
            return  # an epoch's last batch: the epoch's (or the stage's) end line follows
        self._last_t, self._last_step = now, self._done
        rate, eta = self._rate_eta(now)
        total = self._total if math.isfinite(self._total) else "?"
        self._emit(self._line(self._epochs(trainer), f"step {self._done}/{total}", rate, eta,
                              self._metrics(trainer, "loss")))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = trainer.max_epochs or 1
        if epochs <= 1:
            return  # on_train_end says it
        now = time.perf_counter()
        self._last_t, self._last_step = now, self._done
        rate, eta = self._rate_eta(now)
        self._emit(self._line(f"{self._epochs(trainer)} done", f"step {self._done}/{self._total}", rate, eta,
                              self._metrics(trainer, "all")))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        rate, _ = self._rate_eta(now)
        metrics = self._metrics(trainer, "all") if (trainer.max_epochs or 1) <= 1 else ""
        self._emit(self._line(f"done: {self._done} steps in {duration(now - self._start)}", rate, metrics))

    # validation: a line only when a long pass is due one, and a summary for evaluate-only stages
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_done = 0
        if not fitting(trainer):
            self._start = self._last_t = time.perf_counter()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        self._val_done += 1
        now = time.perf_counter()
        if self.every_s and now - self._last_t >= self.every_s:
            self._last_t = now
            self._emit(self._line(self._epochs(trainer), f"validation {self._val_done}/{self.total_val_batches}"))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or fitting(trainer):
            return
        now = time.perf_counter()
        self._emit(self._line(f"evaluated: {self._val_done} batches in {duration(now - self._start)}",
                              self._metrics(trainer, "all")))
