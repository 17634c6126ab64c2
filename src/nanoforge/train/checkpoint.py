"""Checkpoints: written to a temporary folder, checksummed, then renamed into place; the newest valid one wins.

Layout: <run_dir>/checkpoints/<stage>/step-NNNNNN/{model.pt, optim.pt, train_state.pt, meta.json}.
meta.json holds the step, the config, and the sha256 of every file; a folder whose files do not match is
damaged and skipped (with a warning) in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

DONE = "DONE"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "checkpoints" / stage


def is_done(run_dir: Path, stage: str) -> bool:
    return (stage_dir(run_dir, stage) / DONE).exists()


def mark_done(run_dir: Path, stage: str, summary: dict) -> None:
    path = stage_dir(run_dir, stage) / DONE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(run_dir: Path, stage: str, step: int, files: dict[str, object], meta: dict, keep: int) -> Path:
    root = stage_dir(run_dir, stage)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    checksums = {}
    for name, obj in files.items():
        torch.save(obj, tmp / name)
        checksums[name] = sha256_file(tmp / name)
    meta = {**meta, "step": step, "stage": stage, "saved_at": time.time(), "files": checksums}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(root, keep)
    return final


def _step_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if p.is_dir())


def _prune(root: Path, keep: int) -> None:
    for old in _step_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def verify(path: Path) -> dict:
    """Return meta.json if every file matches its checksum; raise ValueError naming what is wrong."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"meta.json unreadable ({exc.__class__.__name__})") from None
    for name, digest in meta.get("files", {}).items():
        file = path / name
        if not file.exists():
            raise ValueError(f"{name} is missing")
        if sha256_file(file) != digest:
            raise ValueError(f"{name} does not match its checksum")
    return meta


def latest_valid(run_dir: Path, stage: str, log=print) -> tuple[Path, dict] | None:
    for path in reversed(_step_dirs(stage_dir(run_dir, stage))):
        try:
            return path, verify(path)
        except ValueError as reason:
            log(f"warning: checkpoint {path} is damaged ({reason}); trying the previous one", file=sys.stderr)
    return None


def load_file(path: Path, name: str, device="cpu"):
    return torch.load(path / name, map_location=device, weights_only=False)
