"""Remake every committed report under docs/results/ from the committed runs, with today's code.

    python docs/results/regenerate.py

Run from the repository root. Reports are rewritten in place; only the run folders (results.json
+ config.yaml; the masks are not committed, so report.html has no mask-overlap heatmaps) are read.
Two early folders kept their runs as one results.json list; they are first written out as
``runs/<strategy>_r<ratio>_s<seed>/results.json`` (once), so that they are run folders like the rest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent
REPO = RESULTS.parents[1]

COMMANDS = [
    ["experiments/report.py", "docs/results/study_cpu/runs", "--out", "docs/results/study_cpu"],
    ["experiments/report.py", "docs/results/scores_cpu/runs", "--out", "docs/results/scores_cpu"],
    ["experiments/report.py", "docs/results/structured_cpu/runs", "--out", "docs/results/structured_cpu",
     "--pair-by", "structure.kind=none", "--baselines", "layer_mag_weight"],
    ["experiments/report.py", "docs/results/minilm_stsb_h200/runs", "--out", "docs/results/minilm_stsb_h200"],
    ["experiments/report.py", "docs/results/minilm_stsb_cpu_seed1/runs", "--out",
     "docs/results/minilm_stsb_cpu_seed1"],
    ["experiments/recovery_table.py", "docs/results/recovery_cpu/runs", "--out", "docs/results/recovery_cpu",
     "--target", "cola=0.85", "--target", "stsb=0.97"],
    ["experiments/recovery_table.py", "docs/results/recovery_cpu/runs/cola_long", "--out",
     "docs/results/recovery_cpu/long", "--reference", "single_shot_4ep", "--target", "cola=0.85"],
]


def expand(folder: Path) -> None:
    """``folder/results.json`` (a list of runs) -> ``folder/runs/<job>/results.json``, once."""
    runs = folder / "runs"
    if runs.is_dir():
        return
    for res in json.loads((folder / "results.json").read_text()):
        job = runs / f"{res['strategy']}_r{float(res['ratio']):g}_s{res['seed']}"
        job.mkdir(parents=True)
        (job / "results.json").write_text(json.dumps({"status": "complete", **res}, indent=1, sort_keys=True) + "\n")


def main() -> int:
    for name in ("minilm_stsb_h200", "minilm_stsb_cpu_seed1"):
        expand(RESULTS / name)
    for command in COMMANDS:
        print("$ python " + " ".join(command), flush=True)
        subprocess.run([sys.executable, *command], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
