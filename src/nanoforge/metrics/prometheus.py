"""Prometheus metrics of one run on rank 0, and the three ways they leave the compute node:

- http: an endpoint on the compute node (port 0 picks a free one; <run_dir>/metrics/endpoint.json says which);
- textfile: <run_dir>/metrics/<stage>.prom rewritten atomically on shared storage, exposed for every run at
  once by `nanoforge metrics serve` on the login node (works where compute nodes cannot be reached);
- pushgateway: pushed to a Pushgateway.

Updating a metric is a dictionary lookup and a locked float store; textfile writes and pushes happen on a
background thread at most every `metrics.push_every_seconds`, so logging never waits for a file system or the
network. The registry is private to the exporter so two sinks in one process (tests, eval inside training) never
collide.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, pushadd_to_gateway, start_http_server
from prometheus_client.exposition import write_to_textfile

from nanoforge.config import MetricsConfig
from nanoforge.errors import UserError
from nanoforge.metrics.labels import LABEL_NAMES

STEP_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# values key from the training loop -> gauge name, help
TRAIN_GAUGES = {
    "loss": ("nanoforge_train_loss", "Training loss (cross-entropy, nats per token) at the last logged step"),
    "lr": ("nanoforge_learning_rate", "Learning rate (of the matrix parameters) at the last logged step"),
    "grad_norm": ("nanoforge_grad_norm", "Global gradient norm before clipping"),
    "tokens_per_second": ("nanoforge_tokens_per_second", "Training throughput over all ranks"),
    "mfu": ("nanoforge_mfu_ratio", "Model FLOPs utilization against the GPU's dense bf16 peak (0..1)"),
    "data_wait_seconds": ("nanoforge_data_wait_seconds", "Seconds the last step waited for its batch"),
    "memory_bytes": ("nanoforge_gpu_memory_bytes", "Peak accelerator memory allocated on rank 0"),
    "eta_seconds": ("nanoforge_eta_seconds", "Estimated seconds until the stage finishes"),
    "cost_usd": ("nanoforge_cost_usd", "Estimated cost of the run so far in US dollars"),
}
EVAL_GAUGES = {
    "val_bpb": ("nanoforge_val_bpb", "Validation bits per byte"),
    "core_score": ("nanoforge_core_score", "CORE benchmark score (centered accuracy, 0..1)"),
}


class PrometheusExporter:
    def __init__(self, mode: str, labels: dict[str, str], metrics_dir: Path, stage: str, mc: MetricsConfig,
                 total_steps: int | None = None):
        if mode not in ("http", "textfile", "pushgateway"):
            raise UserError(f"metrics.prometheus must be none, http, textfile or pushgateway, got '{mode}'")
        self.mode = mode
        self.labels = labels
        self.metrics_dir = Path(metrics_dir)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.mc = mc
        self.registry = CollectorRegistry()
        names = list(LABEL_NAMES)
        self._gauges = {key: Gauge(name, doc, names, registry=self.registry) for key, (name, doc) in TRAIN_GAUGES.items()}
        self._eval_gauges = {
            key: Gauge(name, doc, names, registry=self.registry) for key, (name, doc) in EVAL_GAUGES.items()
        }
        self._eval_other = Gauge("nanoforge_eval_value", "Other evaluation results by name", [*names, "metric"],
                                 registry=self.registry)
        self._step = Gauge("nanoforge_step", "Last logged optimizer step", names, registry=self.registry)
        self._last_step_time = Gauge("nanoforge_last_step_timestamp_seconds",
                                     "Unix time of the last logged step (alert when it stops moving)", names,
                                     registry=self.registry)
        # a finished stage stops stepping for good: alerts compare nanoforge_step with this to stay quiet
        self._total_steps = Gauge("nanoforge_total_steps", "Optimizer steps the stage will run", names,
                                  registry=self.registry)
        self.total_steps = total_steps
        self._tokens = Counter("nanoforge_tokens", "Tokens trained on in this stage", names, registry=self.registry)
        self._step_seconds = Histogram("nanoforge_step_seconds", "Wall-clock seconds per optimizer step", names,
                                       buckets=STEP_SECONDS_BUCKETS, registry=self.registry)
        self._children: dict[str, object] = {}  # label-bound children, created on first use
        self._tokens_seen = 0.0
        self._updated = False  # nothing is written before the first value exists
        self._closed = False

        self._server = None
        self._server_thread = None
        self.endpoint_path = self.metrics_dir / "endpoint.json"
        self.textfile_path = Path(mc.textfile) if mc.textfile else self.metrics_dir / f"{stage}.prom"
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._flusher = None
        self._push_error_reported = False
        if mode == "http":
            self._start_http()
        elif mc.push_every_seconds > 0:
            self._flusher = threading.Thread(target=self._flush_loop, name="nanoforge-metrics-flush", daemon=True)
            self._flusher.start()

    # --- updates (training thread) ---

    def _child(self, key: str, family, **extra_labels):
        child = self._children.get(key)
        if child is None:
            child = family.labels(**self.labels, **extra_labels)
            self._children[key] = child
        return child

    def train(self, step: int, values: dict[str, float], timestamp: float) -> None:
        for key, value in values.items():
            if key in self._gauges:
                self._child(key, self._gauges[key]).set(value)
        self._child("step", self._step).set(step)
        if values.get("total_steps"):
            self.total_steps = int(values["total_steps"])
        if self.total_steps:
            self._child("total_steps", self._total_steps).set(self.total_steps)
        self._child("last_step_time", self._last_step_time).set(timestamp)
        if "step_seconds" in values and math.isfinite(values["step_seconds"]):
            self._child("step_seconds", self._step_seconds).observe(values["step_seconds"])
        if "tokens_total" in values:
            # the loop reports the running total; a counter only goes up, so add what is new
            new = float(values["tokens_total"]) - self._tokens_seen
            if new > 0:
                self._child("tokens", self._tokens).inc(new)
                self._tokens_seen += new
        self._changed()

    def eval(self, step: int, values: dict[str, float], timestamp: float) -> None:
        for key, value in values.items():
            if key in self._eval_gauges:
                self._child("eval:" + key, self._eval_gauges[key]).set(value)
            else:
                self._child("eval_other:" + key, self._eval_other, metric=key).set(value)
        self._changed()

    def text(self, step: int, name: str, text: str, timestamp: float) -> None:
        pass  # samples are for people, not for time series

    # --- the ways out ---

    def _changed(self) -> None:
        self._updated = True
        if self.mode == "http":
            return  # scraped live
        if self._flusher is None:
            self.flush()  # push_every_seconds=0: every update goes out at once
        else:
            self._dirty.set()

    def flush(self) -> None:
        if self.mode == "textfile":
            write_to_textfile(str(self.textfile_path), self.registry)
        elif self.mode == "pushgateway":
            try:
                pushadd_to_gateway(self.mc.pushgateway_url, job="nanoforge", registry=self.registry,
                                   grouping_key={"run_id": self.labels["run_id"], "stage": self.labels["stage"]},
                                   timeout=5)
            except OSError as exc:  # a Pushgateway that is down must not stop training: say so once
                if not self._push_error_reported:
                    print(f"nanoforge: warning: push to {self.mc.pushgateway_url} failed ({exc}); "
                          "training goes on, metrics will be pushed again", file=sys.stderr, flush=True)
                    self._push_error_reported = True

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                break
            self._dirty.clear()
            try:
                self.flush()
            except OSError as exc:
                print(f"nanoforge: warning: writing metrics failed ({exc}); will retry", file=sys.stderr, flush=True)
                self._dirty.set()
            self._stop.wait(self.mc.push_every_seconds)

    def _start_http(self) -> None:
        addr = self.mc.http_addr
        try:
            self._server, self._server_thread = start_http_server(self.mc.http_port, addr=addr,
                                                                  registry=self.registry)
        except OSError as exc:
            raise UserError(
                f"cannot serve metrics on {addr}:{self.mc.http_port} ({exc.strerror or exc}); "
                "set metrics.http_port=0 to pick a free port"
            ) from None
        self.port = self._server.server_port
        # a wildcard bind is reachable by this node's name; a specific address by itself
        host = socket.getfqdn() if addr in ("0.0.0.0", "::", "") else addr
        endpoint = {
            "url": f"http://{host}:{self.port}/metrics",
            "target": f"{host}:{self.port}",
            "labels": self.labels,
            "pid": os.getpid(),
            "started": time.time(),
        }
        tmp = self.endpoint_path.with_suffix(f".json.{os.getpid()}")
        tmp.write_text(json.dumps(endpoint, indent=2) + "\n")
        os.replace(tmp, self.endpoint_path)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self.endpoint_path.unlink(missing_ok=True)
            return
        if self._flusher is not None:
            self._stop.set()
            self._dirty.set()
            self._flusher.join()
            self._flusher = None
        if not self._closed and self._updated:
            self._closed = True
            self.flush()  # the last values always land, whatever the throttle
