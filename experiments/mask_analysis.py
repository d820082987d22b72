"""Mask similarity between pruning strategies (IoU of kept / pruned weights vs random chance).

    python experiments/mask_analysis.py outputs/multirun/2024-01-01/12-00-00 --out mask_analysis

Thin wrapper over :func:`deepcuts.analysis.mask_iou.main`; see that module for the outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make ``deepcuts`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepcuts.analysis.mask_iou import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
