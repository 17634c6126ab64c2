"""Opening a run directory: its config (created on first use, then the source of truth), the derived plan for
this world size, distributed set-up and provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from nanoforge.config import RunConfig, load_yaml, make_config, save_config
from nanoforge.errors import UserError
from nanoforge.plan import derive_plan
from nanoforge.train.distributed import barrier, init_distributed
from nanoforge.train.loop import RunContext


def resolve_config(run_dir: Path, preset: str | None, overrides: list[str], config_file: str | None) -> RunConfig:
    stored = run_dir / "config.yaml"
    if stored.exists():
        base = load_yaml(stored)
        if preset and preset != base.get("preset"):
            raise UserError(f"{run_dir} was created with preset '{base.get('preset')}', not '{preset}'; "
                            f"use another --run-dir or drop --preset")
        return make_config(None, overrides, base=base)
    base = load_yaml(Path(config_file)) if config_file else None
    return make_config(preset or "demo", overrides, base=base)


def open_run(args) -> RunContext:
    """Resolve the config for this world size; nothing is written until `commit_run` (bad input leaves no trace)."""
    run_dir = Path(args.run_dir).resolve()
    cfg = resolve_config(run_dir, args.preset, args.overrides, getattr(args, "config", None))
    d = init_distributed()
    plan = derive_plan(cfg, d.world_size)
    return RunContext(run_dir=run_dir, cfg=cfg, plan=plan, dist=d)


def commit_run(ctx: RunContext, stage: str) -> None:
    """Rank 0 writes config.yaml and provenance; the others wait so every rank trains the same config."""
    if ctx.dist.is_main:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(ctx.cfg, ctx.run_dir / "config.yaml")
        record_provenance(ctx, stage)
    barrier(ctx.dist)


def _git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def record_provenance(ctx: RunContext, stage: str) -> None:
    """provenance.json: what produced this run, per stage (git SHA, image digest, versions, world size, job ids)."""
    import numpy
    import torch

    from nanoforge import __version__

    path = ctx.run_dir / "provenance.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("stages", {})
    data["git_sha"] = os.environ.get("NANOFORGE_GIT_SHA") or _git_sha()
    data["image_sha256"] = os.environ.get("NANOFORGE_IMAGE_SHA256", "")
    entry = data["stages"].setdefault(stage, {"attempts": []})
    entry["attempts"].append({
        "started_at": time.time(),
        "host": platform.node(),
        "world_size": ctx.dist.world_size,
        "device": str(ctx.dist.device),
        "seed": ctx.cfg.train.seed,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", ""),
        "versions": {
            "nanoforge": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda or "",
        },
    })
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
