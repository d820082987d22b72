"""Run an export folder's ONNX graph (:mod:`deepcuts.models.onnx`) with ONNX Runtime on the CPU.

What a deployment needs: ``onnxruntime``, ``numpy`` and ``transformers`` (its tokenizer only) —
no torch, no DeepCuts training stack; this module imports none of them (a test runs it with
torch blocked).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepcuts.config.errors import ConfigError
from deepcuts.data.batching import in_file_order, sorted_batches

ONNX_FILE, ONNX_META = "model.onnx", "onnx.json"  # as deepcuts.models.onnx writes them


def check_onnx(folder: Path) -> dict:
    """``onnx.json`` of an export folder with an ONNX graph; a clear error when there is none."""
    folder = Path(folder)
    missing = [n for n in (ONNX_FILE, ONNX_META) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"{folder} has no {', '.join(missing)}: export the graph first with "
                          f"python -m deepcuts.export --onnx {folder} (or run with save_model=onnx).")
    try:
        return json.loads((folder / ONNX_META).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{folder / ONNX_META} is not valid JSON: {err}") from None


class OnnxRunner:
    """An export's graph in an ONNX Runtime session, with the export's tokenizer."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = Path(folder)
        self.meta = check_onnx(folder)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(folder / ONNX_FILE), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's own error classes: a broken or foreign file
            raise ConfigError(f"{folder / ONNX_FILE} is not a graph ONNX Runtime can load ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); export it again.") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def outputs(self, texts: Sequence[Sequence[str]], batch_size: int, max_length: int) -> np.ndarray:
        """The graph's outputs (logits, or scores) for the examples (one list per text column),
        in file order, as float32; batches are length-sorted, so each pads only to similar lengths."""
        if not len(texts[0]):
            return np.zeros((0,), dtype=np.float32)
        encoded = self.tokenizer(*[list(c) for c in texts], truncation=True, max_length=max_length)
        features = [{k: encoded[k][i] for k in self.inputs} for i in range(len(texts[0]))]
        batches = sorted_batches([len(f["input_ids"]) for f in features], batch_size)
        out = []
        for rows in batches:
            enc = self.tokenizer.pad([features[i] for i in rows], return_tensors="np")
            feed = {k: np.asarray(enc[k], dtype=np.int64) for k in self.inputs}
            out.append(self.session.run(None, feed)[0].astype(np.float32))
        return in_file_order(np.concatenate(out), batches)
