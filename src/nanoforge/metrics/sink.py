"""The metrics sink: the one object every training stage reports to, on rank 0, every `train.log_every` steps.

It fans each event out to the stdout line, <run_dir>/metrics/<stage>.jsonl, Prometheus (http, textfile or
pushgateway, per `metrics.prometheus`) and, when asked for, wandb or TensorBoard. On other ranks the same
constructor gives an object whose methods do nothing, so the loop needs no `if rank == 0` around each call.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from nanoforge.config import RunConfig
from nanoforge.metrics.labels import run_labels


def _total_steps(cfg: RunConfig) -> int | None:
    if cfg.train.num_iterations > 0:
        return cfg.train.num_iterations
    try:
        from nanoforge.plan import derive_plan

        return derive_plan(cfg, int(os.environ.get("WORLD_SIZE", "0")) or None).steps
    except Exception:  # the step count is decoration for the stdout line; never fail a run over it
        return None


class MetricsSink:
    def __init__(self, run_dir: Path, stage: str, cfg: RunConfig, rank: int = 0, restart: int | None = None,
                 total_steps: int | None = None, stream=None):
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.labels = run_labels(self.run_dir, stage, restart)
        self._outputs = []
        self._closed = False
        if rank != 0:
            return
        from nanoforge.metrics.jsonl import JsonlWriter
        from nanoforge.metrics.stdout import StdoutWriter

        mc = cfg.metrics
        metrics_dir = self.run_dir / "metrics"
        total_steps = total_steps or _total_steps(cfg)
        self._outputs.append(StdoutWriter(total_steps, stream=stream))
        self._outputs.append(JsonlWriter(metrics_dir / f"{stage}.jsonl", self.labels))
        try:
            if mc.prometheus != "none":
                from nanoforge.metrics.prometheus import PrometheusExporter

                self.prometheus = PrometheusExporter(mc.prometheus, self.labels, metrics_dir, stage, mc,
                                                     total_steps)
                self._outputs.append(self.prometheus)
            if mc.tensorboard:
                from nanoforge.metrics.optional import TensorBoardWriter

                self._outputs.append(TensorBoardWriter(metrics_dir / "tensorboard" / stage))
            if mc.wandb:
                from nanoforge.metrics.optional import WandbWriter

                self._outputs.append(WandbWriter(self.run_dir, self.labels, cfg.to_dict()))
        except BaseException:
            self.close()  # leave no server or thread behind when a later output cannot start
            raise

    def log(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        for out in self._outputs:
            out.train(step, values, now)

    def log_eval(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        for out in self._outputs:
            out.eval(step, values, now)

    def log_text(self, step: int, name: str, text: str) -> None:
        now = time.time()
        for out in self._outputs:
            out.text(step, name, text, now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for out in reversed(self._outputs):
            out.close()

    def __enter__(self) -> "MetricsSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
