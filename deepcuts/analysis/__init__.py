"""Analysis of finished runs, built only from the outputs contract of the run folders.

Computation (no files written, no torch except the mask reader): :mod:`.runs` (the run table every
analysis starts from: run folders, results.json and config.yaml, sweep keys), :mod:`.keys` (values
and grouping), :mod:`.stats` (paired intervals), :mod:`.compare` (the one pairing rule: by seed and
by dense model), :mod:`.summary`, :mod:`.timing`, :mod:`.recovery`, :mod:`.mask_iou`,
:mod:`.reference`. Rendering and writing: :mod:`.render`.
"""
