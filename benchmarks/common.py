"""Shared helpers for the benchmark scripts: timing, medians, machine info, result JSON, and the
MiniLM + real-GLUE setup that S1-S3 and S6 share.

Every target is a *ratio* measured within one process run on one machine, so the absolute speed
of the machine cancels out; a (baseline, candidate) pair is always measured interleaved, rep by
rep, so that load from other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
TMP = RESULTS / "tmp"  # git-ignored: data caches, run folders
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

QUIET_TRAINER = {"enable_progress_bar": False, "accelerator": "cpu"}


# -- timing -------------------------------------------------------------------------------------
def sync(device: Any = None) -> None:
    import torch

    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any = None) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (CUDA synchronised on both ends when on a GPU)."""
    gc.collect()
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def summary(xs: list[float]) -> dict:
    return {
        "median": median(xs),
        "min": float(min(xs)),
        "max": float(max(xs)),
        "runs": [round(float(x), 6) for x in xs],
    }


def interleaved(
    pairs: dict[str, Callable[[], Any]], reps: int, warmup: int = 1, device: Any = None
) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, alternating them (a, b, a, b, ...; the order flips every
    rep) after ``warmup`` untimed calls of each; returns the list of seconds per name."""
    names = list(pairs)
    for _ in range(warmup):
        for name in names:
            pairs[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            times[name].append(timed(pairs[name], device)[0])
    return times


def ratio_of_medians(times: dict[str, list[float]], num: str, den: str, scale: float = 1.0) -> float:
    return median(times[num]) / (scale * median(times[den]))


# -- machine and results ------------------------------------------------------------------------
def machine_info(device: str = "cpu") -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }
    try:
        import pytorch_lightning
        import transformers

        info["transformers"] = transformers.__version__
        info["pytorch_lightning"] = pytorch_lightning.__version__
    except ImportError:  # pragma: no cover
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(OSError):
        load = os.getloadavg()
        info["loadavg_at_end"] = [round(x, 2) for x in load]
    return info


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def result(
    id: str, what: str, measured: float, target: str, met: bool, raw: dict, device: str = "cpu", **extra
) -> dict:
    """One target's record, in the schema every ``results/<id>.json`` shares."""
    return {
        "id": id,
        "what": what,
        "measured": round(float(measured), 4),
        "target": target,
        "met": bool(met),
        **extra,
        "raw": raw,
        "machine": machine_info(device),
        "timestamp": now(),
    }


def write_result(res: dict, folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{res['id']}.json"
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return path


def emit(results: list[dict], write: bool = True) -> None:
    """Write each record to results/<id>.json and print a one-line summary per target."""
    for res in results:
        if write:
            write_result(res)
        flag = "MET " if res["met"] else "MISS"
        print(f"[{flag}] {res['id']}: {res['measured']:.4g} (target {res['target']}) -- {res['what']}", flush=True)


# -- measurements in a fresh process ----------------------------------------------------------
CHILD_TAG = "BENCHJSON "


def child_report(data: dict) -> None:
    """Hand a child process's measurement to ``run_child`` (one tagged line on stdout)."""
    print(CHILD_TAG + json.dumps(data), flush=True)


def run_child(script: str, *args: str, env: dict | None = None) -> dict:
    """Run ``script`` in a fresh interpreter and return what it gave ``child_report``."""
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, cwd=str(REPO),
        env=env, check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    raise RuntimeError(f"{Path(script).name} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# -- the shared MiniLM + GLUE setup -------------------------------------------------------------
def compose(*overrides: str):
    """``conf/train.yaml`` composed like tests/conftest.py does, plus ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def minilm_setup(task: str = "sst2", n_batches: int = 8, max_train_samples: int = 2048, seed: int = 0):
    """The pipeline's own MiniLM GlueModel (``pipeline.build_model``), its prunable set, and
    ``n_batches`` real batches of 32 from the seeded scoring loader (the batches the pipeline's
    scoring pass would see first). The tokenised subset is cached under results/tmp."""
    from omegaconf import OmegaConf

    from deepcuts.data.glue import GlueDataModule
    from deepcuts.models.module import build_model, load_tokenizer
    from deepcuts.pruning import budget as B

    cfg = compose(
        f"data={task}", "model=minilm", f"seed={seed}", "data.batch_size=32",
        f"data.max_train_samples={max_train_samples}", "data.max_eval_samples=64",
        f"cache_dir={TMP / 'cache'}", f"output_dir={TMP / 'run'}",
    )
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tok)
    prunable = B.prunable_parameters(model, cfg.prune.include, cfg.prune.get("exclude", []))
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed)
    data.setup()
    batches = []
    for batch in data.scoring_dataloader(cfg.seed):
        batches.append(dict(batch))
        if len(batches) == n_batches:
            break
    return cfg, model, prunable, batches


def batch_loader(batches: list[dict]):
    """A DataLoader that yields exactly these (already collated) batches, in order."""
    from torch.utils.data import DataLoader

    return DataLoader(batches, batch_size=None, shuffle=False)


def tokens(batches: list[dict]) -> dict:
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    return {
        "batches": len(batches),
        "batch_shapes": shapes,
        "real_tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
        "padded_tokens": int(sum(s[0] * s[1] for s in shapes)),
    }


def prunable_bytes(prunable: dict) -> int:
    return int(sum(p.numel() * p.element_size() for p in prunable.values()))


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Silence Lightning's info banners ("GPU available: False", ...) while timing."""
    import logging
    import warnings

    import pytorch_lightning  # noqa: F401  (creates its loggers, which set their own levels)

    prefixes = ("pytorch_lightning", "lightning", "lightning_fabric", "deepcuts")
    names = [n for n in [*prefixes, *logging.root.manager.loggerDict] if n.startswith(prefixes)]
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for n, level in old.items():
                logging.getLogger(n).setLevel(level)


def parse_common(argv: list[str] | None = None, extra: Callable | None = None):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer batches / repetitions (smoke run)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results/*.json")
    if extra:
        extra(p)
    return p.parse_args(argv)


def plain_fwd_bwd(model, batches, passes: int = 1) -> None:
    """The baseline: full-model fwd+bwd, all parameters requiring grad, eval mode."""
    mode = model.training
    model.eval()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        for _ in range(passes):
            model.loss(batch).backward()
    model.zero_grad(set_to_none=True)
    model.train(mode)
