"""A real Prometheus (Debian package) scrapes real demo training runs, both ways a login node sees them:

- a run with metrics.prometheus=http, found through the file_sd list `nanoforge metrics serve --file-sd` keeps;
- a run with the default textfile output, re-exposed by `nanoforge metrics serve`.

Its query API must return that run's tokens/s and loss, equal to what the run logged in its JSONL.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from test_metrics import REPO, require_binary

# On top of the tiny run config (conftest.TINY): log every step, no mid-run evals or checkpoints.
FAST = ["--set", "train.eval_every=0", "--set", "train.save_every=0", "--set", "train.log_every=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nanoforge(*args: str, env: dict, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nanoforge", *args], env=env, capture_output=True, text=True,
                            **kwargs)
    assert result.returncode == 0, f"nanoforge {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


def query(prom_url: str, expr: str) -> list[dict]:
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for_query(prom_url: str, expr: str, seconds: float, alive=None) -> list[dict]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        result = query(prom_url, expr)
        if result:
            return result
        if alive is not None:
            alive()
        time.sleep(0.5)
    raise AssertionError(f"Prometheus returned nothing for {expr} within {seconds:.0f} s")


def last_train_values(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "metrics" / "base.jsonl").read_text().splitlines()]
    return [e["values"] for e in events if e["kind"] == "train"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_tokenizer_run):
    """`nanoforge metrics serve` over a runs folder, and Prometheus scraping it every second."""
    prometheus = require_binary("prometheus")
    root = tmp_path_factory.mktemp("prom")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("NANOFORGE_RUN_ID", None)
    env.pop("SLURM_JOB_ID", None)
    runs = root / "runs"
    runs.mkdir()
    targets = root / "prometheus" / "targets"
    targets.mkdir(parents=True)

    serve_port, prom_port = free_port(), free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "nanoforge", "metrics", "serve", "--runs", str(runs), "--port", str(serve_port),
         "--file-sd", str(targets / "nanoforge-nodes.json"), "--file-sd-every", "0.5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert serve.stdout.readline().startswith("serving metrics"), "metrics serve did not start"

    # the shipped config, with the exporter's port and a 1 s scrape interval so the test is quick
    import yaml

    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(REPO / "deploy" / "prometheus" / "alerts.yml")]
    for job in config["scrape_configs"]:
        if job["job_name"] == "nanoforge-runs":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{serve_port}"]}]
        else:
            job["file_sd_configs"][0]["refresh_interval"] = "1s"
    config_path = root / "prometheus" / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    prom_log = open(root / "prometheus.log", "w")
    prom = subprocess.Popen(
        [prometheus, f"--config.file={config_path}", f"--storage.tsdb.path={root / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=prom_log, stderr=subprocess.STDOUT)
    prom_url = f"http://127.0.0.1:{prom_port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{prom_url}/-/ready", timeout=2)
            break
        except OSError:
            assert prom.poll() is None and time.time() < deadline, (root / "prometheus.log").read_text()[-2000:]
            time.sleep(0.3)
    try:
        yield {"env": env, "runs": runs, "prom_url": prom_url, "template": tiny_tokenizer_run}
    finally:
        for proc in (prom, serve):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        prom_log.close()


def new_run(stack, name: str) -> Path:
    """A run directory named `name` (its run_id) holding the session's trained tiny tokenizer and config."""
    run_dir = stack["runs"] / name
    shutil.copytree(stack["template"], run_dir)
    return run_dir


def test_prometheus_scrapes_a_training_run_over_http(stack):
    run_dir = new_run(stack, "http-run")
    log = open(run_dir / "train.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanoforge", "base", "--run-dir", str(run_dir), *FAST,
         "--set", "train.num_iterations=100000", "--set", "metrics.prometheus=http", "--set", "metrics.http_port=0"],
        env=stack["env"], stdout=log, stderr=subprocess.STDOUT)

    def alive():
        assert proc.poll() is None, (run_dir / "train.log").read_text()[-3000:]

    try:
        prom = stack["prom_url"]
        tps = wait_for_query(prom, 'nanoforge_tokens_per_second{run_id="http-run",stage="base"}', 240, alive)
        loss = wait_for_query(prom, 'nanoforge_train_loss{run_id="http-run",stage="base"}', 30, alive)
        up = query(prom, 'up{job="nanoforge-nodes"}')
        endpoint = json.loads((run_dir / "metrics" / "endpoint.json").read_text())
        assert [r["value"][1] for r in up if r["metric"]["instance"] == endpoint["target"]] == ["1"]
        assert tps[0]["metric"]["job"] == "nanoforge-nodes"  # scraped from the node, not from a textfile
        assert tps[0]["metric"]["restart"] == "0"
        logged = last_train_values(run_dir)
        assert float(tps[0]["value"][1]) in [v["tokens_per_second"] for v in logged]
        assert float(loss[0]["value"][1]) in [v["loss"] for v in logged]
        assert 0 < float(loss[0]["value"][1]) < 20
    finally:
        proc.send_signal(signal.SIGTERM)  # the cluster's stop signal: checkpoint, exit 75
        code = proc.wait(timeout=120)
        log.close()
    assert code == 75, (run_dir / "train.log").read_text()[-3000:]
    assert not (run_dir / "metrics" / "endpoint.json").exists()


def test_prometheus_scrapes_textfile_runs_through_metrics_serve(stack):
    run_dir = new_run(stack, "textfile-run")
    nanoforge("base", "--run-dir", str(run_dir), *FAST, "--set", "train.num_iterations=4",
              "--set", "metrics.prometheus=textfile", "--set", "metrics.push_every_seconds=1",
              env=stack["env"], timeout=600)
    logged = last_train_values(run_dir)
    assert len(logged) == 4

    prom = stack["prom_url"]
    # Prometheus may hold values scraped while the run went on; once it has seen the last step, the textfile
    # (written whole, atomically) holds exactly the last logged values
    wait_for_query(prom, 'nanoforge_step{run_id="textfile-run"} == 4', 30)
    tps = query(prom, 'nanoforge_tokens_per_second{run_id="textfile-run"}')
    loss = query(prom, 'nanoforge_train_loss{run_id="textfile-run"}')
    assert tps[0]["metric"]["job"] == "nanoforge-runs"
    assert float(tps[0]["value"][1]) == logged[-1]["tokens_per_second"]
    assert float(loss[0]["value"][1]) == logged[-1]["loss"]
    assert wait_for_query(prom, 'nanoforge_val_bpb{run_id="textfile-run"}', 10), "the final evaluation is missing"
    # the counter and the histogram survive the round trip through the textfile and `metrics serve`
    tokens = query(prom, 'nanoforge_tokens_total{run_id="textfile-run"}')
    assert float(tokens[0]["value"][1]) == logged[-1]["tokens_total"]
    steps_timed = query(prom, 'nanoforge_step_seconds_count{run_id="textfile-run"}')
    assert float(steps_timed[0]["value"][1]) == 4
    staleness = wait_for_query(prom, 'nanoforge_metrics_staleness_seconds{run_id="textfile-run",stage="base"}', 10)
    assert 0 <= float(staleness[0]["value"][1]) < 600

    # every panel of the shipped dashboard is a valid query; the per-run ones return this run's data
    dashboard = json.loads((REPO / "deploy" / "grafana" / "nanoforge-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$run_id", "textfile-run").replace("$stage", ".*")
            result = query(prom, expr)
            if panel["title"] in ("Tokens per second", "MFU", "Training loss", "Data wait per step",
                                  "GPU memory (rank 0)", "Validation bits per byte"):
                assert result, f"dashboard panel {panel['title']!r} shows nothing: {expr}"
                assert all(math.isfinite(float(r["value"][1])) for r in result)


def test_fab_metrics_up_starts_exporter_and_prometheus_on_the_login_node(local_cluster):
    """`fab metrics-up --prometheus` over real SSH to the local cluster's login node, then `fab metrics-down`."""
    from local_cluster import fab, unique_run
    from test_metrics import TRAIN_VALUES, make_sink, parse_prom, sample

    run_dir = local_cluster.run_dir(unique_run("metrics-fab"))
    sink, _ = make_sink(run_dir, "metrics.push_every_seconds=0")
    sink.log(3, TRAIN_VALUES)
    sink.close()
    port, prom_port = free_port(), free_port()
    up = ["metrics-up", "--profile", "local", "--port", str(port), "--prometheus", "--prometheus-port", str(prom_port)]
    try:
        first = fab(*up, timeout=180)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "exporter started" in first.stdout and "prometheus started" in first.stdout
        again = fab(*up, timeout=180)  # idempotent: nothing is started twice
        assert "exporter already running" in again.stdout and "prometheus already running" in again.stdout

        samples = parse_prom(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        assert sample(samples, "nanoforge_step", run_id=run_dir.name) == 3
        prom_url = f"http://127.0.0.1:{prom_port}"
        deadline = time.time() + 30
        while True:  # the uploaded config points Prometheus at the exporter fab started
            targets = json.load(urllib.request.urlopen(f"{prom_url}/api/v1/targets", timeout=5))["data"]
            urls = [t["scrapeUrl"] for t in targets["activeTargets"]]
            if f"http://127.0.0.1:{port}/metrics" in urls or time.time() > deadline:
                break
            time.sleep(0.5)
        assert f"http://127.0.0.1:{port}/metrics" in urls
        rules = json.load(urllib.request.urlopen(f"{prom_url}/api/v1/rules", timeout=5))["data"]["groups"]
        assert "NanoforgeNoProgress" in [r["name"] for g in rules for r in g["rules"]]
    finally:
        down = fab("metrics-down", "--profile", "local", timeout=120)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert "prometheus: stopped" in down.stdout and "metrics-serve: stopped" in down.stdout, down.stdout + down.stderr
    for p in (port, prom_port):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{p}/", timeout=2)


def test_pushgateway_mode_pushes_to_a_real_pushgateway_and_survives_one_that_is_down(tmp_path, capfd):
    from test_metrics import TRAIN_VALUES, make_sink, parse_prom, sample

    gateway = require_binary("prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen([gateway, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "pushgateway did not start"
                time.sleep(0.2)
        sink, _ = make_sink(tmp_path / "pushed-run", "metrics.prometheus=pushgateway",
                            f"metrics.pushgateway_url={url}", "metrics.push_every_seconds=0")
        sink.log(7, TRAIN_VALUES)
        sink.log_eval(7, {"val_bpb": 1.5})
        sink.close()
        samples = parse_prom(urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode())
        assert sample(samples, "nanoforge_step", run_id="pushed-run", stage="base", job="nanoforge") == 7
        assert sample(samples, "nanoforge_tokens_per_second", run_id="pushed-run") == TRAIN_VALUES["tokens_per_second"]
        assert sample(samples, "nanoforge_val_bpb", run_id="pushed-run") == 1.5
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    # the gateway is gone now: training goes on, with one warning instead of one per step
    capfd.readouterr()
    sink, _ = make_sink(tmp_path / "orphan-run", "metrics.prometheus=pushgateway", f"metrics.pushgateway_url={url}",
                        "metrics.push_every_seconds=0")
    for step in range(5):
        sink.log(step, TRAIN_VALUES)
    sink.close()
    assert capfd.readouterr().err.count("warning: push to") == 1
