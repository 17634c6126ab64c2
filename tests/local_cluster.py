"""The real local test cluster (scripts/local-cluster up) behind conftest's `local_cluster` session fixture,
and helpers for SLURM tests. In CI (CI=true) a cluster that cannot start fails the tests instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO, missing_infrastructure

SCRIPT = REPO / "scripts" / "local-cluster"


@dataclass
class LocalCluster:
    dir: Path
    env: dict[str, str]  # from <dir>/env: SLURM_CONF, key, ports

    @property
    def scratch(self) -> Path:
        return self.dir / "scratch"

    @property
    def key(self) -> str:
        return self.env["NANOFORGE_SSH_KEY"]

    def run_dir(self, name: str) -> Path:
        return self.scratch / "runs" / name


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            env[key] = value
    return env


def start_local_cluster() -> LocalCluster:
    """Behind conftest's session fixture `local_cluster`."""
    if os.geteuid() != 0:
        missing_infrastructure("root (the local cluster's daemons and apt need it)")
    try:
        proc = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        missing_infrastructure("scripts/local-cluster up did not finish within 300 s")
    if proc.returncode != 0:
        missing_infrastructure(f"scripts/local-cluster up failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    cluster_dir = Path(os.environ.get("NANOFORGE_CLUSTER_DIR", "/tmp/nanoforge-cluster"))
    env = read_env_file(cluster_dir / "env")
    os.environ.update(env)  # SLURM clients in this process and its children find the cluster
    return LocalCluster(cluster_dir, env)


def unique_run(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def nanoforge_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanoforge", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def fab(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("fab", path=str(Path(sys.executable).parent)) or "fab"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "NANOFORGE_PROFILE": "", "NANOFORGE_RUN": ""})


def scontrol_job(job_id: str) -> dict[str, str]:
    from nanoforge.cluster.slurm import parse_scontrol_fields

    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return parse_scontrol_fields(out)


def wait_job(job_id: str, timeout: float, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                                                   "NODE_FAIL", "PREEMPTED")) -> dict[str, str]:
    """Poll scontrol (sbatch --wait backs off and can answer 30 s late) until the job reaches a state in `until`."""
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        fields = scontrol_job(job_id)
        if fields.get("JobState") in until:
            return fields
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {fields.get('JobState')} after {timeout} s: {fields}")
