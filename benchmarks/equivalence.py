"""Masks and metrics of a fixed set of tiny runs, to compare two versions of the code.

Run through the command line only (``train.py``), so the same script works on any version:

    python benchmarks/equivalence.py OUT.json            # record
    python benchmarks/equivalence.py NEW.json --against OLD.json   # record and compare

Each config runs with its own fresh cache; the record holds, per config, the dev metrics of the
dense and pruned models, the kept count, and a sha256 of every mask tensor (masks.safetensors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "data.max_train_samples=48", "data.max_eval_samples=32", "data.batch_size=8",
        "epochs_dense=1", "epochs_final=1", "scoring.batches=3", "+trainer.enable_progress_bar=false",
        "logger.wandb.enabled=false", "data=stsb"]
CONFIGS = {
    "magnitude": ["strategy=layer_mag_weight"],
    "gradcam_shift": ["strategy=gradcam_shift"],
    "global_smoothgrad": ["strategy=global_smoothgrad", "strategy.eta=2"],
    "snip": ["strategy=snip"],
    "movement": ["strategy=movement"],
    "wanda": ["strategy=wanda"],
    "shuffled": ["strategy=shuffled"],
    "structured": ["strategy=gradcam_shift", "structure=heads_neurons", "keep_fraction=0.5"],
    "kshot_distill_rewind": ["strategy=layer_mag_grad", "shots=2", "distill.alpha=0.5", "rewind=step:2",
                             "epochs_dense=2"],
    "holdout": ["strategy=taylor", "selection=holdout", "epochs_final=2"],
    "cola": ["data=cola", "strategy=gradcam", "keep_fraction=0.5"],
}


def sha(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16]
            for k, v in sorted(load_file(str(path)).items())}


def record(names: list[str]) -> dict:
    out = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            cmd = [sys.executable, "train.py", *TINY, *CONFIGS[name], f"output_dir={run}",
                   f"cache_dir={Path(tmp) / 'cache'}", f"hydra.run.dir={Path(tmp) / 'hydra'}"]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode:
                out[name] = {"error": proc.stderr[-2000:]}
                continue
            res = json.loads((run / "results.json").read_text())
            masks = next((p for p in (run / "masks.safetensors", run / "masks") if p.exists()), None)
            out[name] = {"dense": res.get("dense"), "pruned": res.get("pruned"), "kept": res.get("kept_prunable"),
                         "rounds": [r.get("dev") for r in (res.get("recipe") or {}).get("rounds", [])],
                         "masks": sha(masks) if masks and masks.is_file() else None}
        print(name, "ok" if "error" not in out[name] else "ERROR", flush=True)
    return out


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--against")
    p.add_argument("--only", nargs="*")
    args = p.parse_args()
    rec = record(args.only or list(CONFIGS))
    Path(args.out).write_text(json.dumps(rec, indent=2, sort_keys=True))
    if args.against:
        old = json.loads(Path(args.against).read_text())
        for name, new in rec.items():
            verdict = "identical" if same(new, old.get(name)) else "DIFFERENT"
            print(f"{name}: {verdict}")


if __name__ == "__main__":
    main()
