"""The metrics sink and its outputs: stdout line, JSONL, Prometheus textfile/HTTP, `metrics serve`, deploy files."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import missing_infrastructure

from nanoforge.config import make_config
from nanoforge.errors import UserError
from nanoforge.metrics.jsonl import read_events
from nanoforge.metrics.serve import RunsCollector, serve, write_file_sd
from nanoforge.metrics.sink import MetricsSink
from nanoforge.metrics.stdout import format_duration, format_train_line

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DEPLOY = REPO / "deploy" / "prometheus"

TRAIN_VALUES = {
    "loss": 4.1234, "lr": 0.02, "grad_norm": 0.812, "tokens_per_second": 12345.0, "mfu": 0.123,
    "step_seconds": 0.21, "data_wait_seconds": 0.0012, "memory_bytes": 1.2e9, "tokens_total": 983040,
    "eta_seconds": 130.0,
}


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_infrastructure(f"{name} (apt-get install -y --no-install-recommends prometheus)")
    return path


def parse_prom(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels) -> float:
    hits = [v for (n, lab), v in samples.items() if n == name and all(dict(lab).get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def make_sink(run_dir: Path, *overrides: str, stage: str = "base", **kwargs) -> tuple[MetricsSink, io.StringIO]:
    out = io.StringIO()
    cfg = make_config("demo", list(overrides))
    return MetricsSink(run_dir, stage, cfg, stream=out, **kwargs), out


# --- stdout ----------------------------------------------------------------------------------------------------


def test_stdout_line_is_the_documented_one_liner():
    line = format_train_line(120, 400, TRAIN_VALUES)
    assert line == ("step 120/400 | loss 4.1234 | lr 2.0e-02 | grad 0.812 |  12,345 tok/s | MFU 12.3% |  210 ms/step"
                    " | data  1.2 ms | mem 1.2 GB | ETA 2m10s")


def test_stdout_lines_align_across_steps_and_leave_out_missing_values():
    first = format_train_line(5, 400, TRAIN_VALUES)
    later = format_train_line(395, 400, {**TRAIN_VALUES, "tokens_per_second": 98765.4, "step_seconds": 0.05})
    assert [i for i, ch in enumerate(first) if ch == "|"] == [i for i, ch in enumerate(later) if ch == "|"]
    assert format_train_line(7, None, {"loss": 2.5}) == "step 7 | loss 2.5000"


@pytest.mark.parametrize("seconds, text", [(45, "45s"), (130, "2m10s"), (3 * 3600 + 5 * 60, "3h05m"),
                                           (26 * 3600, "1d02h"), (math.inf, "?")])
def test_eta_is_compact(seconds, text):
    assert format_duration(seconds) == text


# --- sink fan-out: JSONL + textfile ------------------------------------------------------------------------------


def test_sink_writes_jsonl_and_textfile_with_run_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("NANOFORGE_RUN_ID", raising=False)
    run_dir = tmp_path / "run-7"
    sink, out = make_sink(run_dir, "metrics.push_every_seconds=0", restart=2)
    sink.log(120, TRAIN_VALUES)
    sink.log(121, {**TRAIN_VALUES, "loss": float("nan"), "tokens_total": 991232})
    sink.log_eval(121, {"val_bpb": 1.25, "hellaswag": 0.3})
    sink.log_text(121, "sample", "The capital of France is")
    sink.close()

    labels = {"run_id": "run-7", "stage": "base", "slurm_job_id": "4242", "restart": "2"}
    events = read_events(run_dir / "metrics" / "base.jsonl")
    assert [e["kind"] for e in events] == ["train", "train", "eval", "text"]
    assert all(e["labels"] == labels for e in events)
    assert events[0]["step"] == 120 and events[0]["values"]["tokens_per_second"] == 12345.0
    assert events[1]["values"]["loss"] is None  # NaN stays valid JSON
    assert events[2]["values"] == {"val_bpb": 1.25, "hellaswag": 0.3}
    assert events[3]["text"] == "The capital of France is" and events[3]["name"] == "sample"

    samples = parse_prom((run_dir / "metrics" / "base.prom").read_text())
    assert math.isnan(sample(samples, "nanoforge_train_loss", **labels))
    assert sample(samples, "nanoforge_tokens_per_second", **labels) == 12345.0
    assert sample(samples, "nanoforge_mfu_ratio", **labels) == 0.123
    assert sample(samples, "nanoforge_step", **labels) == 121
    total = make_config("demo").train.num_iterations
    assert sample(samples, "nanoforge_total_steps", **labels) == total  # the demo preset's length
    assert sample(samples, "nanoforge_tokens_total", **labels) == 991232  # a counter of the running total
    assert sample(samples, "nanoforge_step_seconds_count", **labels) == 2
    assert sample(samples, "nanoforge_gpu_memory_bytes", **labels) == 1.2e9
    assert sample(samples, "nanoforge_val_bpb", **labels) == 1.25
    assert sample(samples, "nanoforge_eval_value", metric="hellaswag") == 0.3
    assert time.time() - sample(samples, "nanoforge_last_step_timestamp_seconds", **labels) < 60

    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"step 120/{total} | loss 4.1234")
    assert lines[2] == f"step 121/{total} | eval | val_bpb 1.2500 | hellaswag 0.3000"
    assert lines[3:] == [f"step 121/{total} | sample:", "The capital of France is"]


def test_run_id_and_restart_come_from_the_environment_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOFORGE_RUN_ID", "speedrun-1")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    sink, _ = make_sink(tmp_path / "whatever", "metrics.prometheus=none")
    assert sink.labels == {"run_id": "speedrun-1", "stage": "base", "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
                           "restart": "3"}
    sink.close()


def test_textfile_writes_are_throttled_and_the_last_values_always_land(tmp_path):
    sink, _ = make_sink(tmp_path / "run", "metrics.push_every_seconds=3600")
    prom = tmp_path / "run" / "metrics" / "base.prom"
    sink.log(1, {**TRAIN_VALUES, "loss": 9.0})
    deadline = time.time() + 10
    while not prom.exists() and time.time() < deadline:  # the first write happens at once, on the flush thread
        time.sleep(0.01)
    first = prom.read_text()
    for step in range(2, 50):
        sink.log(step, {**TRAIN_VALUES, "loss": 9.0 - step / 10})
    time.sleep(0.2)
    assert prom.read_text() == first, "rewritten although the throttle is an hour"
    sink.close()
    samples = parse_prom(prom.read_text())
    assert sample(samples, "nanoforge_step") == 49
    assert sample(samples, "nanoforge_train_loss") == pytest.approx(9.0 - 4.9)


def test_other_ranks_get_a_sink_that_does_nothing(tmp_path):
    sink, out = make_sink(tmp_path / "run", "metrics.prometheus=http", rank=1)
    sink.log(1, TRAIN_VALUES)
    sink.log_eval(1, {"val_bpb": 1.0})
    sink.close()
    assert out.getvalue() == "" and not (tmp_path / "run").exists()


def test_metrics_config_rejects_bad_values():
    with pytest.raises(UserError, match="metrics.prometheus must be none, http, textfile or pushgateway"):
        make_config("demo", ["metrics.prometheus=carrier-pigeon"])
    with pytest.raises(UserError, match="metrics.pushgateway_url"):
        make_config("demo", ["metrics.prometheus=pushgateway"])
    with pytest.raises(UserError, match="metrics.http_port"):
        make_config("demo", ["metrics.http_port=70000"])


def test_asking_for_an_optional_backend_that_is_not_installed_fails_at_start(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here; this checks the message when it is not")
    with pytest.raises(UserError, match="pip install tensorboard"):
        make_sink(tmp_path / "run", "metrics.tensorboard=true", "metrics.prometheus=none")


# --- HTTP mode -------------------------------------------------------------------------------------------------


def test_http_mode_serves_live_values_and_records_its_endpoint(tmp_path):
    run_dir = tmp_path / "run"
    sink, _ = make_sink(run_dir, "metrics.prometheus=http", "metrics.http_port=0")
    endpoint = json.loads((run_dir / "metrics" / "endpoint.json").read_text())
    assert endpoint["target"] == f"127.0.0.1:{sink.prometheus.port}"
    sink.log(10, TRAIN_VALUES)
    first = parse_prom(urllib.request.urlopen(endpoint["url"], timeout=5).read().decode())
    sink.log(11, {**TRAIN_VALUES, "tokens_per_second": 20000.0})
    second = parse_prom(urllib.request.urlopen(endpoint["url"], timeout=5).read().decode())
    assert sample(first, "nanoforge_tokens_per_second") == 12345.0
    assert sample(second, "nanoforge_tokens_per_second") == 20000.0
    assert sample(second, "nanoforge_step") == 11

    sd = tmp_path / "targets.json"
    assert write_file_sd(tmp_path, sd) == 1
    assert json.loads(sd.read_text()) == [{"targets": [endpoint["target"]], "labels": sink.labels}]
    sink.close()
    assert not (run_dir / "metrics" / "endpoint.json").exists()  # a finished run is no scrape target
    assert write_file_sd(tmp_path, sd) == 0


def test_http_port_in_use_is_a_clear_error(tmp_path):
    first, _ = make_sink(tmp_path / "a", "metrics.prometheus=http")
    try:
        with pytest.raises(UserError, match="set metrics.http_port=0"):
            make_sink(tmp_path / "b", "metrics.prometheus=http", f"metrics.http_port={first.prometheus.port}")
    finally:
        first.close()


# --- textfile atomicity ----------------------------------------------------------------------------------------


def test_a_reader_never_sees_a_partial_textfile(tmp_path):
    """Rewrite the textfile hundreds of times (growing and shrinking) while another thread reads it in a loop:
    every read must parse completely and end with the last metric family."""
    sink, _ = make_sink(tmp_path / "run", "metrics.push_every_seconds=0")
    prom = tmp_path / "run" / "metrics" / "base.prom"
    sink.log(0, TRAIN_VALUES)
    stop = threading.Event()
    reads, bad = [], []

    def reader():
        while not stop.is_set():
            text = prom.read_text()
            reads.append(len(text))
            try:
                samples = parse_prom(text)
                sample(samples, "nanoforge_step")  # present in every complete file
                sample(samples, "nanoforge_step_seconds_count")  # the family written last
            except Exception as exc:  # noqa: BLE001 - any failure to parse is the bug we look for
                bad.append((len(text), repr(exc)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for step in range(1, 400):
            # every 7th step brings a new eval metric, so file sizes vary and a torn read would show
            sink.log(step, TRAIN_VALUES)
            if step % 7 == 0:
                sink.log_eval(step, {f"task_{step}": step / 1000})
    finally:
        stop.set()
        thread.join()
        sink.close()
    assert len(reads) > 50, "the reader hardly ran; the test proved nothing"
    assert len(set(reads)) > 10
    assert not bad, bad[:3]
    assert not list(prom.parent.glob("base.prom.*")), "temporary files left behind"


# --- metrics serve ---------------------------------------------------------------------------------------------


def write_run(runs: Path, name: str, step: int, loss: float, stage: str = "base") -> Path:
    sink, _ = make_sink(runs / name, "metrics.push_every_seconds=0", stage=stage)
    sink.log(step, {**TRAIN_VALUES, "loss": loss})
    sink.close()
    return runs / name / "metrics" / f"{stage}.prom"


def collect(runs: Path) -> dict:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(RunsCollector(runs))
    return parse_prom(generate_latest(registry).decode())


def test_serve_merges_every_run_and_adds_staleness(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "alpha", 10, 3.5)
    write_run(runs, "beta", 20, 2.5, stage="mid")
    old = write_run(runs, "gamma", 30, 1.5)
    os.utime(old, (time.time() - 900, time.time() - 900))
    (runs / "broken" / "metrics").mkdir(parents=True)
    (runs / "broken" / "metrics" / "base.prom").write_text("nanoforge_step{run_id=\"broken\" 1\n")
    (runs / "alpha" / "metrics" / "base.prom.1234.5678").write_text("nanoforge_step{")  # a writer's temp file

    samples = collect(runs)
    assert sample(samples, "nanoforge_train_loss", run_id="alpha", stage="base") == 3.5
    assert sample(samples, "nanoforge_train_loss", run_id="beta", stage="mid") == 2.5
    assert sample(samples, "nanoforge_step", run_id="gamma") == 30
    assert sample(samples, "nanoforge_tokens_total", run_id="beta") == TRAIN_VALUES["tokens_total"]
    assert sample(samples, "nanoforge_metrics_staleness_seconds", run_id="alpha", stage="base") < 60
    assert 890 < sample(samples, "nanoforge_metrics_staleness_seconds", run_id="gamma", stage="base") < 1000
    assert not [k for k in samples if dict(k[1]).get("run_id") == "broken"]
    assert not [k for k in samples if k[0].endswith("_created")]


def test_serve_keeps_existing_labels_and_fills_in_missing_ones(tmp_path):
    runs = tmp_path / "runs"
    (runs / "hand" / "metrics").mkdir(parents=True)
    (runs / "hand" / "metrics" / "sft.prom").write_text(
        "# TYPE nanoforge_step gauge\n"
        'nanoforge_step{run_id="renamed",restart="1"} 7\n'
        "# TYPE nanoforge_train_loss gauge\n"
        "nanoforge_train_loss 0.5\n"
    )
    samples = collect(runs)
    assert sample(samples, "nanoforge_step", run_id="renamed", stage="sft", restart="1") == 7
    assert sample(samples, "nanoforge_train_loss", run_id="hand", stage="sft") == 0.5


def test_metrics_serve_command_answers_over_http_and_stops_on_sigterm(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "alpha", 10, 3.5)
    proc = subprocess.Popen([sys.executable, "-m", "nanoforge", "metrics", "serve", "--runs", str(runs), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving metrics of runs under"), line + proc.stderr.read()
        url = line.split(" at ")[1].strip()
        samples = parse_prom(urllib.request.urlopen(url, timeout=5).read().decode())
        assert sample(samples, "nanoforge_train_loss", run_id="alpha") == 3.5
        write_run(runs, "late", 5, 6.0)  # a run that starts after the exporter is seen on the next scrape
        samples = parse_prom(urllib.request.urlopen(url, timeout=5).read().decode())
        assert sample(samples, "nanoforge_train_loss", run_id="late") == 6.0
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_metrics_serve_bad_input_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nanoforge", "metrics", "serve", "--runs", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="pick another --port"):
            serve(tmp_path, "127.0.0.1", busy.getsockname()[1])


# --- deploy files ----------------------------------------------------------------------------------------------


def test_promtool_accepts_the_shipped_config_and_rules():
    promtool = require_binary("promtool")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *args], cwd=PROMETHEUS_DEPLOY, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_dashboard_covers_the_required_panels_with_exported_metrics(tmp_path):
    dashboard = json.loads((REPO / "deploy" / "grafana" / "nanoforge-dashboard.json").read_text())
    assert "run_id" in [v["name"] for v in dashboard["templating"]["list"]]
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    required = {"Tokens per second": "nanoforge_tokens_per_second", "MFU": "nanoforge_mfu_ratio",
                "Training loss": "nanoforge_train_loss", "Validation bits per byte": "nanoforge_val_bpb",
                "Step time": "nanoforge_step_seconds", "Data wait per step": "nanoforge_data_wait_seconds",
                "GPU memory (rank 0)": "nanoforge_gpu_memory_bytes"}
    for title, metric in required.items():
        assert metric in exprs[title], title
    assert all('run_id=~"$run_id"' in expr for expr in exprs.values())
    # every metric the dashboard names is one the exporter (or `metrics serve`) really exposes
    run = tmp_path / "runs"
    write_run(run, "r", 1, 1.0)
    sink, _ = make_sink(run / "r", "metrics.push_every_seconds=0")
    sink.log(2, TRAIN_VALUES)
    sink.log_eval(2, {"val_bpb": 1.0, "core_score": 0.2})
    sink.close()
    exposed = {name for name, _ in collect(run)} | {"nanoforge_step_seconds"}
    import re

    used = set(re.findall(r"nanoforge_[a-z_]+", " ".join(exprs.values())))
    assert used <= exposed, used - exposed
