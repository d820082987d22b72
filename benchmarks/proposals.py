"""Proposed library changes, applied by monkeypatching inside a benchmark process only.

Nothing here is imported by ``deepcuts``; each function is a drop-in replacement for the library
function named in its docstring, with the same results, and :func:`patched` installs a set of them
for the duration of a ``with`` block. The benchmarks use it to measure "current" and "proposed"
side by side in one run (``--proposed``), so the README can state the measured effect of each
recommendation. The lead engineer applies the accepted ones to ``deepcuts/`` by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

# -- S4: deepcuts/masks.py ------------------------------------------------------------------------


def check_finite(name: str, score: torch.Tensor) -> None:
    """Replaces ``deepcuts.masks._check_finite``. ``torch.isfinite(x).all()`` is a composite on
    CPU (``abs``, ``ne``, ``eq``, ``mul`` and ``all``: five full passes, ~0.5 s per 85.6M values);
    ``torch.aminmax`` is one vectorised pass and propagates NaN (min and max are NaN) and +/-inf,
    so the fast test is exact. The slow count runs only to word the error."""
    if score.numel() and score.is_floating_point():
        lo, hi = torch.aminmax(score)
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            return
    if not torch.isfinite(score).all():
        bad = int((~torch.isfinite(score)).sum())
        raise FloatingPointError(
            f"scoring produced {bad} NaN/inf values in the score of {name!r}; the masks cannot be "
            "built. Check the dense model's loss (a diverged fine-tune) or the strategy's settings."
        )


def kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of a 1-D tensor (``torch.kthvalue(flat, n - k + 1).values``).
    On CPU, numpy's introselect (``np.partition``) is 2-5x faster than ``torch.kthvalue``."""
    n = flat.numel()
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        value = np.partition(flat.detach().numpy(), n - k)[n - k]
        return torch.tensor(value, dtype=flat.dtype)
    return torch.kthvalue(flat, n - k + 1).values


def topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Replaces ``deepcuts.masks.topk_mask`` (same mask, ties kept in index order).

    The current code keeps ``> threshold`` and then always scans for ties with
    ``nonzero(flat == threshold)``: with distinct values exactly one entry (the threshold itself)
    is missing, so every tensor pays an extra ``eq`` + ``nonzero`` pass, plus ``keep.sum()`` on a
    bool tensor (an int64 conversion, ~15x slower than ``count_nonzero``). Keeping ``>= threshold``
    gives exactly ``k`` entries unless there are ties, and only then are the surplus ties with the
    highest indices dropped -- the same set as adding the lowest-index ties to ``> threshold``."""
    flat = score.reshape(-1)
    n = flat.numel()
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} entries")
    if k == n:
        return torch.ones_like(score, dtype=torch.bool)
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    threshold = kth_largest(flat, k)
    keep = flat >= threshold
    extra = int(torch.count_nonzero(keep)) - k
    if extra:
        ties = torch.nonzero(flat == threshold).squeeze(1)
        keep[ties[ties.numel() - extra:]] = False
    return keep.view_as(score)


def _numpy_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad


def check_finite_np(name: str, score: torch.Tensor) -> None:
    """``check_finite`` with numpy on CPU tensors (single-threaded: no OpenMP fork/join)."""
    if _numpy_ok(score) and np.isfinite(score.numpy()).all():
        return
    check_finite(name, score)


def topk_mask_np(score: torch.Tensor, k: int) -> torch.Tensor:
    """``topk_mask`` with numpy doing every full pass on CPU tensors (the same mask).

    numpy's element-wise ops and ``partition`` run on one thread, so 146 tensors cost 146 x a few
    memory-bound passes and nothing else; torch's CPU kernels fork/join OpenMP threads for each op,
    which on a 2-core machine shared with other jobs costs milliseconds per op (measured: the same
    ``>=`` on 2.4M floats takes 1.0 ms on one thread, 2.5-7.8 ms on two)."""
    if not _numpy_ok(score):
        return topk_mask(score, k)
    arr = score.reshape(-1).numpy()
    n = arr.size
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} entries")
    if k == n:
        return torch.ones_like(score, dtype=torch.bool)
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    threshold = np.partition(arr, n - k)[n - k]
    keep = arr >= threshold
    extra = int(np.count_nonzero(keep)) - k
    if extra:
        ties = np.flatnonzero(arr == threshold)
        keep[ties[ties.size - extra:]] = False
    return torch.from_numpy(keep).view(score.shape)


def global_masks_np(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Replaces ``deepcuts.masks.global_masks`` (the same masks). The concatenation is already a
    private copy, so it is partitioned in place (no second 342 MB copy inside ``np.partition``) and
    each tensor's mask is compared against the threshold directly; surplus ties are dropped from
    the highest global positions, i.e. the last tensors first."""
    from deepcuts import masks as M

    if not all(_numpy_ok(s) for s in scores.values()):
        return _original_global_masks(scores, fraction)
    for name, score in scores.items():
        M._check_finite(name, score)
    flat = np.concatenate([s.reshape(-1).float().numpy() for s in scores.values()])
    n = flat.size
    k = M.keep_count(fraction, n)
    if k in (0, n):
        return {name: torch.full_like(s, k == n, dtype=torch.bool) for name, s in scores.items()}
    flat.partition(n - k)
    threshold = flat[n - k]
    del flat
    masks = {name: s.float().numpy() >= threshold for name, s in scores.items()}
    extra = sum(int(np.count_nonzero(m)) for m in masks.values()) - k
    for name in reversed(list(masks)):
        if extra <= 0:
            break
        ties = np.flatnonzero((scores[name].float().numpy() == threshold).reshape(-1))
        drop = ties[max(0, ties.size - extra):]
        masks[name].reshape(-1)[drop] = False
        extra -= drop.size
    return {name: torch.from_numpy(m) for name, m in masks.items()}


def _original_global_masks(scores, fraction):
    from deepcuts import masks as M

    return PATCHED_ORIGINALS.get(("deepcuts.masks", "global_masks"), M.global_masks)(scores, fraction)


# -- S1/S2: deepcuts/strategies/gradcam.py ----------------------------------------------------------


def activation_means_make_hook(self, module_name: str):
    """Replaces ``ActivationMeans.make_hook``. ``(out * weight).sum((0, 1)) / weight.sum()``
    materialises a [B, T, H] product and reduces over the two leading dims (a strided reduction);
    the same mask-weighted mean is one matrix-vector product ``w[1, B*T] @ out[B*T, H]``."""

    def hook(module, inputs, output):
        if not self.enabled:
            return
        with torch.no_grad():
            out = output.detach()
            flat = out.reshape(-1, out.shape[-1])
            if out.dim() == 3 and not self.include_padding:
                weight = self.token_mask.reshape(1, -1).to(out.dtype)
                mean = (weight @ flat).squeeze(0) / weight.sum()
            else:
                mean = flat.mean(0)
            self.means[module_name] = mean

    return hook


# -- S1/S2: deepcuts/strategies/base.py --------------------------------------------------------------


def single_threaded(fn):
    """Wrap a callback so its element-wise tensor work runs on one intra-op thread.

    ``Strategy.on_train_batch_end`` issues 4 small element-wise ops per prunable tensor (296 ops
    per batch for MiniLM, 584 for BERT-base), each a separate OpenMP fork/join on CPU. On a
    machine whose cores are shared, every fork/join waits for a descheduled worker: measured here
    as 250-1200 ms per batch with 2 threads against 8 ms with 1 thread for the same arithmetic
    (MiniLM, 10.8M prunable values). The ops are memory-bound, so one thread loses little even
    on an idle machine. No effect on CUDA tensors."""

    def wrapped(self, *args, **kwargs):
        if not _on_cpu(args):
            return fn(self, *args, **kwargs)
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(self, *args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(self, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    wrapped.__wrapped__ = fn
    return wrapped


def _on_cpu(args) -> bool:
    pl_module = args[1] if len(args) > 1 else None
    prunable = getattr(pl_module, "prunable", None)
    if not prunable:
        return True
    return next(iter(prunable.values())).device.type == "cpu"


def _batch_end():
    from deepcuts.strategies.base import Strategy

    return single_threaded(Strategy.on_train_batch_end)


# -- S2: deepcuts/strategies/smoothgrad.py -------------------------------------------------------------


def output_noise_make_hook(self, module_name: str):
    """Replaces ``OutputNoise.make_hook``: ``torch.add(output, noise, alpha=sigma)`` is one op
    where ``output + self.sigma * noise`` is two (a [B, T, H] temporary and an add)."""

    def hook(module, inputs, output):
        if not self.enabled or self.sigma == 0:
            return None
        noise = torch.randn(
            output.shape, generator=self._generator(output.device), device=output.device, dtype=output.dtype
        )
        return torch.add(output, noise, alpha=self.sigma)

    return hook


def output_noise_real_tokens_make_hook(self, module_name: str):
    """Replaces ``OutputNoise.make_hook`` (a *statistically* equivalent change, not a bit-equal one).

    Noise is drawn only for the real tokens of a [B, T, H] output: a padded position's hidden
    state never reaches the loss in BERT (it is masked out as an attention key, and the pooler
    reads position 0), so its noise is wasted work -- and CPU ``randn`` is sequential (one
    mt19937 stream), ~10% of a MiniLM pass. SST-2 batches of 32 are ~66% padding. The scores
    change only because the random stream is used differently (same distribution at every
    position that matters), so a score-cache version bump would go with it."""

    def hook(module, inputs, output):
        if not self.enabled or self.sigma == 0:
            return None
        gen = self._generator(output.device)
        index = getattr(self, "index", None)
        if output.dim() == 3 and index is not None and tuple(output.shape[:2]) == self.index_shape:
            noise = torch.normal(0.0, self.sigma, (index[0].numel(), output.shape[-1]), generator=gen,
                                 device=output.device, dtype=output.dtype)
            return output.index_put(index, noise, accumulate=True)
        noise = torch.normal(0.0, self.sigma, tuple(output.shape), generator=gen, device=output.device,
                             dtype=output.dtype)
        return output + noise

    return hook


def _batch_start():
    from deepcuts.strategies.base import Strategy

    original = Strategy.on_train_batch_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        noise = getattr(self, "noise", None)
        if noise is not None:
            mask = batch["attention_mask"]
            noise.index = mask.bool().nonzero(as_tuple=True)
            noise.index_shape = tuple(mask.shape)
        return original(self, trainer, pl_module, batch, batch_idx)

    return on_train_batch_start


# -- installing ---------------------------------------------------------------------------------
PATCHES = {
    "masks": [("deepcuts.masks", "_check_finite", check_finite),
              ("deepcuts.masks", "topk_mask", topk_mask)],
    "masks_numpy": [("deepcuts.masks", "_check_finite", check_finite_np),
                    ("deepcuts.masks", "topk_mask", topk_mask_np),
                    ("deepcuts.masks", "global_masks", global_masks_np)],
    "cam_hook": [("deepcuts.strategies.gradcam", "ActivationMeans.make_hook", activation_means_make_hook)],
    "callback_1thread": [("deepcuts.strategies.base", "Strategy.on_train_batch_end", _batch_end)],
    "noise_add": [("deepcuts.strategies.smoothgrad", "OutputNoise.make_hook", output_noise_make_hook)],
    "noise_real_tokens": [
        ("deepcuts.strategies.smoothgrad", "OutputNoise.make_hook", output_noise_real_tokens_make_hook),
        ("deepcuts.strategies.base", "Strategy.on_train_batch_start", _batch_start),
    ],
}
PATCHED_ORIGINALS: dict = {}  # (module, attr) -> the library's own object while patched
# entries whose replacement is built lazily (it wraps the original): call them to get the object
LAZY = {_batch_end, _batch_start}


@contextlib.contextmanager
def patched(*groups: str) -> Iterator[None]:
    """Install the named groups of replacements (keys of ``PATCHES``) for the block."""
    import importlib

    undo = []
    try:
        for group in groups:
            for module_name, attr, new in PATCHES[group]:
                owner = importlib.import_module(module_name)
                *path, last = attr.split(".")
                for part in path:
                    owner = getattr(owner, part)
                original = owner.__dict__[last] if isinstance(owner, type) else getattr(owner, last)
                PATCHED_ORIGINALS.setdefault((module_name, attr), original)
                undo.append((owner, last, original, (module_name, attr)))
                setattr(owner, last, new() if new in LAZY else new)
        yield
    finally:
        for owner, last, old, key in reversed(undo):
            setattr(owner, last, old)
            PATCHED_ORIGINALS.pop(key, None)
