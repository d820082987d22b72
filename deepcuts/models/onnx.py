"""An export folder as an ONNX graph that runs without DeepCuts or torch (ONNX Runtime).

:func:`export_onnx` writes ``model.onnx`` (and ``onnx.json``, what was checked) into an export
folder (:func:`deepcuts.models.export.export_pruned`), masked or structured, any architecture the
model YAMLs name. The graph takes the encoder's inputs (``input_ids``, ``attention_mask`` and,
where the architecture reads it, ``token_type_ids``; int64, dynamic batch and sequence axes) and
gives what the run's model gave: class logits, or the regression score with the task's transform
(STS-B's ``5 * sigmoid``). It is traced with torch's dynamo exporter (``torch.onnx.export(...,
dynamo=True)``, onnxscript), in float32. Before it is kept, ONNX Runtime's outputs on real
examples are compared with PyTorch's: a difference above ``tolerance`` (1e-4) fails the export
and leaves no graph behind. The tokenizer's files are already in the folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from deepcuts.cache.files import atomic_path, write_json
from deepcuts.config.errors import ConfigError
from deepcuts.models.export import HEAD_SPEC_FILE, load_exported
from deepcuts.models.onnx_runtime import ONNX_FILE, ONNX_META

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
TOLERANCE = 1e-4
CHECK_EXAMPLES = 256  # real examples compared, in batches of the task's eval batch size


class OnnxExportError(ConfigError):
    """The graph could not be exported, or ONNX Runtime disagrees with PyTorch: nothing written."""


class _Graph(nn.Module):
    """The exported model with named tensor inputs only (the ones the architecture reads)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(input_ids, attention_mask, token_type_ids)


def graph_inputs(folder: Path) -> list[str]:
    """The graph's inputs: the encoder's, from ``head.json`` (input ids and the mask always)."""
    spec = json.loads((Path(folder) / HEAD_SPEC_FILE).read_text())
    return ["input_ids", "attention_mask", *(["token_type_ids"] if "token_type_ids" in spec.get("inputs", []) else [])]


def encode(tokenizer, texts: Sequence[Sequence[str]], inputs: Sequence[str], max_length: int,
           tensors: str = "pt") -> dict:
    """One padded batch of the graph's inputs (``texts``: one list per text column)."""
    enc = tokenizer(*texts, truncation=True, max_length=max_length, padding=True, return_tensors=tensors)
    if "token_type_ids" in inputs and "token_type_ids" not in enc:
        raise OnnxExportError("the model reads token_type_ids but its tokenizer gives none")
    return {k: enc[k] for k in inputs}


def write_graph(model: nn.Module, sample: dict, path: Path, opset: int = DEFAULT_OPSET,
                exporter: str = "dynamo") -> None:
    """Trace ``model`` (called with ``sample``'s tensors in order, as keyword names) into an ONNX
    file at ``path`` with dynamic batch and sequence axes. ``exporter``: ``dynamo`` (torch.export +
    onnxscript, the default) or ``torchscript`` (torch's older tracer, deprecated by torch but
    faster under ONNX Runtime on this CPU: benchmark S13). Raises :class:`OnnxExportError`."""
    if exporter not in EXPORTERS:
        raise OnnxExportError(f"exporter {exporter!r}: one of {', '.join(EXPORTERS)}.")
    names = list(sample)
    args = tuple(sample[k] for k in names)
    try:
        if exporter == "torchscript":
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=min(opset, 17),
                              input_names=names, output_names=["output"],
                              dynamic_axes={k: {0: "batch", 1: "sequence"} for k in names})
            return
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        program = torch.onnx.export(
            model, args, dynamo=True, opset_version=opset, input_names=names,
            output_names=["output"], verbose=False, dynamic_shapes={k: {0: batch, 1: seq} for k in names})
        program.save(str(path))
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds; say which step failed
        raise OnnxExportError(f"torch.onnx.export failed: {type(err).__name__}: {err}") from None


def export_onnx(folder: Path, texts: Sequence[Sequence[str]], *, opset: int = DEFAULT_OPSET,
                tolerance: float = TOLERANCE, batch_size: int | None = None, exporter: str = "dynamo") -> dict:
    """Write ``folder/model.onnx`` and ``folder/onnx.json``; return the latter's content.

    ``texts``: real examples (one list per text column, e.g. from the task's dev file) to check
    the graph on, at most :data:`CHECK_EXAMPLES`. Raises :class:`OnnxExportError` (nothing
    written) when the export fails or ONNX Runtime's outputs differ from PyTorch's by more than
    ``tolerance`` anywhere."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not isinstance(opset, int) or not 14 <= opset <= 23:
        raise OnnxExportError(f"opset {opset!r}: the dynamo exporter writes opsets 14 to 23 (default {DEFAULT_OPSET}).")
    if not texts or not texts[0]:
        raise OnnxExportError("no examples to check the graph on: give a file of the task (--check FILE).")
    data = json.loads((folder / "data.json").read_text()) if (folder / "data.json").is_file() else {}
    max_length = int(data.get("max_length", 128))
    batch_size = int(batch_size or data.get("eval_batch_size") or 32)
    n = min(len(texts[0]), CHECK_EXAMPLES)
    texts = [list(column[:n]) for column in texts]
    model = _Graph(load_exported(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    inputs = graph_inputs(folder)
    sample = encode(tokenizer, [c[:2] for c in texts], inputs, max_length)
    with atomic_path(folder / ONNX_FILE) as tmp:
        write_graph(model, sample, tmp, opset, exporter)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        worst = 0.0
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                part = encode(tokenizer, [c[start:start + batch_size] for c in texts], inputs, max_length)
                expected = model(*(part[k] for k in inputs)).float().numpy()
                got = session.run(None, {k: part[k].numpy() for k in inputs})[0]
                if got.shape != expected.shape:
                    raise OnnxExportError(f"ONNX Runtime gave shape {got.shape}, PyTorch {expected.shape}")
                diff = float(abs(got - expected).max()) if got.size else 0.0
                worst = max(worst, diff if math.isfinite(diff) else math.inf)
        if not worst <= tolerance:
            raise OnnxExportError(f"ONNX Runtime's outputs differ from PyTorch's by {worst:.3g} (> {tolerance:g}) "
                                  f"on {n} examples of the task: the graph is not kept.")
    meta = {"file": ONNX_FILE, "exporter": exporter, "opset": opset if exporter == "dynamo" else min(opset, 17), "inputs": inputs, "output": _output(folder),
            "dtype": "float32", "checked_examples": n, "max_abs_diff": worst, "tolerance": tolerance,
            "torch": torch.__version__, "onnxruntime": ort.__version__}
    write_json(folder / ONNX_META, meta)
    return meta


def _output(folder: Path) -> str:
    task = json.loads((Path(folder) / "task.json").read_text())
    if task.get("type") == "regression":
        return f"score in [{task['min']}, {task['max']}] (min + (max - min) * sigmoid(logit)), shape [batch]"
    return f"class logits, shape [batch, {task.get('num_labels')}]"
