"""Remake every committed report under docs/results/ from the committed runs, with today's code.

    python docs/results/regenerate.py

Run from the repository root. Reports are rewritten in place; only the run folders (results.json
+ config.yaml; the masks are not committed, so report.html has no mask-overlap heatmaps) are read.
The two early MiniLM STS-B folders kept their runs as one results.json list until issue 22; that
list was written out once as ``runs/<strategy>_r<ratio>_s<seed>/results.json``, so that they are
run folders like the rest (the H200 runs predate results.json's ``ratio_basis`` and ``monitor``:
``bert_base`` and ``pearson`` were filled in, as their README states).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

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


def main() -> int:
    for command in COMMANDS:
        print("$ python " + " ".join(command), flush=True)
        subprocess.run([sys.executable, *command], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
