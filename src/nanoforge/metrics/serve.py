"""`nanoforge metrics serve`: one Prometheus endpoint on the login node for every run under a runs folder.

Compute nodes write <run>/metrics/<stage>.prom atomically on shared storage; this reads the newest of them on
each scrape and exposes them together, so one scrape target covers every job, including nodes Prometheus cannot
reach. Samples keep the labels their run gave them; a file's samples missing run_id or stage get them from
the path. `nanoforge_metrics_staleness_seconds{run_id,stage}` says how old each file is, so a dead job shows up
as a growing number instead of a frozen one. Runs in http mode leave <run>/metrics/endpoint.json; those are
collected into a Prometheus file_sd target list when `--file-sd` is given.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from nanoforge.errors import UserError


def find_textfiles(runs_dir: Path) -> list[Path]:
    """<runs>/<run>/metrics/*.prom, plus <runs>/metrics/*.prom when the folder is itself one run. Only two
    levels are looked at: run folders hold checkpoints and data, and a scrape must stay fast."""
    runs_dir = Path(runs_dir)
    return sorted([*runs_dir.glob("*/metrics/*.prom"), *runs_dir.glob("metrics/*.prom")])


def find_endpoints(runs_dir: Path) -> list[Path]:
    runs_dir = Path(runs_dir)
    return sorted([*runs_dir.glob("*/metrics/endpoint.json"), *runs_dir.glob("metrics/endpoint.json")])


class RunsCollector:
    """A prometheus_client collector that re-exposes every run's textfile, merged by metric family."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = Path(runs_dir)
        self._warned: set[tuple[Path, float]] = set()

    def _read(self, path: Path) -> tuple[float, list[Metric]] | None:
        try:
            mtime = path.stat().st_mtime
            text = path.read_text(encoding="utf-8")
            return mtime, list(text_string_to_metric_families(text))
        except FileNotFoundError:
            return None  # a stage cleaned up between glob and read
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            # one bad file (hand-edited, another tool's) must not hide every other run; say so once per version
            key = (path, path.stat().st_mtime if path.exists() else 0.0)
            if key not in self._warned:
                self._warned.add(key)
                print(f"nanoforge: warning: skipping {path}: not a Prometheus text file ({exc})", file=sys.stderr)
            return None

    def collect(self):
        now = time.time()
        families: dict[tuple[str, str], Metric] = {}
        series: dict[tuple[str, str], dict[tuple, Sample]] = {}
        staleness = GaugeMetricFamily(
            "nanoforge_metrics_staleness_seconds",
            "Seconds since the run last rewrote its metrics textfile",
            labels=["run_id", "stage"],
        )
        files = []
        for path in find_textfiles(self.runs_dir):
            read = self._read(path)
            if read is not None:
                files.append((read[0], path, read[1]))
        files.sort(key=lambda item: item[0])  # oldest first: when two files give the same series, the newest wins
        for mtime, path, metrics in files:
            default_run = path.parent.parent.name
            default_stage = path.stem
            run_id = default_run
            for metric in metrics:
                if metric.name.endswith("_created"):
                    # creation times of counters/histograms: the text format writes them as separate gauges,
                    # which clash with their counter in OpenMetrics and say nothing a dashboard needs
                    continue
                key = (metric.name, metric.type)
                if key not in families:
                    families[key] = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                    series[key] = {}
                for sample in metric.samples:
                    labels = dict(sample.labels)
                    labels.setdefault("run_id", default_run)
                    labels.setdefault("stage", default_stage)
                    run_id = labels["run_id"]
                    series[key][(sample.name, tuple(sorted(labels.items())))] = sample._replace(labels=labels)
            staleness.add_metric([run_id, default_stage], max(0.0, now - mtime))
        for key, family in families.items():
            family.samples = list(series[key].values())
            yield family
        yield staleness


def write_file_sd(runs_dir: Path, out: Path) -> int:
    """Collect every live run's endpoint.json into one Prometheus file_sd target list; returns its size."""
    groups = []
    for path in find_endpoints(runs_dir):
        try:
            endpoint = json.loads(path.read_text())
            groups.append({"targets": [endpoint["target"]], "labels": dict(endpoint.get("labels", {}))})
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written or removed right now: the next round picks it up
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(tmp, out)  # Prometheus must never read half a target list
    return len(groups)


def serve(runs_dir: Path, host: str, port: int, file_sd: Path | None = None, file_sd_every: float = 10.0,
          stop: threading.Event | None = None, ready=None) -> None:
    """Serve until `stop` is set (or forever). `ready(port)` is called once the socket listens."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"runs folder {runs_dir} does not exist or is not a folder; pass the folder that holds "
                        "your run directories")
    if file_sd is not None and not Path(file_sd).parent.is_dir():
        raise UserError(f"--file-sd {file_sd}: folder {Path(file_sd).parent} does not exist; create it first")
    registry = CollectorRegistry()
    registry.register(RunsCollector(runs_dir))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    stop = stop or threading.Event()
    try:
        if ready is not None:
            ready(server.server_port)
        while not stop.is_set():
            if file_sd is not None:
                write_file_sd(runs_dir, Path(file_sd))
            stop.wait(file_sd_every)
    finally:
        server.shutdown()
        server.server_close()
