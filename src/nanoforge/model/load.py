"""Loading a trained model from a run directory: the newest valid checkpoint of a stage, with its config."""

from __future__ import annotations

from pathlib import Path

import torch

from nanoforge.config import RunConfig, make_config
from nanoforge.errors import UserError
from nanoforge.model.gpt import GPT, GPTConfig
from nanoforge.train import checkpoint as ckpt

STAGE_ORDER = ("sft", "mid", "base")


def newest_stage(run_dir: Path) -> str:
    """The most trained stage that has a checkpoint (sft, then mid, then base)."""
    for stage in STAGE_ORDER:
        if ckpt.latest_valid(run_dir, stage, log=lambda *a, **k: None):
            return stage
    raise UserError(f"no trained model in {run_dir}; run: nanoforge pipeline --preset demo --run-dir {run_dir}")


def load_model(run_dir: Path, stage: str | None = None, device: str | torch.device = "cpu") -> tuple[GPT, RunConfig, dict]:
    run_dir = Path(run_dir)
    stage = stage or newest_stage(run_dir)
    found = ckpt.latest_valid(run_dir, stage)
    if found is None:
        raise UserError(f"no valid checkpoint of stage '{stage}' in {run_dir}; run: nanoforge {stage} --run-dir {run_dir}")
    path, meta = found
    cfg = make_config(None, None, base=meta["config"])
    model = GPT(GPTConfig.from_model_config(cfg.model))
    model.load_state_dict(ckpt.load_file(path, "model.pt", "cpu"))
    model.to(device).eval()
    return model, cfg, {**meta, "path": str(path), "stage": stage}


def load_tokenizer(run_dir: Path):
    from nanoforge.tokenizer.bpe import Tokenizer

    tok_dir = Path(run_dir) / "tokenizer"
    if not (tok_dir / "DONE").exists():
        raise UserError(f"no trained tokenizer in {tok_dir}; run: nanoforge tokenizer train --run-dir {run_dir}")
    return Tokenizer.load(tok_dir)
