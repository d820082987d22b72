"""GLUE-format TSV files -> ``datasets`` -> tokenised, cached on disk, padded per batch.

Everything task-specific (files, columns, header, label kind, metrics) comes from the task's YAML
in ``conf/data``; this module knows nothing of the model beyond the tokenizer it is handed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from deepcuts.config.errors import ConfigError
from deepcuts.data.batching import MEGA_BATCHES, GroupedBatchSampler, SortedBatchSampler
from deepcuts.data.tsv import (
    DEFAULT_GLUE_DIR,
    check_columns,
    holdout_indices,
    label_map,
    parse_labels,
    read_tsv,
    resolve_root,
)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")
EXAMPLE_INDEX = "example_index"  # train rows only: the row number in the (capped) train file


class GlueDataModule(pl.LightningDataModule):
    """Train and dev splits of one GLUE-format task, tokenised once and cached on disk."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        folder: str,
        text_columns: list[str],
        label_column: str,
        task: dict,
        root: str | None = None,
        train_file: str = "train.tsv",
        eval_file: str = "dev.tsv",
        extra_eval_files: dict[str, str] | None = None,
        header: bool = True,
        columns: list[str] | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        subset_seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        holdout_fraction: float | None = None,
        group_by_length: bool = True,
        **_: Any,  # metrics/monitor belong to the model; the same YAML feeds both
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.name, self.task = name, dict(task)
        self.text_columns, self.label_column = list(text_columns), label_column
        self.folder = resolve_root(root) / folder
        self.extra_eval = dict(extra_eval_files or {})  # name -> file: more dev sets, logged as val/<name>/<metric>
        for name in self.extra_eval:
            if not str(name).isidentifier():
                raise ConfigError(f"data.extra_eval_files: the name {name!r} must be a plain word (letters, digits, _).")
        self.files = {"train": train_file, "eval": eval_file, **{f"eval-{n}": f for n, f in self.extra_eval.items()}}
        self.header, self.columns = header, columns
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.limits = {"train": max_train_samples, "eval": max_eval_samples,
                       **{f"eval-{n}": max_eval_samples for n in self.extra_eval}}
        self.subset_seed, self.num_workers, self.seed = subset_seed, num_workers, seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.holdout_fraction = holdout_fraction
        self.group_by_length = bool(group_by_length)
        self._lengths: dict[str, tuple[int, list[int]]] = {}
        self.collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        self.splits: dict[str, datasets.Dataset] = {}
        if len(self.text_columns) not in (1, 2):
            raise ConfigError("text_columns must name one column (single sentence) or two (a pair).")
        if self.task.get("type") not in ("classification", "regression"):
            raise ConfigError("data.task.type must be 'classification' or 'regression'.")
        label_map(self.task)  # a malformed data.task.labels fails here, before any file is read
        for split, limit in self.limits.items():
            if limit is not None and int(limit) <= 0:
                raise ConfigError(f"max_{split}_samples must be a positive number or null, got {limit}.")

    # -- building -------------------------------------------------------------------------
    def _cache_key(self, split: str, path: Path) -> str:
        stat = path.stat()
        spec = {
            "file": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "tokenizer": getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__),
            "vocab": len(self.tokenizer),
            "max_length": self.max_length,
            "header": self.header,
            "columns": self.columns,
            "text": self.text_columns,
            "label": self.label_column,
            "task": self.task,
            "limit": self.limits[split],
            "subset_seed": self.subset_seed if split == "train" else None,
            "format": 2,  # 2: train rows carry their index
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]

    def _build(self, split: str) -> datasets.Dataset:
        path = self.folder / self.files[split]
        if not self.folder.is_dir():
            raise ConfigError(
                f"data folder {self.folder} does not exist. Data is looked for in data.root, else "
                f"$GLUE_DIR, else {DEFAULT_GLUE_DIR}. Point to your GLUE folder with "
                "data.root=/path/to/glue or GLUE_DIR=/path/to/glue."
            )
        cached = self.cache_dir / f"{self.name}-{split}-{self._cache_key(split, path)}" if self.cache_dir else None
        if cached is not None and (cached / "dataset_info.json").is_file():
            return datasets.load_from_disk(str(cached))

        raw = read_tsv(path, self.header, self.columns)
        check_columns(raw, path, [*self.text_columns, self.label_column])
        labels = parse_labels(raw[self.label_column], self.task, path, self.label_column)
        raw = raw.select_columns(self.text_columns).add_column("labels", labels)
        limit = self.limits[split]
        if limit is not None and limit < len(raw):
            raw = raw.shuffle(seed=self.subset_seed) if split == "train" else raw
            raw = raw.select(range(int(limit)))

        def tokenize(batch: dict) -> dict:
            texts = [[str(t) for t in batch[c]] for c in self.text_columns]
            return self.tokenizer(*texts, truncation=True, max_length=self.max_length)

        tokenised = raw.map(tokenize, batched=True, remove_columns=self.text_columns)
        keep = [c for c in MODEL_INPUTS if c in tokenised.column_names]
        tokenised = tokenised.select_columns(keep)
        if split == "train":  # each example's row: what its cached teacher output is found by (distill)
            tokenised = tokenised.add_column(EXAMPLE_INDEX, list(range(len(tokenised))))
        if cached is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=".tmp-"))
            tokenised.save_to_disk(str(tmp))
            try:
                tmp.rename(cached)  # atomic: a reader sees the whole folder or none
            except OSError:  # another job won the race; its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
            tokenised = datasets.load_from_disk(str(cached))
        return tokenised

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "eval", *(f"eval-{n}" for n in self.extra_eval)):
            if split not in self.splits:
                self.splits[split] = self._build(split)
        if self.holdout_fraction and "holdout" not in self.splits:
            train, holdout = holdout_indices(self.splits["train"]["labels"], self.task, self.holdout_fraction, self.seed)
            self.splits["holdout"] = self.splits["train"].select(holdout)
            self.splits["train"] = self.splits["train"].select(train)

    # -- loaders --------------------------------------------------------------------------
    def lengths(self, split: str) -> list[int]:
        """Each example's token count in ``split`` (what its batches are grouped or sorted by)."""
        data = self.splits[split]
        cached = self._lengths.get(split)
        if cached is None or cached[0] != id(data):
            cached = (id(data), [len(ids) for ids in data["input_ids"]])
            self._lengths[split] = cached
        return cached[1]

    @staticmethod
    def _ranks() -> tuple[int, int]:
        """(rank, world) of a data-parallel fit; (0, 1) in one process."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _train_order(self, split: str, batch_size: int, seed: int, fixed: bool = False) -> DataLoader:
        """Seeded batches of ``split`` for training and scoring: length-grouped (a new order each
        epoch) or, with ``group_by_length=false``, the random batches of a shuffling loader.
        ``fixed``: the same batches every epoch (``trainer.overfit_batches``)."""
        rank, world = self._ranks()
        if self.group_by_length:
            sampler = GroupedBatchSampler(self.lengths(split), batch_size, seed, MEGA_BATCHES, rank, world)
            if fixed:
                sampler.set_epoch = lambda epoch: None
            return DataLoader(self.splits[split], batch_sampler=sampler, collate_fn=self.collate,
                              num_workers=self.num_workers)
        if world > 1:  # each rank its share, reshuffled per epoch (Lightning calls set_epoch)
            sampler = DistributedSampler(self.splits[split], world, rank, shuffle=not fixed, seed=seed)
            return DataLoader(self.splits[split], batch_size=batch_size, sampler=sampler,
                              collate_fn=self.collate, num_workers=self.num_workers)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(self.splits[split], batch_size=batch_size, shuffle=not fixed, generator=generator,
                          collate_fn=self.collate, num_workers=self.num_workers)

    def _inference_order(self, split: str) -> DataLoader:
        """Every example of ``split`` once (on one rank of a data-parallel fit), in batches of
        ``eval_batch_size``: sorted by length, longest first, or in file order with
        ``group_by_length=false``. Outputs that must be in file order are put back by the caller
        (train rows carry their ``example_index``); metrics do not depend on the order."""
        rank, world = self._ranks()
        lengths = self.lengths(split) if self.group_by_length else [0] * len(self.splits[split])
        sampler = SortedBatchSampler(lengths, self.eval_batch_size, rank, world)  # equal lengths: file order
        return DataLoader(self.splits[split], batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        fixed = bool(self.trainer is not None and self.trainer.overfit_batches)
        return self._train_order("train", self.batch_size, self.seed, fixed)

    def eval_sets(self) -> list[str]:
        """What each validation loader is, in order: ``val`` (the dev set), ``holdout`` (the
        selection slice, when there is one), then ``val/<name>`` per extra dev set."""
        return ["val", *(["holdout"] if "holdout" in self.splits else []), *(f"val/{n}" for n in self.extra_eval)]

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The dev set, then the held-out selection slice of train when there is one, then the
        extra dev sets (``data.extra_eval_files``). Each example is on exactly one rank of a
        data-parallel fit: metrics are the same as on one device."""
        splits = [s for s in ("eval", "holdout", *(f"eval-{n}" for n in self.extra_eval)) if s in self.splits]
        loaders = [self._inference_order(split) for split in splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def train_eval_dataloader(self) -> DataLoader:
        """Every train example once, evaluation batch size (teacher outputs for distillation,
        put in file order by their ``example_index``)."""
        return self._inference_order("train")

    def scoring_dataloader(self, seed: int) -> DataLoader:
        """Train batches in a seeded order of their own, drawn as training draws them, for
        scoring passes."""
        return self._train_order("train", self.batch_size, seed + 10_007)
