"""Fabric tasks for the login-node metrics stack: `fab metrics-up` and `fab metrics-down`.

    fab metrics-up --profile ptolemy                 # the exporter: every run's metrics on login:9400
    fab metrics-up --profile ptolemy --prometheus    # and a Prometheus (with the alert rules) on login:9090
    fab metrics-down --profile ptolemy

Both bind to 127.0.0.1 on the login node; look at them through an SSH tunnel
(`ssh -L 9090:127.0.0.1:9090 login`), or pass --listen 0.0.0.0 where the site allows it. Everything they keep
(pid files, logs, Prometheus config and database) lives under <scratch>/metrics on the cluster. Starting is
idempotent: what already runs is left alone.
"""

from __future__ import annotations

import shlex
import time
from io import BytesIO
from pathlib import Path

import yaml
from fabric import Connection, task

HERE = Path(__file__).resolve().parent
PROMETHEUS_DIR = HERE / "prometheus"


def _connect(profile) -> Connection:
    connect_kwargs = {}
    if profile.ssh.key:
        connect_kwargs = {"key_filename": str(Path(profile.ssh.key).expanduser()), "look_for_keys": False,
                          "allow_agent": False}
    return Connection(profile.hosts.login, user=profile.ssh.user or None, port=profile.ssh.port,
                      connect_kwargs=connect_kwargs)


def _load(profile_name: str):
    from nanoforge.cluster.profile import load_profile

    return load_profile(profile_name)


def _state_dir(profile) -> str:
    return f"{profile.scratch}/metrics"


def _nanoforge(profile) -> str:
    # the exporter needs prometheus-client only, so the login host's venv is enough (no image, no GPU)
    return f"{profile.host_venv}/bin/nanoforge" if profile.host_venv else "nanoforge"


def _python(profile) -> str:
    return f"{profile.host_venv}/bin/python" if profile.host_venv else "python3"


def _start_background(c: Connection, name: str, command: str, state: str) -> bool:
    """Start `command` detached with its pid in <state>/<name>.pid; False when it already runs."""
    pid_file, log_file = shlex.quote(f"{state}/{name}.pid"), shlex.quote(f"{state}/{name}.log")
    if c.run(f"test -s {pid_file} && kill -0 $(cat {pid_file})", warn=True, hide=True).ok:
        return False
    # setsid + nohup: the process outlives this SSH session; stdin from /dev/null so the channel can close
    c.run(f"setsid nohup {command} > {log_file} 2>&1 < /dev/null & echo $! > {pid_file}", hide=True, pty=False)
    return True


def _wait_http(c: Connection, profile, url: str, name: str, state: str, seconds: float = 30.0) -> None:
    probe = f"{_python(profile)} -c " + shlex.quote(f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)")
    deadline = time.time() + seconds
    while time.time() < deadline:
        if c.run(probe, warn=True, hide=True).ok:
            return
        time.sleep(0.5)
    tail = c.run(f"tail -n 20 {shlex.quote(f'{state}/{name}.log')}", warn=True, hide=True).stdout
    raise SystemExit(f"fab: {name} did not answer at {url} within {seconds:.0f} s; its log ends with:\n{tail}")


def _prometheus_config(exporter: str) -> bytes:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        if job["job_name"] == "nanoforge-runs":
            job["static_configs"] = [{"targets": [exporter]}]
    return yaml.safe_dump(config, sort_keys=False).encode()


@task(help={
    "profile": "cluster profile name or YAML path (deploy/clusters/<name>.yaml)",
    "port": "exporter port on the login node (default 9400)",
    "prometheus": "also start Prometheus with deploy/prometheus/ (needs `prometheus` on the login node's PATH)",
    "prometheus_port": "Prometheus port (default 9090)",
    "listen": "address both listen on (default 127.0.0.1: reach them through an SSH tunnel)",
})
def metrics_up(c, profile="local", port=9400, prometheus=False, prometheus_port=9090, listen="127.0.0.1"):
    """Start `nanoforge metrics serve` for every run on the login node (and Prometheus with --prometheus)."""
    prof = _load(profile)
    conn = _connect(prof)
    state = _state_dir(prof)
    runs = str(prof.run_root)
    targets = f"{state}/prometheus/targets"
    conn.run(f"mkdir -p {shlex.quote(runs)} {shlex.quote(targets)}", hide=True)
    serve = (f"{_nanoforge(prof)} metrics serve --runs {shlex.quote(runs)} --host {shlex.quote(listen)} "
             f"--port {int(port)} --file-sd {shlex.quote(targets + '/nanoforge-nodes.json')}")
    started = _start_background(conn, "metrics-serve", serve, state)
    local = "127.0.0.1" if listen in ("0.0.0.0", "") else listen
    _wait_http(conn, prof, f"http://{local}:{int(port)}/metrics", "metrics-serve", state)
    print(f"exporter {'started' if started else 'already running'}: http://{listen}:{port}/metrics "
          f"on {prof.hosts.login} (runs under {runs})")
    if not prometheus:
        return
    config_dir = f"{state}/prometheus"
    conn.put(BytesIO(_prometheus_config(f"{local}:{int(port)}")), f"{config_dir}/prometheus.yml")
    conn.put(str(PROMETHEUS_DIR / "alerts.yml"), f"{config_dir}/alerts.yml")
    command = (f"prometheus --config.file={shlex.quote(config_dir + '/prometheus.yml')} "
               f"--storage.tsdb.path={shlex.quote(config_dir + '/data')} "
               f"--web.listen-address={shlex.quote(f'{listen}:{int(prometheus_port)}')}")
    started = _start_background(conn, "prometheus", command, state)
    _wait_http(conn, prof, f"http://{local}:{int(prometheus_port)}/-/ready", "prometheus", state, seconds=60)
    print(f"prometheus {'started' if started else 'already running'}: http://{listen}:{prometheus_port} "
          f"on {prof.hosts.login}; tunnel: ssh -L {prometheus_port}:127.0.0.1:{prometheus_port} {prof.hosts.login}")


@task(help={"profile": "cluster profile name or YAML path"})
def metrics_down(c, profile="local"):
    """Stop what `fab metrics-up` started on the login node (by its pid files)."""
    prof = _load(profile)
    conn = _connect(prof)
    state = _state_dir(prof)
    for name in ("prometheus", "metrics-serve"):
        pid_file = shlex.quote(f"{state}/{name}.pid")
        result = conn.run(f"test -s {pid_file} && kill $(cat {pid_file}) && rm -f {pid_file}", warn=True, hide=True)
        print(f"{name}: {'stopped' if result.ok else 'was not running'}")
