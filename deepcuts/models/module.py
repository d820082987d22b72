"""Encoder + task head as a LightningModule, with torchmetrics for every GLUE metric.

The encoder comes from the model YAML (:mod:`deepcuts.models.encoders`) and is registered under its
``backbone`` name, so parameter names follow transformers (``bert.encoder.layer.0...``).
Classification: ``pooled -> Linear(hidden, num_labels)``, cross-entropy.
Regression (STS-B): ``min + (max - min) * sigmoid(Linear(hidden, 1))`` -- the paper's ``5 sigmoid``
for the range [0, 5] -- with mean squared error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from transformers import PreTrainedModel

from deepcuts.config.errors import ConfigError
from deepcuts.models.encoders import (
    ENCODER_INPUTS,
    LAYOUT_KEYS,
    MODULE_ATTRIBUTES,
    POOLINGS,
    REQUIRED_INPUTS,
    ModelSpec,
    check_backbone,
    encoder_inputs,
    load_encoder,
)
from deepcuts.models.encoders import (
    load_tokenizer as load_tokenizer,  # re-exported: build_model's partner
)
from deepcuts.training.optim import build_optimizer


def build_model(cfg, tokenizer) -> GlueModel:
    """The run's model from its config. Seeded, so the same seed always gives the same initial
    head (the rewind target)."""
    from hydra.utils import instantiate

    spec = ModelSpec.from_cfg(cfg.model)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    encoder = load_encoder(spec, tokenizer)
    inputs = encoder_inputs(encoder, spec.inputs or (*tokenizer.model_input_names, *REQUIRED_INPUTS))
    return GlueModel(
        encoder, cfg.data.task, instantiate(cfg.data.metrics), instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        backbone=spec.backbone, pooling=spec.pooling, inputs=inputs, layout=spec.layout,
    )


# -- the LightningModule ---------------------------------------------------------------------

BERT_LAYOUT = {
    "layers": "bert.encoder.layer", "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
}


def pool(output, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence: ``pooler_output``; the first token's last hidden state; or the
    mean of the last hidden states over the real tokens (``attention_mask`` weighted)."""
    if pooling == "pooler":
        return output.pooler_output
    hidden = output.last_hidden_state
    if pooling == "first":
        return hidden[:, 0]
    weight = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)


def task_output(logits: torch.Tensor, task: dict) -> torch.Tensor:
    """The head's output for the task: class logits, or ``min + (max - min) sigmoid(x)``."""
    if task["type"] != "regression":
        return logits
    low, high = float(task["min"]), float(task["max"])
    return low + (high - low) * torch.sigmoid(logits.squeeze(-1))


def check_layout(model: nn.Module, layout: dict) -> None:
    """Every layout name of layer 0 must be an ``nn.Linear`` of the model."""
    first = f"{layout['layers']}.0"
    try:
        layer = model.get_submodule(first)
    except AttributeError:
        raise ConfigError(f"layout.layers={layout['layers']!r}: the model has no module {first!r}.") from None
    linears = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    bad = [f"{k}={layout[k]!r}" for k in LAYOUT_KEYS[1:] if layout[k] not in linears]
    if bad:
        raise ConfigError(
            f"layout {', '.join(bad)} name no nn.Linear of {first}; its Linears are {linears}."
        )


class GlueModel(pl.LightningModule):
    """Encoder + task head; ``loss(batch)`` is the training objective scoring passes also use.

    The encoder is registered under ``backbone`` (``model.bert``, ``model.roberta``, ...) and
    reached architecture-independently as ``model.encoder``."""

    # attributes set on instances (class attributes and methods are refused through hasattr)
    RESERVED = MODULE_ATTRIBUTES

    def __init__(
        self,
        encoder: PreTrainedModel,
        task: dict,
        metrics: dict[str, Metric],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        *,
        backbone: str = "bert",
        pooling: str = "pooler",
        inputs: tuple[str, ...] | None = None,
        layout: dict | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r} is unknown; use one of {POOLINGS}.")
        check_backbone(backbone, GlueModel)
        self.backbone, self.pooling = backbone, pooling
        setattr(self, backbone, encoder)
        self.inputs = tuple(inputs) if inputs else encoder_inputs(encoder, ENCODER_INPUTS)
        self.layout = dict(layout) if layout else dict(BERT_LAYOUT)
        check_layout(self, self.layout)
        self.task = dict(task)
        self.regression = self.task["type"] == "regression"
        out = 1 if self.regression else int(self.task["num_labels"])
        self.head = nn.Linear(encoder.config.hidden_size, out)
        self.val_metrics = MetricCollection(dict(metrics), prefix="val/")  # the dev set (reported)
        self.holdout_metrics = self.val_metrics.clone(prefix="holdout/")  # selection=holdout only
        self.extra_metrics = nn.ModuleDict()  # extra dev sets (data.extra_eval_files): set_eval_sets
        self.eval_sets = ["val", "holdout"]  # what each validation loader is, in order
        self._seen: set[str] = set()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.teacher = None  # set only inside distilled_from(...): see there

    @contextlib.contextmanager
    def distilled_from(self, teacher) -> Iterator[None]:
        """Train on ``teacher.loss`` (a :class:`deepcuts.training.distill.Teacher`) inside the
        block, the task loss alone outside it: the fine-tune that is given a teacher passes it
        here, so no other fine-tune can inherit it."""
        self.teacher = teacher
        try:
            yield
        finally:
            self.teacher = None

    @property
    def encoder(self) -> PreTrainedModel:
        """The transformer backbone (registered under its architecture's attribute name)."""
        return getattr(self, self.backbone)

    @property
    def arch(self) -> str:
        """The encoder's transformers ``model_type``."""
        return self.encoder.config.model_type

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Only ``self.inputs`` reach the encoder (e.g. no ``token_type_ids`` for DistilBERT)."""
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        output = self.encoder(**{k: given[k] for k in self.inputs if given[k] is not None})
        return task_output(self.head(pool(output, attention_mask, self.pooling)), self.task)

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
        if self.teacher is None:
            loss = self.loss(batch)
        else:  # knowledge distillation from cached teacher outputs (deepcuts.training.distill)
            loss = self.teacher.loss(self._forward_batch(batch), batch, self.loss_from_output, self.regression)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.global_step} (stage: "
                f"{getattr(self, 'stage', 'training')}); lower the learning rate."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def set_eval_sets(self, names: list[str]) -> None:
        """The validation loaders' order (``GlueDataModule.eval_sets``): ``val``, ``holdout``, and
        ``val/<name>`` per extra dev set, whose metrics are logged as ``val/<name>/<metric>``."""
        self.eval_sets = list(names)
        for name in names:
            if name.startswith("val/") and name[4:] not in self.extra_metrics:
                self.extra_metrics[name[4:]] = self.val_metrics.clone(prefix=f"{name}/")

    def _metrics_of(self, name: str) -> MetricCollection:
        return {"val": self.val_metrics, "holdout": self.holdout_metrics}.get(name) or self.extra_metrics[name[4:]]

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loader ``i`` is ``eval_sets[i]``: the dev set, the held-out selection slice, extra dev sets."""
        out = self._forward_batch(batch)
        name = self.eval_sets[dataloader_idx] if dataloader_idx else "val"
        self._seen.add(name)
        self.log(f"{name}/loss", self.loss_from_output(out, batch["labels"]), batch_size=len(out),
                 sync_dist=True, add_dataloader_idx=False)
        self._metrics_of(name).update(self.predictions(out), batch["labels"])

    def on_validation_epoch_start(self) -> None:
        # Fresh states made in this loop's own grad mode: Trainer.validate runs under
        # inference_mode and fit's validation under no_grad, which cannot update the former's.
        for metrics in (self.val_metrics, self.holdout_metrics, *self.extra_metrics.values()):
            metrics.reset()
        self._seen = set()

    def on_validation_epoch_end(self) -> None:
        # under DDP, compute() gathers every rank's state, so all ranks log the same global value
        for name in ("val", *(n for n in self.eval_sets if n != "val" and n in self._seen)):
            self.log_dict({k: v.float() for k, v in self._metrics_of(name).compute().items()}, prog_bar=name in ("val", "holdout"),
                          sync_dist=True, add_dataloader_idx=False)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_factory, [p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        steps = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer=optimizer, num_training_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

