"""PNG plots for the report: per stage, training loss and each evaluation metric (validation bpb for base)
against step and against wall-clock time. matplotlib with the Agg backend: no display needed on a cluster node."""

from __future__ import annotations

import re
from pathlib import Path

from nanoforge.report.collect import StageRecord, series


TITLES = {"val_bpb": "validation bits per byte", "val_loss": "validation loss"}


def _metric_figure(stage: StageRecord, events: list[dict], key: str, title: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps, times, values = series(events, key)
    if not values:
        return False
    start = min(e["time"] for e in stage.train + stage.evals)
    minutes = [(t - start) / 60 for t in times]
    by_step = dict(zip(steps, values))  # the newest value of each step (after a resume)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    marker = "o" if len(values) < 30 else None
    left.plot(sorted(by_step), [by_step[s] for s in sorted(by_step)], marker=marker, markersize=3)
    left.set_xlabel("step")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.plot(minutes, values, marker=marker, markersize=3, color="tab:orange")
    right.set_xlabel("wall-clock time since the stage started (minutes)")
    for ax in (left, right):
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{stage.name}: {title}")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return True


def stage_plots(stage: StageRecord, out_dir: Path) -> list[tuple[str, str]]:
    """Write the stage's PNGs into out_dir; (caption, file name) for each one written."""
    written = []
    name = f"{stage.name}_loss.png"
    if _metric_figure(stage, stage.train, "loss", "training loss", out_dir / name):
        written.append((f"{stage.name}: training loss", name))
    keys = sorted({k for e in stage.evals for k, v in e.get("values", {}).items() if v is not None})
    for key in keys:
        name = f"{stage.name}_{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.png"
        title = TITLES.get(key, key)
        if _metric_figure(stage, stage.evals, key, title, out_dir / name):
            written.append((f"{stage.name}: {title}", name))
    return written
