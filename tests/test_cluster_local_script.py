"""scripts/local-cluster: `up` twice is fine, `down` stops exactly what `up` started and removes the folder.

A second, throw-away cluster on other ports and its own folder, so the session's cluster is left alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, missing_infrastructure
from local_cluster import read_env_file

SCRIPT = REPO / "scripts" / "local-cluster"
PIDS = ("munged", "slurmctld", "slurmd", "sshd", "http")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def cluster_parent():
    """A folder under /tmp the munge user can traverse (pytest's tmp_path is private to root)."""
    if os.geteuid() != 0:
        missing_infrastructure("root (the local cluster's daemons need it)")
    parent = Path(tempfile.mkdtemp(prefix="nf-local-cluster-test-", dir="/tmp"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def throwaway_env(cluster_parent):
    return {**os.environ, "NANOFORGE_CLUSTER_DIR": str(cluster_parent / "cluster"), "NANOFORGE_SSH_PORT": "2232",
            "NANOFORGE_HTTP_PORT": "8775", "NANOFORGE_SLURMCTLD_PORT": "6827", "NANOFORGE_SLURMD_PORT": "6828"}


def script(env, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        missing_infrastructure(f"scripts/local-cluster {' '.join(args)} failed: {proc.stderr.strip()[-400:]}")
    return proc


def test_up_is_idempotent_and_down_stops_only_what_up_started(throwaway_env, cluster_parent):
    cluster = cluster_parent / "cluster"
    bystander = subprocess.Popen(["sleep", "300"])  # not ours to stop
    try:
        script(throwaway_env, "up")
        try:
            pids = {name: int((cluster / "run" / f"{name}.pid").read_text()) for name in PIDS}
            assert all(alive(pid) for pid in pids.values())
            env = read_env_file(cluster / "env")
            assert env["SLURM_CONF"] == str(cluster / "etc" / "slurm.conf")
            assert env["NANOFORGE_SSH_PORT"] == "2232" and env["NANOFORGE_HTTP_URL"] == "http://127.0.0.1:8775"

            script(throwaway_env, "up")  # again: nothing restarted
            assert pids == {name: int((cluster / "run" / f"{name}.pid").read_text()) for name in PIDS}
            status = script(throwaway_env, "status")
            assert "gpu*" in status.stdout and "idle" in status.stdout

            gres = subprocess.run(["sinfo", "-h", "-N", "-o", "%G"], capture_output=True, text=True,
                                  env={**throwaway_env, "SLURM_CONF": env["SLURM_CONF"]})
            assert gres.stdout.strip().startswith("gpu:2")
        finally:
            script(throwaway_env, "down", check=False)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in pids.values())
        assert not cluster.exists()
        assert bystander.poll() is None
        assert script(throwaway_env, "status", check=False).returncode != 0
    finally:
        bystander.kill()
        bystander.wait()
