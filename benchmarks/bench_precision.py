"""S8: does bf16 pay off for fine-tuning on this machine? One MiniLM fine-tuning step (fwd + bwd
+ AdamW step, train mode) under ``torch.autocast(bfloat16)`` -- what ``trainer.precision=
bf16-mixed`` does on a CPU -- against float32, on the same real batches of each task (the
pipeline's own model and loader), interleaved. Scoring always runs in float32.

    .venv/bin/python benchmarks/bench_precision.py [--quick]

The metrics side (dense dev metrics, float32 vs bf16-mixed, paired by seed) is in
docs/results/bf16_check/.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

TASKS = ("stsb", "sst2", "cola")


def steps(model, batches, optimizer, bf16: bool):
    import torch

    def run() -> None:
        for batch in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def bench_s8(quick: bool) -> dict:
    import torch

    raw, ratios = {}, {}
    for task in TASKS:
        _, model, _, batches = C.minilm_setup(task, n_batches=2 if quick else 4)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-8)  # tiny steps: shapes, not learning
        times = C.interleaved({"float32": steps(model, batches, optimizer, False),
                               "bf16": steps(model, batches, optimizer, True)}, reps=1 if quick else 3)
        ratios[task] = C.ratio_of_medians(times, "bf16", "float32")
        raw[task] = {"float32_s": C.summary(times["float32"]), "bf16_s": C.summary(times["bf16"]),
                     **C.tokens(batches)}
    worst = max(ratios.values())
    return C.result(
        "S8", "bf16-mixed / float32 fine-tuning step time (MiniLM, batch 32, real batches of "
        "STS-B, SST-2, CoLA; the worst task)", worst, "< 1.0 (bf16 pays off here)", worst < 1.0,
        raw={"ratio_per_task": {k: round(v, 4) for k, v in ratios.items()}, **raw},
    )


def main(argv=None) -> list[dict]:
    args = C.parse_common(argv)
    with C.quiet_logs():
        results = [bench_s8(args.quick)]
    C.emit(results, write=not args.no_write)
    return results


if __name__ == "__main__":
    main()
