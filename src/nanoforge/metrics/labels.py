"""The labels every metric of a run carries: which run, which stage, which SLURM job, which restart.

They are resolved once, when the sink starts, so a requeued job (same run, new restart count) shows up as a
new series instead of overwriting the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

LABEL_NAMES = ("run_id", "stage", "slurm_job_id", "restart")


def run_labels(run_dir: Path, stage: str, restart: int | None = None) -> dict[str, str]:
    """run_id: $NANOFORGE_RUN_ID or the run directory's name; restart: the loop's resume counter when it
    passes one, else $SLURM_RESTART_COUNT, else 0."""
    run_id = os.environ.get("NANOFORGE_RUN_ID") or Path(run_dir).resolve().name
    if restart is None:
        restart = os.environ.get("SLURM_RESTART_COUNT") or 0
    return {
        "run_id": run_id,
        "stage": stage,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "restart": str(restart),
    }
