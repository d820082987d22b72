"""Put an analysis folder's figures and tables into one W&B run (offline unless WANDB_MODE says
otherwise), so reports and mask analyses sit beside the training runs in the dashboard: in the
group of the sweep they are written into, and saved beside that sweep's training runs."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from deepcuts.runtime.tracking import sweep_group


def sweep_of(folder: Path) -> Path | None:
    """The Hydra sweep folder (it holds ``multirun.yaml``) that ``folder`` is, or is inside."""
    folder = Path(folder).resolve()
    return next((p for p in (folder, *folder.parents) if (p / "multirun.yaml").is_file()), None)


def log_folder(folder: str | Path, job_type: str, project: str = "deepcuts") -> str:
    """Log every ``*.png`` as an image and every ``*.csv`` as a table; returns the run's folder.

    The group is ``WANDB_RUN_GROUP`` when set, else the sweep folder the analysis is in (a
    report's default ``--out`` is ``<sweep>/report``), as the training runs name it."""
    import wandb

    folder = Path(folder)
    sweep = sweep_of(folder)
    group = os.environ.get("WANDB_RUN_GROUP") or (sweep_group(sweep) if sweep is not None else None)
    run = wandb.init(
        project=project, job_type=job_type, name=f"{job_type}-{folder.name}", group=group,
        mode=os.environ.get("WANDB_MODE", "offline"), dir=os.environ.get("WANDB_DIR") or str(sweep or "outputs"),
        config={"folder": str(folder.resolve())}, reinit="finish_previous",
    )
    try:
        payload = {f"{job_type}/{p.stem}": wandb.Image(str(p)) for p in sorted(folder.glob("*.png"))}
        payload.update({f"{job_type}/{p.stem}": wandb.Table(dataframe=pd.read_csv(p)) for p in sorted(folder.glob("*.csv"))})
        run.log(payload)
        return str(run.dir)
    finally:
        run.finish()
