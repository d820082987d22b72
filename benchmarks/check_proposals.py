"""Checks that every replacement in proposals.py gives the library's results: the same masks
(bit for bit, ties included) and the same scores (to float rounding), on MiniLM + SST-2.

    .venv/bin/python benchmarks/check_proposals.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def check_masks() -> None:
    import proposals as P
    import torch

    from deepcuts import masks as M

    g = torch.Generator().manual_seed(1)
    for trial in range(400):
        n = int(torch.randint(1, 300, (1,), generator=g))
        levels = int(torch.randint(1, 6, (1,), generator=g))
        x = torch.randint(0, levels, (n,), generator=g).float() if trial % 2 else torch.rand(n, generator=g)
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            ref = M.topk_mask(x, k)
            assert torch.equal(ref, P.topk_mask(x, k)), (trial, n, k)
            assert torch.equal(ref, P.topk_mask_np(x, k)), (trial, n, k)
    for trial in range(40):
        levels = 1 + trial % 5
        scores = {f"t{i}": torch.randint(0, levels, (int(torch.randint(1, 40, (1,), generator=g)), 7),
                                         generator=g).float() for i in range(5)}
        scores["bias"] = torch.rand(3, generator=g)
        for f in (0.01, 0.1, 0.5, 0.9, 1.0):
            for name in ("layer_masks", "global_masks"):
                ref = getattr(M, name)(scores, f)
                for group in ("masks", "masks_numpy"):
                    with P.patched(group):
                        new = getattr(M, name)(scores, f)
                    assert list(ref) == list(new), (name, group)
                    assert all(torch.equal(ref[k], new[k]) for k in ref), (name, group, f, trial)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for check in (P.check_finite, P.check_finite_np):
            x = torch.rand(10)
            x[3] = bad
            try:
                check("x", x)
            except FloatingPointError:
                continue
            raise AssertionError(f"{check.__name__} missed {bad}")
    print("masks: identical (random and tied scores, layer and global); NaN/inf still caught")


def check_scores() -> None:
    import proposals as P
    import torch
    from bench_scoring import camcut, scoring_pass, smoothcut

    cfg, model, prunable, batches = C.minilm_setup("sst2", n_batches=2)
    for make, groups in ((camcut, ("cam_hook", "callback_1thread")),
                         (lambda: smoothcut(2), ("noise_add", "callback_1thread"))):
        ref = scoring_pass(model, prunable, make(), batches)
        with P.patched(*groups):
            new = scoring_pass(model, prunable, make(), batches)
        # key biases get a zero gradient in exact arithmetic (softmax ignores a shift shared by all
        # keys), so their scores are rounding noise: compared against the largest score instead
        top = max(v.abs().max() for v in ref.values())
        worst = max(
            float((ref[k] - new[k]).abs().max() / (top if k.endswith("key.bias") else ref[k].abs().max()).clamp_min(1e-30))
            for k in ref
        )
        assert worst < 1e-4, (groups, worst)
        print(f"scores {make().name}: max relative difference {worst:.2e} with {groups}")
    del torch


if __name__ == "__main__":
    check_masks()
    check_scores()
