"""The model card (``README.md``) of an export folder: the facts a reader of a pruning claim needs,
read from the run's results (results.json) and its resolved config.

It says what the model does (task, labels or score range, inputs and output), how good it is
(every dev metric of the pruned and of the dense model, and the rule that chose the epoch), how it
was pruned (strategy and its settings, ratio requested and achieved and on which basis, kept
parameters, heads and FFN neurons kept per layer for a structured model), what it weighs (file
sizes), how it was made (seed, command, machine, DeepCuts version), and how to run it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import deepcuts
from deepcuts.cache.files import atomic_path

CARD = "README.md"
SELECTION = {"last": "the last epoch (nothing selected)",
             "holdout": "the best epoch on a held-out slice of the train set",
             "dev": "the best dev epoch (selected on the set reported: optimistic)"}


def _metrics(values: dict | None) -> str:
    if not values:
        return "not measured"
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()) if isinstance(v, (int, float)))


def _mb(n: Any) -> str:
    return f"{n / 1e6:.1f} MB ({n:,} bytes)" if isinstance(n, int) else "—"


def _command(out: Path) -> str:
    """``python train.py`` with the job's overrides (Hydra's ``.hydra/overrides.yaml``)."""
    import yaml

    path = Path(out) / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError):
        return "not recorded (the job was not started by train.py)"
    return " ".join(["python train.py", *map(str, overrides)])


def card_text(results: dict, config: dict, command: str) -> str:
    """The card's Markdown from results.json (``results``) and the resolved config (``config``)."""
    data, task = config.get("data", {}), config.get("data", {}).get("task", {})
    structure = results.get("structure")
    sizes = results.get("export_bytes") or {}
    machine = results.get("machine") or {}
    regression = task.get("type") == "regression"
    what = (f"regression: a score in [{task.get('min')}, {task.get('max')}]" if regression
            else f"classification into {task.get('num_labels')} classes"
            + (f" ({', '.join(map(str, task['labels']))})" if task.get("labels") else ""))
    lines = [
        f"# {results['model']} pruned with {results['strategy']} on {results['data']} (c = {results['ratio']:g})",
        "",
        f"A {results.get('arch', 'bert')} encoder with a task head, pruned by DeepCuts {deepcuts.__version__} "
        f"({'whole attention heads and FFN neurons removed' if structure else 'weights masked to exact zeros'}).",
        "",
        "## Task",
        "",
        f"- Data: GLUE `{results['data']}` ({data.get('folder', '?')}), text columns "
        f"{', '.join(f'`{c}`' for c in data.get('text_columns', []))}; {what}.",
        f"- Output: {'the score (min + (max - min) · sigmoid of the head)' if regression else 'class logits'}.",
        "",
        "## Dev-set metrics",
        "",
        f"- Pruned: {_metrics(results.get('pruned'))} (monitor `{results.get('monitor')}`; epoch kept: "
        f"{SELECTION.get(str(results.get('selection')), results.get('selection'))}).",
        f"- Dense (before pruning, same seed): {_metrics(results.get('dense'))}.",
        f"- Evaluated in {config.get('trainer', {}).get('precision', '32')} precision; `predict.py` "
        "evaluates the same way by default.",
        "",
        "## Pruning",
        "",
        f"- Strategy: `{results['strategy']}`, settings "
        f"`{json.dumps({k: v for k, v in (config.get('strategy') or {}).items() if k != '_target_'}, sort_keys=True)}`.",
        f"- Ratio: requested c = {results['ratio']:g} on the `{results.get('ratio_basis')}` basis (keep "
        f"{100 * float(results.get('keep_fraction', 0)):.2f}% of the prunable weights); achieved "
        f"{float(results.get('achieved_ratio', 0)):.3f} on the whole model.",
        f"- Parameters: {results.get('nonzero_parameters', 0):,} non-zero of {results.get('total_parameters', 0):,}; "
        f"prunable kept {results.get('kept_prunable', 0):,} of {results.get('prunable_parameters', 0):,}.",
        f"- Rewind: `{results.get('rewind')}`; fine-tuning epochs {results.get('epochs_dense')} dense + "
        f"{results.get('epochs_final')} masked.",
    ]
    if structure:
        heads = structure.get("heads_kept") or []
        neurons = [len(n) for n in structure.get("neurons") or []]
        lines.append(f"- Structure: heads kept per layer {heads} (head size {structure.get('head_size')}), "
                     f"FFN neurons kept per layer {neurons}.")
    lines += [
        "",
        "## Files",
        "",
        f"- Encoder weights: {_mb(sizes.get('dense'))}" + (f"; compact copy (kept values + bitmasks): "
                                                           f"{_mb(sizes['compact'])}" if sizes.get("compact") else "") + ".",
        f"- ONNX graph (`model.onnx`, float32): {_mb(sizes['onnx'])}." if sizes.get("onnx") else
        "- ONNX graph: not exported (`python -m deepcuts.export --onnx <this folder>`).",
        "- Latency: not measured by the run (benchmarks S9 and S13 measure a structured MiniLM on a CPU).",
        "",
        "## How it was made",
        "",
        f"- Seed {results['seed']}; command: `{command}`.",
        f"- Machine: {machine.get('cpu_count', '?')} CPU(s) ({machine.get('processor') or platform.machine()}), "
        f"device {machine.get('device', '?')}, torch {machine.get('torch', '?')}.",
        f"- Run key `{results.get('run_key')}` (the hash of every setting that determines the result).",
        "",
        "## Use",
        "",
        "```bash",
        "python predict.py <this folder> dev.tsv                 # PyTorch (needs DeepCuts)",
        "python predict.py <this folder> dev.tsv --runtime onnx  # ONNX Runtime (model.onnx)",
        "```",
        "",
        "In Python: `deepcuts.models.export.load_exported(folder)`; a masked encoder also loads with "
        "`transformers.AutoModel.from_pretrained(folder)`; the ONNX graph needs only onnxruntime, numpy "
        "and the tokenizer (transformers).",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, results: dict, cfg) -> Path:
    """Write ``folder/README.md`` (atomically) for the run whose output folder holds ``folder``."""
    from omegaconf import OmegaConf

    if isinstance(cfg, dict):
        config = cfg
    else:
        try:
            config = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # noqa: BLE001 - an interpolation only Hydra's job can resolve: shown as written
            config = OmegaConf.to_container(cfg, resolve=False)
    path = Path(folder) / CARD
    with atomic_path(path) as tmp:
        tmp.write_text(card_text(results, config, _command(Path(config.get("output_dir", ".")))))
    return path
