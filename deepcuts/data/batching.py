"""Batches that pay only for real tokens: length-grouped training batches and length-sorted
inference batches (no torch here: ``predict.py --runtime onnx`` sorts with it too).

Batches are padded to their longest example (``DataCollatorWithPadding``), so a batch of random
examples costs 2-3x the tokens it holds on GLUE. Two orders fix that:

- :func:`grouped_batches` (training, scoring): a seeded permutation per ``(seed, epoch)``, cut into
  mega-batches of ``mega_batches x batch_size`` examples, each sorted by length and cut into
  batches; the batch order is then shuffled again, with the batch holding the longest example
  first (memory peaks at the first step, not at some step hours in). Every example is in exactly
  one batch per epoch; only the last mega-batch's last batch can be short.
- :func:`sorted_batches` (evaluation, teacher tables, prediction): every example once, longest
  first, in no random order; :func:`in_file_order` puts the outputs back in file order.

:class:`GroupedBatchSampler` and :class:`SortedBatchSampler` are the ``batch_sampler`` objects a
``DataLoader`` takes. Both shard themselves over data-parallel ranks (``rank``, ``world``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

MEGA_BATCHES = 50  # batches per sorted mega-batch: the mean padded length is within ~5% of the real one on GLUE


def grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0,
                    mega_batches: int = MEGA_BATCHES) -> list[np.ndarray]:
    """This epoch's batches of example indices, grouped by length (see the module doc)."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(len(lengths))
    mega = max(1, int(mega_batches)) * int(batch_size)
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]  # longest first inside
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if not batches:
        return []
    shuffled = [batches[i] for i in rng.permutation(len(batches))]
    longest = max(range(len(shuffled)), key=lambda i: lengths[shuffled[i]].max())
    shuffled.insert(0, shuffled.pop(longest))
    return shuffled


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Every example once, in batches of similar length, the longest batch first."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def in_file_order(outputs: np.ndarray, batches: Sequence[np.ndarray]) -> np.ndarray:
    """Outputs computed batch by batch over ``batches`` (concatenated along the first axis),
    returned in the examples' own order."""
    order = np.concatenate(batches) if len(batches) else np.zeros(0, dtype=int)
    restored = np.empty_like(outputs)
    restored[order] = outputs
    return restored


def shard(batches: list[np.ndarray], rank: int, world: int, equal: bool) -> list[np.ndarray]:
    """Rank ``rank``'s share of ``batches``: every ``world``-th batch. ``equal`` (training: every
    rank must take the same number of steps) repeats the first batches to fill the last round,
    as ``DistributedSampler`` repeats examples; without it the shares partition the batches."""
    if world <= 1:
        return batches
    if equal and len(batches) % world:
        batches = batches + batches[: world - len(batches) % world]
    return batches[rank::world]


class GroupedBatchSampler:
    """``DataLoader(batch_sampler=...)`` for length-grouped batches, a new order each epoch.

    Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` at every epoch start, so the sampler
    is its own ``sampler``; it is seeded by ``(seed, epoch)`` alone, so a replayed fine-tune (late
    rewinding) sees the same batches in the same order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = MEGA_BATCHES,
                 rank: int = 0, world: int = 1) -> None:
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive number, got {batch_size}")
        self.lengths, self.batch_size, self.seed = np.asarray(lengths), int(batch_size), int(seed)
        self.mega_batches, self.rank, self.world = int(mega_batches), int(rank), int(world)
        self.epoch = 0
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[np.ndarray]:
        every = grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch, self.mega_batches)
        return shard(every, self.rank, self.world, equal=True)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches():
            yield batch.tolist()

    def __len__(self) -> int:
        n = -(-len(self.lengths) // self.batch_size) if len(self.lengths) else 0
        return -(-n // self.world)


class SortedBatchSampler:
    """``DataLoader(batch_sampler=...)`` for inference: rank ``rank`` takes every ``world``-th
    example (as ``UnrepeatedDistributedSampler`` does: each example on exactly one rank) and
    runs its share longest first."""

    def __init__(self, lengths: Sequence[int], batch_size: int, rank: int = 0, world: int = 1) -> None:
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive number, got {batch_size}")
        self.indices = np.arange(len(lengths))[int(rank)::int(world)]
        self.order = sorted_batches(np.asarray(lengths)[self.indices], int(batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.order:
            yield self.indices[batch].tolist()

    def __len__(self) -> int:
        return len(self.order)
