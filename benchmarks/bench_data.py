"""S7: the tokenised-data cache. SST-2 (67,349 train + 872 dev sentences, the MiniLM tokenizer):
``GlueDataModule.setup()`` with a fresh ``cache_dir``, then again -- in a new process, as a
second job would -- with the same ``cache_dir``. Only ``setup()`` is timed (imports and the
tokenizer load are not). Each process gets an empty ``HF_DATASETS_CACHE`` of its own, so the
first run really parses and tokenises (datasets' own csv/map caches would otherwise make a
"first" run warm) and the second is served by deepcuts' cache alone.

    .venv/bin/python benchmarks/bench_data.py [--quick]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def child(cache_dir: str) -> None:
    from omegaconf import OmegaConf

    from deepcuts.data.glue import GlueDataModule
    from deepcuts.models.module import load_tokenizer

    cfg = C.compose("data=sst2", "model=minilm", f"cache_dir={cache_dir}", f"output_dir={cache_dir}/run")
    tok = load_tokenizer(cfg.model.tokenizer)
    data = GlueDataModule(tok, **OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed)
    t = time.perf_counter()
    data.setup()
    seconds = time.perf_counter() - t
    C.child_report({
        "setup_s": seconds, "train": len(data.splits["train"]), "eval": len(data.splits["eval"]),
        "cache_dir": str(cfg.data.cache_dir),
    })


def run_child(cache_dir: Path, hf_cache: Path) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": str(hf_cache), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    return C.run_child(__file__, "--child", str(cache_dir), env=env)


def bench_s7(quick: bool) -> dict:
    reps = 1 if quick else 3
    C.TMP.mkdir(parents=True, exist_ok=True)
    first, second = [], []
    for _ in range(reps):
        root = Path(tempfile.mkdtemp(dir=C.TMP, prefix="s7-"))
        try:
            first.append(run_child(root / "cache", root / "hf1"))
            second.append(run_child(root / "cache", root / "hf2"))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    t1 = [r["setup_s"] for r in first]
    t2 = [r["setup_s"] for r in second]
    ratio = C.median(t2) / C.median(t1)
    return C.result(
        "S7", "tokenised-data cache: second GlueDataModule.setup() / first (SST-2 train+dev, "
        "fresh cache_dir, then the same cache_dir from a new process)",
        ratio, "<= 0.2", ratio <= 0.2,
        raw={"first_setup_s": C.summary(t1), "second_setup_s": C.summary(t2), "reps": reps,
             "rows": {"train": first[0]["train"], "eval": first[0]["eval"]}},
    )


def main(argv=None) -> list[dict]:
    args = C.parse_common(argv, lambda p: p.add_argument("--child"))
    if args.child:
        child(args.child)
        return []
    results = [bench_s7(args.quick)]
    C.emit(results, write=not args.no_write)
    return results


if __name__ == "__main__":
    main()
