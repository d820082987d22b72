"""S3, S4: the cost of masks.

S3  masked fine-tuning step time / dense step time: the same MiniLM and real SST-2 batches, train
    mode, AdamW (the pipeline's optimiser settings), masks attached with
    ``deepcuts.pruning.masks.apply_masks`` (``torch.nn.utils.prune.custom_from_mask``).
S4  building layer-wise and global masks (``deepcuts.pruning.masks.layer_masks`` / ``global_masks``) from
    BERT-base-shaped random scores: 85,608,192 values in 146 tensors (73 Linear modules, weight
    and bias separate), against ShrinkBench's ``numpy.quantile`` thresholding.

    .venv/bin/python benchmarks/bench_masks.py [--quick] [--only S3,S4]
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

RATIO = 3  # the pipeline's default compression ratio (bert_base basis): keep fraction 0.1474


def keep_fraction(ratio: float = RATIO) -> float:
    from deepcuts.pruning import budget as B

    return B.BASES["bert_base"].keep_fraction(ratio)


# -- S3 -------------------------------------------------------------------------------------------
def dense_and_masked(cfg, model, prunable):
    """Two copies of the same model; the second gets layer-wise |W| masks at ratio 3 attached with
    ``apply_masks`` exactly as the pipeline does before the masked fine-tune."""
    from deepcuts.pruning import budget as B
    from deepcuts.pruning import masks as M

    dense = copy.deepcopy(model)
    masked = copy.deepcopy(model)
    params = B.prunable_parameters(masked, cfg.prune.include, cfg.prune.get("exclude", []))
    scores = {k: p.detach().abs() for k, p in params.items()}
    M.apply_masks(masked, M.build_masks(scores, keep_fraction(), "layer"))
    return dense, masked


def train_steps(model, batches, optimizers: dict, key: str, lr: float = 5e-5, wd: float = 0.01) -> None:
    """One optimiser step per batch, train mode (dropout on). The optimiser is created once per
    model and kept, so timed calls measure steady-state steps (Adam state already allocated)."""
    import torch

    model.train()
    if key not in optimizers:
        optimizers[key] = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd
        )
    opt = optimizers[key]
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        opt.step()


def bench_s3(quick: bool) -> dict:
    cfg, model, prunable, batches = C.minilm_setup("sst2", n_batches=2 if quick else 8)
    dense, masked = dense_and_masked(cfg, model, prunable)
    del model
    opts: dict = {}
    reps = 2 if quick else 3
    times = C.interleaved(
        {
            "dense_steps": lambda: train_steps(dense, batches, opts, "dense", cfg.optimizer.lr, cfg.optimizer.weight_decay),
            "masked_steps": lambda: train_steps(masked, batches, opts, "masked", cfg.optimizer.lr, cfg.optimizer.weight_decay),
        },
        reps=reps, warmup=1,
    )
    ratio = C.ratio_of_medians(times, "masked_steps", "dense_steps")
    import torch

    kept = sum(int(getattr(masked.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2] + "_mask").sum()) for n in prunable)
    return C.result(
        "S3", "masked fine-tuning step time / dense step time (MiniLM, SST-2 batch 32, train mode, "
        "AdamW; masks via deepcuts.pruning.masks.apply_masks = prune.custom_from_mask)",
        ratio, "<= 1.10", ratio <= 1.10,
        raw={"seconds": {k: C.summary(v) for k, v in times.items()}, "reps": reps,
             "steps_per_measurement": len(batches), "data": C.tokens(batches),
             "masked_tensors": len(prunable), "keep_fraction": keep_fraction(),
             "kept_prunable": kept, "torch_threads": torch.get_num_threads()},
    )


# -- S4 -------------------------------------------------------------------------------------------
def bert_base_shapes() -> list[tuple[str, tuple[int, ...]]]:
    h, i = 768, 3072
    linears = {
        "attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
        "attention.output.dense": (h, h), "intermediate.dense": (i, h), "output.dense": (h, i),
    }
    shapes = []
    for layer in range(12):
        for name, (out, inp) in linears.items():
            base = f"bert.encoder.layer.{layer}.{name}"
            shapes += [(f"{base}.weight", (out, inp)), (f"{base}.bias", (out,))]
    shapes += [("bert.pooler.dense.weight", (h, h)), ("bert.pooler.dense.bias", (h,))]
    return shapes


def random_scores(seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=g) for name, shape in bert_base_shapes()}


def shrinkbench_layer(np_scores: dict, f: float) -> dict:
    import numpy as np

    out = {}
    for name, s in np_scores.items():
        t = np.quantile(s, 1 - f)
        out[name] = s >= t
    return out


def shrinkbench_global(np_scores: dict, f: float) -> dict:
    import numpy as np

    flat = np.concatenate([s.ravel() for s in np_scores.values()])
    t = np.quantile(flat, 1 - f)
    return {name: s >= t for name, s in np_scores.items()}


def bench_s4(quick: bool) -> dict:
    from deepcuts.pruning import masks as M

    scores = random_scores()
    np_scores = {k: v.numpy() for k, v in scores.items()}
    n_tensors = len(scores)
    n_values = sum(s.numel() for s in scores.values())
    assert n_tensors == 146 and n_values == 85_608_192, (n_tensors, n_values)
    f = keep_fraction()
    reps = 1 if quick else 3
    fns = {
        "deepcuts_layer_masks": lambda: M.layer_masks(scores, f),
        "deepcuts_global_masks": lambda: M.global_masks(scores, f),
        "numpy_quantile_layer": lambda: shrinkbench_layer(np_scores, f),
        "numpy_quantile_global": lambda: shrinkbench_global(np_scores, f),
    }
    times = C.interleaved(fns, reps=reps, warmup=0)
    # exactness check (outside the timings)
    layer = M.layer_masks(scores, f)
    glob = M.global_masks(scores, f)
    layer_ok = all(int(m.sum()) == M.keep_count(f, m.numel()) for m in layer.values())
    glob_kept = sum(int(m.sum()) for m in glob.values())
    med = {k: C.median(v) for k, v in times.items()}
    worst = max(med["deepcuts_layer_masks"], med["deepcuts_global_masks"])
    return C.result(
        "S4", "seconds to build layer-wise and global masks from BERT-base-shaped scores "
        f"({n_values:,} values in {n_tensors} tensors = 73 Linear modules x weight+bias), "
        "the slower of the two; vs ShrinkBench's numpy.quantile thresholds",
        worst, "<= 2 s (each of layer, global)", worst <= 2.0,
        raw={
            "seconds": {k: C.summary(v) for k, v in times.items()}, "reps": reps,
            "keep_fraction": f, "tensors": n_tensors, "modules": n_tensors // 2, "values": n_values,
            "ratio_vs_numpy_quantile": {
                "layer": med["deepcuts_layer_masks"] / med["numpy_quantile_layer"],
                "global": med["deepcuts_global_masks"] / med["numpy_quantile_global"],
            },
            "exact_counts": {"layer": layer_ok,
                             "global": glob_kept == M.keep_count(f, n_values),
                             "global_kept": glob_kept},
        },
        unit="seconds",
        layer_s=round(med["deepcuts_layer_masks"], 4), global_s=round(med["deepcuts_global_masks"], 4),
        ratio_vs_numpy_layer=round(med["deepcuts_layer_masks"] / med["numpy_quantile_layer"], 4),
        ratio_vs_numpy_global=round(med["deepcuts_global_masks"] / med["numpy_quantile_global"], 4),
    )


def main(argv=None) -> list[dict]:
    args = C.parse_common(argv, lambda p: p.add_argument("--only", default="S3,S4"))
    only = set(args.only.split(","))
    results = []
    if "S3" in only:
        results.append(bench_s3(args.quick))
    if "S4" in only:
        results.append(bench_s4(args.quick))
    C.emit(results, write=not args.no_write)
    return results


if __name__ == "__main__":
    main()
