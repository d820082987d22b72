"""Put an analysis folder's figures and tables into one W&B run (offline unless WANDB_MODE says
otherwise), so reports and mask analyses sit beside the training runs in the dashboard."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def log_folder(folder: str | Path, job_type: str, project: str = "deepcuts") -> str:
    """Log every ``*.png`` as an image and every ``*.csv`` as a table; returns the run's folder."""
    import wandb

    folder = Path(folder)
    run = wandb.init(
        project=project, job_type=job_type, name=f"{job_type}-{folder.name}",
        mode=os.environ.get("WANDB_MODE", "offline"), dir=os.environ.get("WANDB_DIR", "outputs"),
        config={"folder": str(folder.resolve())}, reinit="finish_previous",
    )
    try:
        payload = {f"{job_type}/{p.stem}": wandb.Image(str(p)) for p in sorted(folder.glob("*.png"))}
        payload.update({f"{job_type}/{p.stem}": wandb.Table(dataframe=pd.read_csv(p)) for p in sorted(folder.glob("*.csv"))})
        run.log(payload)
        return str(run.dir)
    finally:
        run.finish()
