"""S13: ONNX Runtime against PyTorch on the same exported models, dense and structured c = 3.

The pretrained MiniLM encoder (as S9 loads it) with a 2-class head, as an export is run
(:class:`deepcuts.models.export.ExportedModel`: encoder, pooler, head), dense and structured at
c = 3 on the bert_base basis (heads_neurons, |W| group scores summed per layer, as S9; latency does
not depend on which heads and neurons are kept, only how many). Each is traced to ONNX by
:func:`deepcuts.models.onnx.write_graph` (the dynamo exporter the project's export uses) and checked
against PyTorch (max abs difference of the logits within 1e-4) before any timing, once with each
of torch's exporters: ``dynamo`` (the project's default) and ``torchscript`` (``--exporter
torchscript``; deprecated by torch).

Timing: float32, batch 1 and batch 32, sequence length 128 (random token ids, seeded; mask all
ones), 2 threads on both sides (``torch.set_num_threads(2)``; ONNX Runtime ``intra_op_num_threads
= 2``, one inter-op thread, ``ORT_ENABLE_ALL`` graph optimisations, CPU provider). The six
variants (PyTorch dense / structured, ONNX Runtime dense / structured for each exporter's graph)
of one batch size are timed interleaved after a warm-up; medians. Targets, on the default
(dynamo) graph: ONNX Runtime not slower than PyTorch on the structured model at either batch (ratio
ORT / PyTorch <= 1.0; ``measured`` is the larger), and the structured speed-up under ONNX Runtime
>= 2.0 at both batches; the torchscript graph's ratios are reported beside. OpenVINO is not
measured.

    .venv/bin/python benchmarks/bench_onnx.py [--quick] [--no-write]
"""

from __future__ import annotations

import copy
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

BATCHES = (1, 32)
SEQ_LEN = 128
THREADS = 2
RATIO = 3
TOLERANCE = 1e-4
ROUNDS = {1: 40, 32: 10}
ROUNDS_QUICK = {1: 4, 32: 2}
WARMUP = 2
EXPORTERS = {"dynamo": "", "torchscript": "ts_"}  # exporter -> prefix of its graphs' names


def build_models():
    """(dense, structured c = 3) as ExportedModels, and the structured plan's summary."""
    import torch
    from bench_structured import load_minilm
    from torch import nn

    from deepcuts.models.export import ExportedModel
    from deepcuts.pruning import budget as B
    from deepcuts.pruning import structured as S

    encoder, layout, _, prunable = load_minilm()
    scores = {k: p.detach().abs() for k, p in prunable.items()}
    groups = S.model_groups(encoder, layout, encoder.config.num_attention_heads)
    plan = S.plan_groups(scores, prunable, groups, B.BASES["bert_base"].keep_fraction(RATIO), scope="layer",
                         reduce="sum", min_heads=1)
    structured = copy.deepcopy(encoder)
    S.remove_groups(structured, plan, groups)
    torch.manual_seed(0)
    head = nn.Linear(encoder.config.hidden_size, 2)
    spec = {"inputs": ["input_ids", "attention_mask", "token_type_ids"], "pooling": "pooler"}
    task = {"type": "classification", "num_labels": 2}
    models = {name: ExportedModel(enc, copy.deepcopy(head), task, spec).eval()
              for name, enc in (("dense", encoder), ("structured", structured))}
    return models, plan.summary(), encoder.config.vocab_size


def inputs(batch: int, vocab: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(batch)
    return {"input_ids": torch.randint(0, vocab, (batch, SEQ_LEN), generator=gen),
            "attention_mask": torch.ones(batch, SEQ_LEN, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, SEQ_LEN, dtype=torch.long)}


def sessions(models: dict, vocab: int, folder: Path) -> tuple[dict, dict, dict]:
    """ONNX Runtime sessions of each model, the graphs' sizes and their check against PyTorch."""
    import onnxruntime as ort
    import torch

    from deepcuts.models.onnx import write_graph

    out, sizes, checks = {}, {}, {}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    for exporter, tag in EXPORTERS.items():
        for name, model in models.items():
            key = f"{tag}{name}"
            path = folder / f"{key}.onnx"
            write_graph(model, inputs(2, vocab), path, exporter=exporter)
            sizes[key] = path.stat().st_size
            out[key] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = inputs(3, vocab)
            with torch.inference_mode():
                expected = model(**feed).numpy()
            got = out[key].run(None, {k: v.numpy() for k, v in feed.items()})[0]
            checks[key] = float(abs(got - expected).max())
    bad = {k: v for k, v in checks.items() if not v <= TOLERANCE}
    if bad:
        raise AssertionError(f"ONNX Runtime disagrees with PyTorch beyond {TOLERANCE}: {bad}")
    return out, sizes, checks


def bench_s13(quick: bool) -> dict:
    import onnxruntime as ort
    import torch

    torch.set_num_threads(THREADS)
    models, structure, vocab = build_models()
    rounds = ROUNDS_QUICK if quick else ROUNDS
    per_batch = {}
    with tempfile.TemporaryDirectory() as tmp:
        ort_sessions, sizes, checks = sessions(models, vocab, Path(tmp))
        gc.collect()
        gc.freeze()
        for batch in BATCHES:
            feed = inputs(batch, vocab)
            np_feed = {k: v.numpy() for k, v in feed.items()}
            calls = {**{f"torch_{n}": (lambda m=m, f=feed: m(**f)) for n, m in models.items()},
                     **{f"ort_{n}": (lambda s=s, f=np_feed: s.run(None, f)) for n, s in ort_sessions.items()}}
            t = time.perf_counter()
            with torch.inference_mode():
                seconds = C.interleaved(calls, reps=rounds[batch], warmup=WARMUP)
            print(f"   (batch {batch}: {WARMUP} + {rounds[batch]} rounds of {len(calls)} variants in "
                  f"{time.perf_counter() - t:.0f} s)", flush=True)
            med = {k: C.median(v) * 1e3 for k, v in seconds.items()}
            per_batch[str(batch)] = {
                "rounds": rounds[batch], "median_ms": {k: round(v, 3) for k, v in med.items()},
                "ort_over_torch": {n: round(med[f"ort_{n}"] / med[f"torch_{n}"], 4) for n in models},
                "ort_torchscript_over_torch": {n: round(med[f"ort_ts_{n}"] / med[f"torch_{n}"], 4) for n in models},
                "structured_speedup": {rt: round(med[f"{rt}_dense"] / med[f"{rt}_structured"], 4)
                                       for rt in ("torch", "ort", "ort_ts")},
                "timings_ms": {k: C.summary([s * 1e3 for s in v]) for k, v in seconds.items()},
            }
    ort_ratio = max(per_batch[str(b)]["ort_over_torch"]["structured"] for b in BATCHES)
    speedup = min(per_batch[str(b)]["structured_speedup"]["ort"] for b in BATCHES)
    met_by = {f"batch_{b}": {"ort_not_slower": per_batch[str(b)]["ort_over_torch"]["structured"] <= 1.0,
                             "structured_speedup_2x": per_batch[str(b)]["structured_speedup"]["ort"] >= 2.0}
              for b in BATCHES}
    return C.result(
        "S13", f"ONNX Runtime / PyTorch latency of the exported structured MiniLM (c = {RATIO}), the larger of batch "
        f"1 and 32 (seq {SEQ_LEN}, {THREADS} threads, fp32); beside it the structured speed-up under ONNX Runtime",
        ort_ratio, "<= 1.0 (ORT not slower, batch 1 and 32) and structured speed-up under ORT >= 2.0",
        all(v for b in met_by.values() for v in b.values()),
        raw={"per_batch": per_batch, "graph_bytes": sizes, "checks_max_abs_diff": checks, "structure": structure,
             "setup": {"model": "MiniLM encoder + pooler + 2-class head (ExportedModel), float32",
                       "export": "deepcuts.models.onnx.write_graph: dynamo (torch.onnx.export dynamo=True, opset 18) and "
                                 "torchscript (dynamo=False, opset 17); ort_ts_* are the torchscript graphs",
                       "onnxruntime": ort.__version__, "torch": torch.__version__,
                       "ort_options": f"CPUExecutionProvider, intra_op {THREADS}, inter_op 1, ORT_ENABLE_ALL",
                       "timing": "4 variants interleaved per batch size, order flipped every round; medians"}},
        unit="ratio", ort_structured_speedup_min=speedup, met_by_batch=met_by,
        torchscript_graph={"ort_over_torch_structured_max": max(per_batch[str(b)]["ort_torchscript_over_torch"]["structured"]
                                                                 for b in BATCHES),
                           "structured_speedup_min": min(per_batch[str(b)]["structured_speedup"]["ort_ts"] for b in BATCHES)},
    )


def main(argv=None) -> list[dict]:
    args = C.parse_common(argv)
    with C.quiet_logs():
        results = [bench_s13(args.quick)]
    C.emit(results, write=not args.no_write)
    for b in BATCHES:
        row = results[0]["raw"]["per_batch"][str(b)]
        print(f"   batch {b}: " + "; ".join(f"{k} {v:.1f} ms" for k, v in row["median_ms"].items())
              + f"; ORT/torch {row['ort_over_torch']} (torchscript graph {row['ort_torchscript_over_torch']}); "
              f"structured speed-up {row['structured_speedup']}", flush=True)
    return results


if __name__ == "__main__":
    main()
