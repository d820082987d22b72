"""S1, S2, S6: the cost of a scoring pass against plain training work, on MiniLM + real SST-2.

S1  Cam-Cut (GradCAMShift) scoring pass time / plain forward+backward time, same batches.
S2  Smooth-Cut (SmoothGrad, eta passes) scoring time / (eta x plain forward+backward time).
S6  peak RSS of a scoring pass / peak RSS of a training-step loop (each in a fresh process).

"Plain forward+backward" is the ordinary training fwd+bwd of the full model (every parameter
requires grad, ``model.zero_grad(set_to_none=True)`` per batch), in eval mode (no dropout) like
the scoring pass. The scoring pass is timed through ``deepcuts.scoring.passes.run_scoring`` as the
pipeline calls it, with nothing subtracted: Trainer construction and Lightning's loop count.

    .venv/bin/python benchmarks/bench_scoring.py [--quick] [--only S1,S2,S6]
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

ETA = 10  # conf/strategy/smoothgrad.yaml


def scoring_pass(model, prunable, strategy, batches) -> dict:
    from deepcuts.scoring.passes import run_scoring

    with C.quiet_logs():
        return run_scoring(
            model, prunable, strategy, C.batch_loader(batches), len(batches), dropout=False,
            trainer_kwargs=dict(C.QUIET_TRAINER),
        )


def camcut():
    from deepcuts import strategies as S

    return S.GradCAMShift("gradcam_shift", shift=10.0, include_padding=False, seed=0)


def smoothcut(eta: int = ETA):
    from deepcuts import strategies as S

    return S.SmoothGrad("smoothgrad", eta=eta, sigma=1e-3, seed=0)


def bench_s1_s2(quick: bool, only: set[str]) -> list[dict]:
    cfg, model, prunable, batches = C.minilm_setup("sst2", n_batches=2 if quick else 8)
    reps = 2 if quick else 3
    out = []
    if "S1" in only:
        pairs = {
            "plain_fwd_bwd": lambda: C.plain_fwd_bwd(model, batches),
            "camcut_scoring": lambda: scoring_pass(model, prunable, camcut(), batches),
        }
        # warm up once (on two batches: allocator, Lightning's first Trainer, lazy imports)
        C.plain_fwd_bwd(model, batches[:2])
        scoring_pass(model, prunable, camcut(), batches[:2])
        times = C.interleaved(pairs, reps=reps, warmup=0)
        ratio = C.ratio_of_medians(times, "camcut_scoring", "plain_fwd_bwd")
        out.append(C.result(
            "S1", "Cam-Cut (GradCAMShift) scoring pass time / plain fwd+bwd time, same batches "
            "(MiniLM, SST-2, batch 32, eval mode)",
            ratio, "<= 1.15", ratio <= 1.15,
            raw={"seconds": {k: C.summary(v) for k, v in times.items()}, "reps": reps,
                 "data": C.tokens(batches), "prunable_tensors": len(prunable)},
        ))
    if "S2" in only:
        eta = 3 if quick else ETA
        sb = batches[:1] if quick else batches[:2]  # eta passes per batch: keep the run short
        if "S1" not in only:
            C.plain_fwd_bwd(model, sb)
            scoring_pass(model, prunable, smoothcut(1), sb)
        pairs = {
            "plain_fwd_bwd": lambda: C.plain_fwd_bwd(model, sb),
            "smoothcut_scoring": lambda: scoring_pass(model, prunable, smoothcut(eta), sb),
        }
        times = C.interleaved(pairs, reps=reps, warmup=0)
        ratio = C.ratio_of_medians(times, "smoothcut_scoring", "plain_fwd_bwd", scale=eta)
        out.append(C.result(
            "S2", f"Smooth-Cut (SmoothGrad, eta={eta}) scoring time / (eta x plain fwd+bwd time) "
            "(MiniLM, SST-2, batch 32, eval mode)",
            ratio, "<= 1.15", ratio <= 1.15,
            raw={"seconds": {k: C.summary(v) for k, v in times.items()}, "eta": eta, "reps": reps,
                 "data": C.tokens(sb)},
        ))
    return out


# -- S6: peak memory, one fresh process per measurement ----------------------------------------
def _rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def s6_child(kind: str, n_batches: int) -> None:
    import gc

    import torch

    cfg, model, prunable, batches = C.minilm_setup("sst2", n_batches=n_batches)
    gc.collect()
    before = {"rss_kb": _rss_kb(), "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    if kind == "train":
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            model.loss(batch).backward()
            opt.step()
    else:
        scoring_pass(model, prunable, camcut(), batches)
    after = {"rss_kb": _rss_kb(), "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    C.child_report({
        "kind": kind, "before": before, "after": after, "prunable_bytes": C.prunable_bytes(prunable),
        "parameter_bytes": int(sum(p.numel() * p.element_size() for p in model.parameters())),
        "data": C.tokens(batches),
    })


def run_child(kind: str, n_batches: int) -> dict:
    return C.run_child(__file__, "--s6-child", kind, "--batches", str(n_batches))


def bench_s6(quick: bool) -> dict:
    n = 2 if quick else 8
    train = run_child("train", n)
    score = run_child("score", n)
    peak_train = train["after"]["maxrss_kb"] * 1024
    peak_score = score["after"]["maxrss_kb"] * 1024
    pbytes = score["prunable_bytes"]
    bound = 1 + 1.1 * pbytes / peak_train
    ratio = peak_score / peak_train
    mib = 1 << 20
    return C.result(
        "S6", "peak RSS of a Cam-Cut scoring pass / peak RSS of a training-step loop (AdamW, "
        "train mode), fresh process each, same MiniLM + SST-2 batches",
        ratio, f"<= 1 + 1.1 x prunable bytes / training peak = {bound:.4f}", ratio <= bound,
        raw={
            "train": train, "score": score,
            "peak_train_mib": round(peak_train / mib, 1), "peak_score_mib": round(peak_score / mib, 1),
            "prunable_mib": round(pbytes / mib, 1),
            "work_increment_mib": {
                k: round((d["after"]["maxrss_kb"] - d["before"]["rss_kb"]) / 1024, 1)
                for k, d in (("train", train), ("score", score))
            },
        },
        bound=round(bound, 4),
    )


def main(argv=None) -> list[dict]:
    args = C.parse_common(argv, lambda p: (
        p.add_argument("--only", default="S1,S2,S6"),
        p.add_argument("--s6-child", choices=["train", "score"]),
        p.add_argument("--batches", type=int, default=8),
    ))
    if args.s6_child:
        s6_child(args.s6_child, args.batches)
        return []
    only = set(args.only.split(","))
    results = bench_s1_s2(args.quick, only) if only & {"S1", "S2"} else []
    if "S6" in only:
        results.append(bench_s6(args.quick))
    C.emit(results, write=not args.no_write)
    return results


if __name__ == "__main__":
    main()
