"""Run every benchmark (S1-S11, S13), one script at a time, each in its own process.

Writes ``results/<id>.json`` per target (the scripts do), then ``results/latest.json`` (all
targets, one machine record) and refreshes the results table in ``benchmarks/README.md``.

    .venv/bin/python benchmarks/run_all.py            # full run: ~6 minutes on 2 CPU cores (low load)
    .venv/bin/python benchmarks/run_all.py --quick    # smoke run: fewer batches and repetitions
    .venv/bin/python benchmarks/run_all.py --only S4,S7
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

# (script, arguments, ids it writes)
STEPS = [
    ("bench_scoring.py", ["--only", "S1,S2"], ["S1", "S2"]),
    ("bench_masks.py", ["--only", "S3"], ["S3"]),
    ("bench_masks.py", ["--only", "S4"], ["S4"]),
    ("bench_scoring.py", ["--only", "S6"], ["S6"]),
    ("bench_grid.py", [], ["S5"]),
    ("bench_data.py", [], ["S7"]),
    ("bench_precision.py", [], ["S8"]),
    ("bench_structured.py", [], ["S9"]),
    ("bench_compact.py", [], ["S10"]),
    ("bench_trace.py", [], ["S11"]),
    ("bench_onnx.py", [], ["S13"]),
]
ORDER = ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11", "S13"]
TABLE_START, TABLE_END = "<!-- results:start -->", "<!-- results:end -->"


def run_step(script: str, args: list[str], ids: list[str], quick: bool) -> dict:
    for i in ids:
        (C.RESULTS / f"{i}.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(C.BENCH / script), *args, *(["--quick"] if quick else [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(C.REPO), check=False)
    seconds = time.perf_counter() - t
    out = {}
    for i in ids:
        path = C.RESULTS / f"{i}.json"
        if path.is_file():
            out[i] = json.loads(path.read_text())
        else:
            out[i] = {"id": i, "what": f"{script} {' '.join(args)}", "measured": None, "target": None,
                      "met": False, "error": f"exit {proc.returncode}: {proc.stderr[-3000:]}"}
    for line in proc.stdout.splitlines():
        if line.startswith("[MET ]") or line.startswith("[MISS]"):
            print("   " + line, flush=True)
    print(f"   ({script} {' '.join(args)}: {seconds:.0f} s, exit {proc.returncode})", flush=True)
    return out


def compact(record: dict) -> dict:
    """A record for latest.json: everything but the per-job detail and the repeated machine info."""
    rec = {k: v for k, v in record.items() if k != "machine"}
    raw = dict(rec.get("raw") or {})
    raw.pop("jobs_last_rep", None)
    for child in ("train", "score"):
        if isinstance(raw.get(child), dict):
            raw[child] = {k: v for k, v in raw[child].items() if k != "data"}
    rec["raw"] = raw
    return rec


def fmt(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(latest: dict) -> str:
    m = latest["machine"]
    lines = [
        f"Last full run: {latest['timestamp']} ({'quick' if latest['quick'] else 'full'}, "
        f"{latest['total_seconds']:.0f} s). Machine: {m['platform']}, {m['cpus_usable']} usable CPU "
        f"cores, torch {m['torch']} ({m['torch_threads']} threads), device {m['device']}; load "
        f"average at the start {latest['loadavg_start']}, at the end {m.get('loadavg_at_end')}.",
        "",
        "| id | measured | target | met | what |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i in ORDER:
        r = latest["results"].get(i)
        if r is None:
            continue
        unit = " s" if r.get("unit") == "seconds" else ""
        extra = ""
        if i == "S4" and r.get("measured") is not None:
            extra = (f" (layer {r['layer_s']:.2f} s, global {r['global_s']:.2f} s; ×{r['ratio_vs_numpy_layer']:.1f} / "
                     f"×{r['ratio_vs_numpy_global']:.1f} numpy.quantile)")
        if i == "S5" and r.get("measured") is not None:
            extra = f" (stage-time ratio {r['stage_ratio']:.3f}; predicted {r['predicted_stage_ratio']:.3f}; ideal {r['ideal_ratio']:.3f})"
        if i == "S9" and r.get("measured") is not None:
            sp = {b: r["speedup"][f"batch_{b}"] for b in (1, 32)}
            extra = (f" (c=3: batch 1 ×{sp[1]['structured_c3']:.2f}, batch 32 ×{sp[32]['structured_c3']:.2f}; c=2: "
                     f"×{sp[1]['structured_c2']:.2f} / ×{sp[32]['structured_c2']:.2f}; unstructured CSR at c=3: "
                     f"×{sp[1]['unstructured_csr_c3']:.2f} / ×{sp[32]['unstructured_csr_c3']:.2f})")
        if i == "S10" and r.get("measured") is not None:
            sizes = ", ".join(f"×{v:.2f} at {k}" for k, v in r["compact_vs_dense"].items())
            extra = f" (masked part alone {r['masked_bound']:.3f}; compact / dense file {sizes})"
        target = r.get("target") or ""
        target = target.split(";")[0]
        lines.append(f"| {i} | {fmt(r.get('measured'))}{unit}{extra} | {target} | "
                     f"{'yes' if r.get('met') else '**no**'} | {r.get('what', '')} |")
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = C.BENCH / "README.md"
    if not readme.is_file():
        return
    body = readme.read_text()
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if pattern.search(body):
        readme.write_text(pattern.sub(lambda _: f"{TABLE_START}\n{text}\n{TABLE_END}", body))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Run the deepcuts benchmark suite (S1-S11).")
    p.add_argument("--quick", action="store_true", help="fewer batches and repetitions (smoke run)")
    p.add_argument("--only", default=",".join(ORDER), help="comma-separated ids")
    p.add_argument("--no-readme", action="store_true", help="do not refresh the README table")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    C.RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    results: dict = {}
    for script, sargs, ids in STEPS:
        if not only & set(ids):
            continue
        print(f"-- {', '.join(ids)}: {script} {' '.join(sargs)}", flush=True)
        results.update(run_step(script, sargs, ids, args.quick))
    total = time.perf_counter() - t0
    latest = {
        "timestamp": C.now(),
        "quick": args.quick,
        "total_seconds": round(total, 1),
        "loadavg_start": load_start,
        "machine": C.machine_info(),
        "summary": {i: {"measured": results[i].get("measured"), "target": results[i].get("target"),
                        "met": results[i].get("met")}
                    for i in ORDER if i in results},
        "results": {i: compact(results[i]) for i in ORDER if i in results},
    }
    (C.RESULTS / "latest.json").write_text(json.dumps(latest, indent=2, default=str) + "\n")
    text = table(latest)
    if not args.no_readme and only >= set(ORDER):
        update_readme(text)
    print("\n" + text + f"\n\nwrote {C.RESULTS / 'latest.json'} in {total:.0f} s", flush=True)
    return latest


if __name__ == "__main__":
    main()
