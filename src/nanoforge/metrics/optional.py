"""Weights & Biases and TensorBoard, used only when a run asks for them and the package is installed.

Neither is a dependency of nanoforge; asking for one that is missing fails at start-up with the install line,
not hours into a run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nanoforge.errors import UserError


def _require(module: str, key: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{key}=true but {package} is not installed; pip install {package} or set {key}=false")


class TensorBoardWriter:
    def __init__(self, log_dir: Path):
        _require("tensorboard", "metrics.tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def train(self, step, values, timestamp):
        for name, value in values.items():
            self._writer.add_scalar(f"train/{name}", value, step, walltime=timestamp)

    def eval(self, step, values, timestamp):
        for name, value in values.items():
            self._writer.add_scalar(f"eval/{name}", value, step, walltime=timestamp)

    def text(self, step, name, text, timestamp):
        self._writer.add_text(name, text, step, walltime=timestamp)

    def close(self):
        self._writer.close()


class WandbWriter:
    def __init__(self, run_dir: Path, labels: dict[str, str], config: dict):
        _require("wandb", "metrics.wandb", "wandb")
        import wandb

        # one wandb run per (run, stage); resume="allow" continues it after a requeue
        run_name = f"{labels['run_id']}-{labels['stage']}"
        self._run = wandb.init(project="nanoforge", name=run_name, id=run_name, resume="allow",
                               dir=str(run_dir), config=config, tags=[labels["stage"]])

    def train(self, step, values, timestamp):
        self._run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def eval(self, step, values, timestamp):
        self._run.log({f"eval/{k}": v for k, v in values.items()}, step=step)

    def text(self, step, name, text, timestamp):
        pass  # samples go to stdout and JSONL

    def close(self):
        self._run.finish()
