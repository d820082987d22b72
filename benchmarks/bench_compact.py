"""S10: compact sparse checkpoints (``deepcuts.models.compact``): file size against the ideal.

The pipeline's MiniLM (``pipeline.build_model``, ``model=minilm``) gets layer-wise |W| masks
(``deepcuts.pruning.masks.build_masks(..., "layer")`` over the prunable set) at the keep fractions of
ratios 2, 3, 3.5 and 4 on the bert_base basis; its state dict with the pruned entries zeroed is
saved with ``save_compact`` and, for comparison, as a plain dense safetensors file
(``deepcuts.cache.store.write_tensors``, also atomic).

Measured: ``compact file bytes / (kept x 4 + n / 8 + unmasked bytes)`` (n = entries of the masked
tensors; tensors without a mask counted as dense values on both sides, so the ratio is the
format's overhead), the worst of the four ratios, target <= 1.15. Also reported per ratio: the
same with all overhead charged to the masked part, compact / dense file size, and the seconds
of ``save_compact``, ``load_compact``, dense save and dense load (interleaved, medians). Every
compact file is checked to load back identical to the state saved (outside the timings).

    .venv/bin/python benchmarks/bench_compact.py [--quick] [--no-write]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

RATIOS = (2, 3, 3.5, 4)
TARGET = 1.15


def minilm():
    """The pipeline's MiniLM model and its prunable set (no data needed)."""
    from deepcuts.models.module import build_model, load_tokenizer
    from deepcuts.pruning import budget as B

    cfg = C.compose("data=sst2", "model=minilm", "seed=0", f"cache_dir={C.TMP / 'cache'}",
                    f"output_dir={C.TMP / 'run'}")
    model = build_model(cfg, load_tokenizer(cfg.model.tokenizer))
    prunable = B.prunable_parameters(model, cfg.prune.include, cfg.prune.get("exclude", []))
    return model, prunable


def pruned_state(model, masks: dict) -> dict:
    import torch

    return {
        name: (torch.where(masks[name], t, torch.zeros((), dtype=t.dtype)) if name in masks else t.clone())
        for name, t in model.state_dict().items()
    }


def identical(a: dict, b: dict) -> bool:
    import torch

    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def measure(ratio: float, model, scores: dict, root: Path, reps: int) -> tuple[dict, dict]:
    """One ratio: masks, the pruned state, interleaved save/load timings, the size report."""
    from deepcuts.cache.store import read_tensors, write_tensors
    from deepcuts.models import compact as K
    from deepcuts.pruning import budget as B
    from deepcuts.pruning import masks as M

    f = B.BASES["bert_base"].keep_fraction(ratio)
    masks = M.build_masks(scores, f, "layer")
    state = pruned_state(model, masks)
    cpath, dpath = root / f"r{ratio}.compact.safetensors", root / f"r{ratio}.dense.safetensors"
    times = C.interleaved(
        {
            "compact_save": lambda: K.save_compact(state, masks, cpath),
            "compact_load": lambda: K.load_compact(cpath),
            "dense_save": lambda: write_tensors(dpath, state),
            "dense_load": lambda: read_tensors(dpath),
        },
        reps=reps, warmup=1,
    )
    report = K.compact_report(cpath, state)
    med = {k: C.median(v) for k, v in times.items()}
    row = {
        "keep_fraction": f, "masked_tensors": len(masks),
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in report.items()},
        "dense_file_bytes": dpath.stat().st_size,
        "round_trip_identical": identical(K.load_compact(cpath), state),
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "load_vs_dense": round(med["compact_load"] / med["dense_load"], 3),
        "save_vs_dense": round(med["compact_save"] / med["dense_save"], 3),
    }
    return row, {k: C.summary(v) for k, v in times.items()}


def bench_s10(quick: bool) -> dict:
    model, prunable = minilm()
    scores = {k: p.detach().abs() for k, p in prunable.items()}
    reps = 1 if quick else 3
    rows, raw_times = {}, {}
    C.TMP.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=C.TMP, prefix="s10-"))
    try:
        for ratio in RATIOS:
            rows[str(ratio)], raw_times[str(ratio)] = measure(ratio, model, scores, root, reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    worst = max(r["bound"] for r in rows.values())
    exact = all(r["round_trip_identical"] and r["dense_file_bytes"] == r["dense_bytes"] for r in rows.values())
    return C.result(
        "S10", "compact sparse checkpoint (deepcuts.models.compact): file bytes / (kept x 4 + n/8 + unmasked "
        "bytes), the worst of ratios 2, 3, 3.5, 4 (MiniLM, layer-wise |W| masks, bert_base basis)",
        worst, f"<= {TARGET}", worst <= TARGET and exact,
        raw={"per_ratio": rows, "timings": raw_times, "reps": reps, "exact_round_trips": exact,
             "prunable_values": sum(p.numel() for p in prunable.values())},
        compact_vs_dense={k: round(r["ratio"], 4) for k, r in rows.items()},
        masked_bound=round(max(r["masked_bound"] for r in rows.values()), 4),
    )


def main(argv=None) -> list[dict]:
    args = C.parse_common(argv)
    with C.quiet_logs():
        results = [bench_s10(args.quick)]
    C.emit(results, write=not args.no_write)
    for ratio, r in results[0]["raw"]["per_ratio"].items():
        s = r["seconds"]
        print(f"   ratio {ratio}: f={r['keep_fraction']:.4f} kept {r['kept']:,}/{r['numel']:,}  "
              f"compact {r['compact_bytes'] / 2**20:.2f} MiB vs dense {r['dense_bytes'] / 2**20:.2f} MiB "
              f"(x{r['ratio']:.3f}); bound {r['bound']:.4f}, masked part {r['masked_bound']:.4f}; "
              f"save {s['compact_save']:.3f} s (dense {s['dense_save']:.3f}), "
              f"load {s['compact_load']:.3f} s (dense {s['dense_load']:.3f}); "
              f"identical {r['round_trip_identical']}", flush=True)
    return results


if __name__ == "__main__":
    main()
