"""Cluster profiles: the shipped ones load, bad ones are one clear line naming the file and the key (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from nanoforge.cluster.profile import load_profile, parse_time_limit
from nanoforge.errors import UserError

PTOLEMY = REPO / "deploy" / "clusters" / "ptolemy.yaml"


def test_shipped_profiles_load_with_placeholders_resolved(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOFORGE_CLUSTER_DIR", "/tmp/some-cluster")
    env_file = tmp_path / ".env.local"
    env_file.write_text("# secrets\nNANOFORGE_SSH_USER=ab123\nNANOFORGE_MAIL_USER='ab123@msstate.edu'\n")
    monkeypatch.setenv("NANOFORGE_ENV_FILE", str(env_file))

    ptolemy = load_profile("ptolemy")
    assert ptolemy.partitions["gpu"].name == "gpu-a100"
    assert ptolemy.partitions["gpu"].gpus_per_node == 8
    assert ptolemy.account == "class-cse8990"
    assert parse_time_limit(ptolemy.partitions["gpu"].time_limit) == 12 * 60
    assert ptolemy.ssh.user == "ab123" and ptolemy.mail_user == "ab123@msstate.edu"
    assert ptolemy.scratch == "/scratch/ptolemy/users/ab123/nanoforge"
    assert ptolemy.container.image == "/scratch/ptolemy/users/ab123/nanoforge/images/nanoforge.sif"

    local = load_profile("local")
    assert local.ssh.port == 2222 and local.ssh.key == "/tmp/some-cluster/ssh/id_ed25519"
    assert local.container.runtime == "none" and local.venv == f"{REPO}/.venv"
    assert local.run_dir("r1") == Path("/tmp/some-cluster/scratch/runs/r1")


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(PTOLEMY.read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _drop(key):
    return lambda d: d.pop(key)


BAD_PROFILES = [
    (lambda d: d.update(acount="x"), "unknown key 'acount'"),
    (lambda d: d["partitions"]["gpu"].update(gpus_per_node="eight"), "key 'partitions.gpu.gpus_per_node' must be int"),
    (_drop("account"), "missing required key 'account'"),
    (lambda d: d["partitions"].pop("cpu"), "missing required key 'partitions.cpu'"),
    (lambda d: d["container"].update(runtime="docker"), "key 'container.runtime' must be one of"),
    (lambda d: d["partitions"]["gpu"].update(time_limit="12h"), "key 'partitions.gpu.time_limit' must look like"),
    (lambda d: d.update(modules="cuda"), "key 'modules' must be a list"),
    (lambda d: d.update(scratch="relative/path"), "key 'scratch' must be an absolute path"),
    (lambda d: d.update(scratch="/x/{nobody}"), "unknown placeholder {nobody}"),
    (lambda d: d["ssh"].update(port=True), "key 'ssh.port' must be int"),
]


@pytest.mark.parametrize("mutate,message", BAD_PROFILES)
def test_bad_profile_is_one_clear_line(tmp_path, mutate, message):
    path = _write(tmp_path, mutate)
    with pytest.raises(UserError) as caught:
        load_profile(str(path))
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_bad_profile_and_bad_arguments_exit_2_from_the_cli(tmp_path):
    path = _write(tmp_path, lambda d: d["partitions"]["gpu"].update(gpus_per_nod=8))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "nanoforge", *args], capture_output=True, text=True, cwd=tmp_path)

    cases = [
        (("submit", "--profile", str(path), "--run-name", "r", "--dry-run"),
         "unknown key 'partitions.gpu.gpus_per_nod'"),
        (("submit", "--profile", "no-such-cluster", "--run-name", "r", "--dry-run"),
         "no cluster profile 'no-such-cluster'"),
        (("submit", "--profile", "local", "--run-name", "../escape", "--dry-run"), "run name '../escape'"),
        (("submit", "--profile", "local", "--run-name", "r", "--stages", "base,pretrain", "--dry-run"),
         "unknown stage 'pretrain'"),
        (("submit", "--profile", "local", "--run-name", "r", "--nodes", "0", "--dry-run"),
         "--nodes must be at least 1"),
        (("runs", "status", "--profile", "local", "--run-name", "never-submitted-run"), "never submitted"),
        (("submit", "--profile", "local"), "required: --run-name"),
    ]
    for args, message in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_env_local_with_a_bad_line_names_file_and_line(tmp_path, monkeypatch):
    env_file = tmp_path / ".env.local"
    env_file.write_text("NANOFORGE_MAIL_USER=a@b.c\nthis line has no equals sign\n")
    monkeypatch.setenv("NANOFORGE_ENV_FILE", str(env_file))
    with pytest.raises(UserError, match=r"\.env\.local:2: expected KEY=VALUE"):
        load_profile("ptolemy")
