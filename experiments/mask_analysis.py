"""Mask similarity between pruning strategies (IoU of kept / pruned weights vs random chance).

    python experiments/mask_analysis.py outputs/multirun/2024-01-01/12-00-00 --out mask_analysis

Thin wrapper over :func:`deepcuts.analysis.render.masks.main`; see that module (figures, summary)
and :mod:`deepcuts.analysis.mask_iou` (what is compared with what) for the outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make ``deepcuts`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepcuts.analysis.render.masks import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
