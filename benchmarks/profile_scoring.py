"""torch.profiler tables behind S1, S2 and S3: where a scoring pass / a masked step spends the time
that the plain fwd+bwd / the dense step does not.

Writes ``results/profile_<name>.txt`` (top ops by self CPU time) and ``results/profile.json``
(a few grouped totals: strategy hooks, callback arithmetic, pruning pre-hooks).

    .venv/bin/python benchmarks/profile_scoring.py [--batches 2] [--top 25]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def profile(fn, name: str, top: int, repeat: int = 2) -> dict:
    """Profile ``repeat`` calls after a warm-up and keep the fastest: on a shared machine a call
    can be slowed as a whole by other jobs, which says nothing about where its own time goes."""
    from torch.profiler import ProfilerActivity, profile, record_function

    fn()  # warm
    best = None
    for _ in range(repeat):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            with record_function(f"## {name}"):
                fn()
        events = prof.key_averages()
        total = next(e.cpu_time_total for e in events if e.key == f"## {name}") / 1e6
        if best is None or total < best[0]:
            best = (total, events)
    total, events = best
    table = events.table(sort_by="self_cpu_time_total", row_limit=top)
    (C.RESULTS / f"profile_{name}.txt").write_text(table + "\n")
    rows = {e.key: e.cpu_time_total / 1e6 for e in events}
    self_rows = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    return {"total_s": total, "inclusive_s": rows, "self_s": self_rows}


def callback_cost(model, prunable, batches, reps: int = 5) -> dict:
    """Seconds of one ``Strategy.on_train_batch_end`` (Cam-Cut's per-batch score update: 4
    element-wise ops per prunable tensor) with the default intra-op threads and with one thread.
    The gradients are refilled outside the timings."""
    import time
    from types import SimpleNamespace

    import torch
    from bench_scoring import camcut

    strategy = camcut()
    fake = SimpleNamespace(prunable=prunable, model=model)
    strategy.on_train_start(None, fake)
    try:
        strategy.before_batch(model, batches[0])
        with torch.no_grad():
            model.loss(batches[0])  # fills the activation means
        threads = torch.get_num_threads()
        out = {}
        for n in (threads, 1) * 2:
            torch.set_num_threads(n)
            times = []
            for _ in range(reps):
                for p in prunable.values():
                    p.grad = torch.randn_like(p)
                t = time.perf_counter()
                strategy.on_train_batch_end(None, fake, None, batches[0], 0)
                times.append(time.perf_counter() - t)
            out.setdefault(f"threads={n}", []).append(C.median(times))
        torch.set_num_threads(threads)
    finally:
        strategy._close()
        for p in prunable.values():
            p.grad = None
    return {k: round(min(v), 5) for k, v in out.items()}


def main(argv=None) -> None:
    args = C.parse_common(argv, lambda p: (
        p.add_argument("--batches", type=int, default=2),
        p.add_argument("--top", type=int, default=25),
        p.add_argument("--repeat", type=int, default=2, help="profiled calls per case; the fastest is kept"),
    ))
    from bench_masks import dense_and_masked, train_steps
    from bench_scoring import camcut, plain_fwd_bwd, scoring_pass, smoothcut
    from torch.profiler import record_function

    C.RESULTS.mkdir(parents=True, exist_ok=True)
    cfg, model, prunable, batches = C.minilm_setup("sst2", n_batches=args.batches)
    eta = 3

    # label the strategy's work so the tables group it
    from deepcuts.strategies import base, gradcam, smoothgrad

    orig_end = base.Strategy.on_train_batch_end
    orig_make = gradcam.ActivationMeans.make_hook
    orig_noise = smoothgrad.OutputNoise.make_hook

    def end(self, *a, **k):
        with record_function("## strategy.on_train_batch_end"):
            return orig_end(self, *a, **k)

    def wrap(orig, label):
        def make(self, name):
            hook = orig(self, name)

            def labelled(*a):
                with record_function(label):
                    return hook(*a)
            return labelled
        return make

    base.Strategy.on_train_batch_end = end
    gradcam.ActivationMeans.make_hook = wrap(orig_make, "## ActivationMeans hook")
    smoothgrad.OutputNoise.make_hook = wrap(orig_noise, "## OutputNoise hook")

    report = {}
    r = args.repeat
    report["plain"] = profile(lambda: plain_fwd_bwd(model, batches), "plain", args.top, r)
    report["camcut"] = profile(lambda: scoring_pass(model, prunable, camcut(), batches), "camcut", args.top, r)
    report["plain_eta"] = profile(lambda: plain_fwd_bwd(model, batches, eta), "plain_eta", args.top, r)
    report["smoothcut"] = profile(lambda: scoring_pass(model, prunable, smoothcut(eta), batches), "smoothcut", args.top, r)
    dense, masked = dense_and_masked(cfg, model, prunable)
    opts = {}
    report["dense_step"] = profile(lambda: train_steps(dense, batches, opts, "dense"), "dense_step", args.top, r)
    report["masked_step"] = profile(lambda: train_steps(masked, batches, opts, "masked"), "masked_step", args.top, r)

    keys = ["## strategy.on_train_batch_end", "## ActivationMeans hook", "## OutputNoise hook",
            "aten::normal_", "aten::index_put_", "Optimizer.step#AdamW.step",
            "aten::mm", "aten::addmm", "aten::bmm", "aten::mul", "aten::mul_", "aten::add_", "aten::abs_",
            "aten::randn", "aten::embedding_dense_backward", "aten::_foreach_mul_", "aten::_fused_adamw_",
            "aten::zeros_like", "aten::sum"]
    summary = {}
    for name, rep in report.items():
        summary[name] = {"total_s": round(rep["total_s"], 4)}
        for k in keys:
            if k in rep["inclusive_s"]:
                summary[name][k + (" (incl)" if k.startswith("##") else " (self)")] = round(
                    rep["inclusive_s"][k] if k.startswith("##") else rep["self_s"][k], 4)
    summary["callback_seconds_per_batch"] = callback_cost(model, prunable, batches)
    out = {"batches": args.batches, "eta": eta, "data": C.tokens(batches), "summary": summary,
           "machine": C.machine_info(), "timestamp": C.now()}
    (C.RESULTS / "profile.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
