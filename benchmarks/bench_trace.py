"""S11: what the movement trace costs every dense fine-tune.

Every dense fine-tune runs :class:`deepcuts.scoring.trace.MovementTrace` (so ``strategy=movement`` needs no
pass of its own): at each optimiser step, one ``isfinite`` check and one multiply-add per prunable
weight. Measured: MiniLM training steps (SST-2, batch 32, train mode, AdamW) with the trace's real
per-step code between backward and the optimiser step / the same steps without it, interleaved.
Target <= 1.05.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
from bench_masks import train_steps  # noqa: E402


def traced_steps(model, batches, optimizers: dict, trace, lr: float, wd: float) -> None:
    """``train_steps`` with the trace's per-step work where Lightning calls it."""
    import torch

    model.train()
    if "traced" not in optimizers:
        optimizers["traced"] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    opt = optimizers["traced"]
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        trace.on_before_optimizer_step(None, model, opt)
        opt.step()


def bench_s11(quick: bool) -> dict:
    from deepcuts.scoring.trace import MovementTrace

    cfg, model, prunable, batches = C.minilm_setup("sst2", n_batches=2 if quick else 8)
    plain, traced = model, copy.deepcopy(model)
    trace = MovementTrace(list(prunable), Path("/dev/null"))
    trace.on_train_start(None, traced)  # reads named_parameters only
    opts: dict = {}
    lr, wd = cfg.optimizer.lr, cfg.optimizer.weight_decay
    reps = 2 if quick else 3
    times = C.interleaved(
        {
            "plain_steps": lambda: train_steps(plain, batches, opts, "plain", lr, wd),
            "traced_steps": lambda: traced_steps(traced, batches, opts, trace, lr, wd),
        },
        reps=reps, warmup=1,
    )
    ratio = C.ratio_of_medians(times, "traced_steps", "plain_steps")
    return C.result(
        "S11", "dense fine-tuning step with the movement trace / without (MiniLM, SST-2 batch 32, "
        "train mode, AdamW; deepcuts.scoring.trace.MovementTrace's per-step code)",
        ratio, "<= 1.05", ratio <= 1.05,
        raw={"seconds": {k: C.summary(v) for k, v in times.items()}, "reps": reps,
             "steps_per_measurement": len(batches), "data": C.tokens(batches),
             "traced_weights": sum(p.numel() for p in prunable.values()), "trace_steps": trace.steps},
    )


def main(argv=None) -> list[dict]:
    args = C.parse_common(argv)
    results = [bench_s11(args.quick)]
    C.emit(results, write=not args.no_write)
    return results


if __name__ == "__main__":
    main()
