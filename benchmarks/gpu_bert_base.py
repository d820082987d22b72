"""S1-S3 (and scoring vs training peak memory) on a BERT-base-shaped model, on CUDA when there is one.

A randomly initialised ``BertModel(BertConfig())`` (12 layers, hidden 768, 85,608,192 prunable
values in 146 tensors) wrapped in ``deepcuts.models.module.GlueModel`` (2-way classification), batches of
32 x 128 random token ids (no padding). Needs only torch, transformers, pytorch_lightning,
torchmetrics, safetensors and the deepcuts package -- no Hydra, no datasets, no GLUE files.

    PYTHONPATH=. python benchmarks/gpu_bert_base.py            # CUDA if available, else CPU
    PYTHONPATH=. python benchmarks/gpu_bert_base.py --tiny     # a small config: a CPU smoke test

S1  Cam-Cut scoring pass (``deepcuts.scoring.passes.run_scoring`` + ``GradCAMShift``, Lightning included)
    / plain fwd+bwd of the full model (every parameter requires grad), eval mode, same batches.
S2  Smooth-Cut (``SmoothGrad``, eta passes) scoring time / (eta x plain fwd+bwd).
S3  masked training step (masks via ``deepcuts.pruning.masks.apply_masks``) / dense step; AdamW, train mode.
mem peak CUDA memory (``max_memory_allocated``) of the scoring pass / of the training steps.

Prints one JSON object; also writes it to ``$OUT/gpu_bench.json`` when ``OUT`` is set. Timings are
medians of ``--reps`` interleaved repetitions after one warm-up, CUDA-synchronised on both ends.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import common as C  # noqa: E402  (benchmarks/common.py: stdlib only at import)
import torch  # noqa: E402

TARGETS = {"S1": 1.15, "S2": 1.15, "S3": 1.10}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=128)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small BERT, batch 8 x 32: a quick CPU check")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--batches", type=int, default=None, help="batches per measurement (default 16; tiny 3)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (tiny 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 128; tiny 32)")
    p.add_argument("--eta", type=int, default=10, help="SmoothGrad passes per batch (conf default 10)")
    p.add_argument("--s2-batches", type=int, default=None, help="batches for S2 (default: half of --batches)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (the pipeline does not)")
    p.add_argument("--only", default="S1,S2,S3,mem")
    return p.parse_args(argv)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleaved(fns: dict, reps: int, device, warmup: int = 1) -> dict:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {k: [] for k in fns}
    names = list(fns)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            out[name].append(timed(fns[name], device))
    return out


def med(xs) -> float:
    return float(statistics.median(xs))


def build(args, device):
    from torchmetrics.classification import MulticlassAccuracy
    from transformers import BertConfig, BertModel

    from deepcuts.models.module import GlueModel
    from deepcuts.pruning import budget as B

    torch.manual_seed(0)
    config = BertConfig(**TINY) if args.tiny else BertConfig()
    encoder = BertModel(config, add_pooling_layer=True)
    model = GlueModel(
        encoder, {"type": "classification", "num_labels": 2},
        {"acc": MulticlassAccuracy(num_classes=2, average="micro")},
        functools.partial(torch.optim.AdamW, lr=5e-5, weight_decay=0.01),
    ).to(device)
    prunable = B.prunable_parameters(model, ["bert.encoder.layer.*", "bert.pooler.dense"])
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(1000, config.vocab_size, (args.batch_size, args.seq), generator=g)
        batches.append({
            "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids).to(device),
            "token_type_ids": torch.zeros_like(ids).to(device),
            "labels": torch.randint(0, 2, (args.batch_size,), generator=g).to(device),
        })
    return config, model, prunable, batches


def scoring(model, prunable, strategy, batches, device):
    from torch.utils.data import DataLoader

    from deepcuts.scoring.passes import run_scoring

    kwargs = {"enable_progress_bar": False, "devices": 1,
              "accelerator": "gpu" if device.type == "cuda" else "cpu"}
    scores = run_scoring(model, prunable, strategy, DataLoader(batches, batch_size=None), len(batches),
                         dropout=False, trainer_kwargs=kwargs)
    model.to(device)  # Lightning's teardown moves the module to the CPU; both moves are timed
    return scores


def train_steps(model, batches, opts: dict, key: str) -> None:
    model.train()
    if key not in opts:
        opts[key] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.01)
    opt = opts[key]
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        model.loss(batch).backward()
        opt.step()


def entry(id_, what, num, den, times, scale=1.0, extra=None):
    ratio = med(times[num]) / (scale * med(times[den]))
    res = {"id": id_, "what": what, "measured": round(ratio, 4), "target": f"<= {TARGETS[id_]}",
           "met": ratio <= TARGETS[id_],
           "raw": {"seconds": {k: {"median": med(v), "runs": [round(x, 6) for x in v]} for k, v in times.items()}}}
    res.update(extra or {})
    return res


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.batches = args.batches or (3 if args.tiny else 16)
    args.batch_size = args.batch_size or (8 if args.tiny else 32)
    args.seq = args.seq or (32 if args.tiny else 128)
    s2_batches = args.s2_batches or max(1, args.batches // 2)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    only = set(args.only.split(","))
    import pytorch_lightning  # noqa: F401  (creates its loggers, which set their own levels)

    prefixes = ("pytorch_lightning", "lightning", "lightning_fabric", "deepcuts")
    for name in [*prefixes, *logging.root.manager.loggerDict]:
        if name.startswith(prefixes):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    from deepcuts import strategies as S
    from deepcuts.pruning import masks as M
    from deepcuts.pruning.budget import BASES

    config, model, prunable, batches = build(args, device)
    n_prunable = sum(p.numel() for p in prunable.values())
    results = []
    t_start = time.perf_counter()

    def camcut():
        return S.GradCAMShift("gradcam_shift", shift=10.0)

    def smooth():
        return S.SmoothGrad("smoothgrad", eta=args.eta, sigma=1e-3)

    if "S1" in only:
        fns = {"plain_fwd_bwd": lambda: C.plain_fwd_bwd(model, batches),
               "camcut_scoring": lambda: scoring(model, prunable, camcut(), batches, device)}
        times = interleaved(fns, args.reps, device)
        results.append(entry("S1", "Cam-Cut scoring pass / plain fwd+bwd (eval mode, same batches)",
                             "camcut_scoring", "plain_fwd_bwd", times))
    if "S2" in only:
        sb = batches[:s2_batches]
        fns = {"plain_fwd_bwd": lambda: C.plain_fwd_bwd(model, sb),
               "smoothcut_scoring": lambda: scoring(model, prunable, smooth(), sb, device)}
        times = interleaved(fns, args.reps, device, warmup=0 if "S1" in only else 1)
        results.append(entry("S2", f"Smooth-Cut (eta={args.eta}) scoring / (eta x plain fwd+bwd)",
                             "smoothcut_scoring", "plain_fwd_bwd", times, scale=args.eta,
                             extra={"s2_batches": len(sb)}))
    if "S3" in only or "mem" in only:
        import copy

        from deepcuts.pruning import budget as B

        keep = BASES["bert_base"].keep_fraction(3)
        dense = copy.deepcopy(model)
        masked = copy.deepcopy(model)
        params = B.prunable_parameters(masked, ["bert.encoder.layer.*", "bert.pooler.dense"])
        M.apply_masks(masked, M.build_masks({k: p.detach().abs().cpu() for k, p in params.items()}, keep, "layer"))
        opts: dict = {}
        if "S3" in only:
            fns = {"dense_steps": lambda: train_steps(dense, batches, opts, "dense"),
                   "masked_steps": lambda: train_steps(masked, batches, opts, "masked")}
            times = interleaved(fns, args.reps, device)
            results.append(entry("S3", "masked training step (apply_masks) / dense step (AdamW, train mode)",
                                 "masked_steps", "dense_steps", times, extra={"keep_fraction": keep}))
        del masked, opts
        if "mem" in only and device.type == "cuda":
            # peak CUDA memory of each kind of work, from the same resident model
            del dense
            mem = {}
            for kind in ("score", "train"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                if kind == "score":
                    scoring(model, prunable, camcut(), batches[:2], device)
                else:
                    opt_holder: dict = {}
                    train_steps(model, batches[:2], opt_holder, "m")
                    del opt_holder
                sync(device)
                mem[kind] = {"peak_bytes": torch.cuda.max_memory_allocated(device), "resident_before": base}
            pbytes = sum(p.numel() * p.element_size() for p in prunable.values())
            ratio = mem["score"]["peak_bytes"] / mem["train"]["peak_bytes"]
            bound = 1 + 1.1 * pbytes / mem["train"]["peak_bytes"]
            results.append({"id": "mem", "what": "peak CUDA memory, Cam-Cut scoring pass / training steps (S6's rule)",
                            "measured": round(ratio, 4), "target": f"<= {bound:.4f}", "met": ratio <= bound,
                            "raw": {**mem, "prunable_bytes": pbytes}})

    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "device": str(device), "tf32": bool(args.tf32),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    try:
        import pytorch_lightning
        import transformers

        info.update(transformers=transformers.__version__, pytorch_lightning=pytorch_lightning.__version__)
    except ImportError:
        pass
    report = {
        "config": {"tiny": args.tiny, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
                   "batch": args.batch_size, "seq": args.seq, "batches": args.batches, "eta": args.eta,
                   "reps": args.reps, "prunable_values": n_prunable, "prunable_tensors": len(prunable)},
        "results": results,
        "all_met": all(r["met"] for r in results),
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": info,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "gpu_bench.json").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
