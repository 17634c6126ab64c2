"""The image definitions, their checker, the build command line and the container runtime's exec line.

No apptainer binary exists here: the definitions are checked by `nanoforge container check` (spython + our parser +
shellcheck + the real CLI parser), the command lines are compared in full, and the `none` runtime runs for real.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanoforge.cluster import container
from nanoforge.cluster.container_check import check_definition, cli_commands, parse_definition
from nanoforge.cluster.runtime import ContainerSettings, exec_command, passthrough_env
from nanoforge.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DEFS = [REPO / "Apptainer.def", REPO / "containers" / "cpu.def"]
APP_COMMANDS = {"train": "base", "chat": "chat", "web": "web", "stage": "stage"}
NANOFORGE = str(Path(sys.executable).with_name("nanoforge"))

def _check(path: Path, pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    return check_definition(path, context=REPO, pyproject=pyproject, commands=cli_commands())


def _missing_command_problems(path: Path) -> set[str]:
    """Problems the checker must report while an app's command has not landed in the CLI yet (none once it has)."""
    known = cli_commands()
    return {
        f"{path}: %apprun {app}: `nanoforge {command}` is not a nanoforge command (the CLI has: "
        f"{', '.join(sorted(known))}); fix the app or add the command to the CLI"
        for app, command in APP_COMMANDS.items() if command not in known
    }


# ---------------------------------------------------------------- checker on the real definitions


@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_checker_passes_on_the_definitions(path):
    # Passes outright once `nanoforge base|chat|web|stage` all exist; until then only those commands may be missing.
    assert set(_check(path)) == _missing_command_problems(path)


def test_both_definitions_share_the_build_steps_instead_of_copying_them():
    gpu, cpu = (parse_definition(p.read_text()) for p in DEFS)
    for definition in (gpu, cpu):
        post = definition.section("post").body
        for script in ("install-rust.sh", "build-rustbpe.sh", "install-nanoforge.sh"):
            assert f'sh "$common/{script}"' in post
        assert definition.section("test").body.strip() == "sh /opt/nanoforge/containers/common/test.sh"
        assert definition.section("environment").body.strip() == ". /opt/nanoforge/containers/common/environment.sh"
        assert definition.apps() == set(APP_COMMANDS)
    assert len(gpu.section("post").body.splitlines()) < 20 and len(cpu.section("post").body.splitlines()) < 20


def test_check_command_reports_ok_or_exactly_the_missing_commands():
    result = subprocess.run([NANOFORGE, "container", "check"], cwd=REPO, capture_output=True, text=True)
    expected = set().union(*(_missing_command_problems(p) for p in DEFS))
    if expected:
        assert result.returncode == 2
        assert set(result.stderr.splitlines()[:-1]) == expected
    else:
        assert result.returncode == 0, result.stderr
        assert [line.split(": OK")[0] for line in result.stdout.splitlines()] == [str(p) for p in DEFS]


# ---------------------------------------------------------------- checker on broken copies


def _new_problems(tmp_path: Path, source: Path, edit, pyproject: Path = REPO / "pyproject.toml") -> set[str]:
    """Problems the edit adds: the copy is checked before and after, at the same path."""
    copy = tmp_path / source.name
    text = source.read_text()
    copy.write_text(text)
    before = set(_check(copy))
    copy.write_text(edit(text))
    return set(_check(copy, pyproject)) - before


@pytest.mark.parametrize("source", DEFS, ids=lambda p: p.name)
def test_checker_names_a_missing_app(tmp_path, source):
    def drop_web(text):
        return re.sub(r"%apprun web\n.*?(?=%apphelp web)%apphelp web\n.*?(?=\n%|\Z)", "", text, flags=re.S)

    copy = tmp_path / source.name
    assert _new_problems(tmp_path, source, drop_web) == {
        f"{copy}: %apprun web: missing; add `%apprun web` (every image has the apps train, chat, web, stage)",
        f"{copy}: %apphelp web: missing; add `%apphelp web` (every image has the apps train, chat, web, stage)",
    }


def test_checker_names_a_torch_pin_that_disagrees_with_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((REPO / "pyproject.toml").read_text().replace('gpu = ["torch==2.13.0"]',
                                                                       'gpu = ["torch==2.14.1"]'))
    copy = tmp_path / "Apptainer.def"
    copy.write_text(DEFS[0].read_text())
    problems = set(_check(copy, pyproject)) - set(_check(copy))
    assert problems == {f"{copy}: %post: torch==2.13.0 but pyproject.toml's extra 'gpu' pins torch==2.14.1; "
                        "make the two pins the same"}


def test_checker_names_a_torch_pin_that_disagrees_with_the_label(tmp_path):
    copy = tmp_path / "cpu.def"
    problems = _new_problems(tmp_path, DEFS[1], lambda t: t.replace("org.nanoforge.torch 2.13.0+cpu",
                                                                    "org.nanoforge.torch 2.12.0+cpu"))
    assert problems == {f"{copy}: %labels: org.nanoforge.torch is 2.12.0+cpu but %post installs torch==2.13.0; "
                        "make them the same"}


def test_checker_names_the_line_of_a_shell_error_in_post(tmp_path):
    text = DEFS[0].read_text()
    anchor = '    python3.12 -m venv /opt/venv\n'
    broken_line = text.splitlines().index(anchor.rstrip("\n")) + 2  # the inserted line, 1-based
    copy = tmp_path / "Apptainer.def"
    problems = _new_problems(tmp_path, DEFS[0], lambda t: t.replace(anchor, anchor + '    [ "$common" = x]\n'))
    assert problems, "the shell error went unnoticed"
    assert all(p.startswith(f"{copy}: %post line {broken_line}: shellcheck SC") for p in problems), problems
    assert any("SC1020 (error): You need a space before the ]" in p for p in problems)


def test_checker_names_a_missing_label(tmp_path):
    copy = tmp_path / "Apptainer.def"
    problems = _new_problems(tmp_path, DEFS[0], lambda t: t.replace(
        "    org.opencontainers.image.revision {{ GIT_SHA }}\n", ""))
    assert problems == {f"{copy}: %labels: label org.opencontainers.image.revision is missing; "
                        "add `org.opencontainers.image.revision <value>`"}


@pytest.mark.parametrize("base", ["nvidia/cuda:latest", "nvidia/cuda", "nvidia/cuda:12.8-devel"])
def test_checker_rejects_an_unpinned_base_image(tmp_path, base):
    def unpin(text):
        return text.replace("From: nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04", f"From: {base}")

    copy = tmp_path / "Apptainer.def"
    problems = _new_problems(tmp_path, DEFS[0], unpin)
    assert f"{copy}: header: From {base!r} is not pinned; use an exact version tag " \
           "(e.g. nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04) or an @sha256 digest" in problems
    # ...and the base image label no longer matches From.
    assert problems == {p for p in problems if "header: From" in p or "base.name" in p}


def test_checker_names_an_app_command_the_cli_does_not_have(tmp_path):
    copy = tmp_path / "cpu.def"
    problems = _new_problems(tmp_path, DEFS[1], lambda t: t.replace("exec nanoforge base", "exec nanoforge bsae"))
    assert len(problems) == 1
    assert problems.pop().startswith(f"{copy}: %apprun train: `nanoforge bsae` is not a nanoforge command")


def test_checker_shellchecks_the_shared_scripts_the_image_copies_in(tmp_path):
    context = tmp_path / "repo"
    shutil.copytree(REPO / "containers", context / "containers")
    for name in ("pyproject.toml", "src"):
        (context / name).symlink_to(REPO / name)
    (context / "README.md").write_text("nanoforge\n")
    script = context / "containers/common/install-rust.sh"
    lines = script.read_text().splitlines()
    lines.insert(10, "cd $RUST_HOME")
    script.write_text("\n".join(lines) + "\n")
    problems = check_definition(context / "containers/cpu.def", context=context, pyproject=REPO / "pyproject.toml",
                                commands=set(APP_COMMANDS.values()))
    assert problems == [f"{context / 'containers/cpu.def'}: containers/common/install-rust.sh line 11 (copied by "
                        "%files): shellcheck SC2086 (info): Double quote to prevent globbing and word splitting.; "
                        "fix the shell code"]


def test_checker_names_a_template_variable_without_default_and_an_unprovided_sourced_file(tmp_path):
    copy = tmp_path / "Apptainer.def"
    problems = _new_problems(tmp_path, DEFS[0], lambda t: t.replace("    GIT_SHA=unknown\n", "").replace(
        ". /opt/nanoforge/containers/common/environment.sh", ". /opt/site/env.sh"))
    assert f"{copy}: %arguments: template variable {{{{ GIT_SHA }}}} has no default; add `GIT_SHA=<default>` to " \
           "%arguments (builds without --build-arg need it)" in problems
    assert f"{copy}: %environment: sources /opt/site/env.sh, which no %files entry provides; copy it in with " \
           "%files or set the variables inline" in problems
    assert f"{copy}: %environment: does not export NANOFORGE_HOME; export NANOFORGE_HOME (see " \
           "containers/common/environment.sh)" in problems


def test_check_command_exits_2_with_one_line_per_problem(tmp_path):
    copy = tmp_path / "Apptainer.def"
    copy.write_text(DEFS[0].read_text().replace("%apphelp chat", "%apphelp chatt")
                    .replace("org.opencontainers.image.created {{ BUILD_DATE }}", ""))
    result = subprocess.run([NANOFORGE, "container", "check", str(copy)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"{copy}: %apphelp chat: missing; add `%apphelp chat` (every image has the apps train, chat, web, " \
           "stage)" in lines
    assert f"{copy}: %labels: label org.opencontainers.image.created is missing; " \
           "add `org.opencontainers.image.created <value>`" in lines
    assert lines[-1] == f"{len(lines) - 1} problem(s) found"
    assert "Traceback" not in result.stderr


def test_percent_test_script_passes_on_the_host():
    """containers/common/test.sh is the image's %test; outside the image it checks everything but the build record."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "NANOFORGE_PYTHON": sys.executable}
    result = subprocess.run(["sh", str(REPO / "containers/common/test.sh"), "--host"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rustbpe: trained a 300-token vocabulary" in result.stdout
    assert result.stdout.rstrip().endswith("test.sh: OK")


# ---------------------------------------------------------------- exec lines

IMAGE = "/scratch/alice/nanoforge.sif"
DATA = "/scratch/alice/nanoforge/data"
RUNS = "/scratch/alice/runs"
RUN = f"{RUNS}/d20"
HOST_NOISE = {"HOME": "/home/alice", "PATH": "/usr/bin:/bin", "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1",
              "LD_LIBRARY_PATH": "/opt/site/lib", "PYTHONPATH": "/home/alice/lib", "LANG": "C.UTF-8"}
GPU_PROFILE = ContainerSettings(runtime="apptainer", image=IMAGE, binds=(DATA, RUNS), nv=True)


def test_exec_line_one_node_training_with_gpus_and_binds():
    env = {**HOST_NOISE, "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_CPUS_PER_TASK": "64",
           "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "NANOFORGE_HOME": "/scratch/alice/nanoforge"}
    argv = ["torchrun", "--standalone", "--nproc_per_node=8", "-m", "nanoforge", "base", "--run-dir", RUN]
    assert GPU_PROFILE.exec_command(argv, env) == [
        "env",
        "APPTAINERENV_CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7",
        "APPTAINERENV_NANOFORGE_HOME=/scratch/alice/nanoforge",
        "APPTAINERENV_SLURM_CPUS_PER_TASK=64",
        "APPTAINERENV_SLURM_JOB_ID=4242",
        "APPTAINERENV_SLURM_PROCID=0",
        "apptainer", "exec", "--nv", "--cleanenv",
        "--bind", f"{DATA}:{DATA}", "--bind", f"{RUNS}:{RUNS}",
        IMAGE,
        "torchrun", "--standalone", "--nproc_per_node=8", "-m", "nanoforge", "base", "--run-dir", RUN,
    ]


def test_exec_line_several_nodes_passes_rendezvous_and_nccl_settings_verbatim():
    env = {**HOST_NOISE, "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NODEID": "1", "SLURM_NNODES": "2",
           "MASTER_ADDR": "gpu01", "MASTER_PORT": "29500", "NCCL_IB_HCA": "=mlx5_0,mlx5_1",
           "NCCL_SOCKET_IFNAME": "ib0", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "OMP_NUM_THREADS": "8",
           "TORCHELASTIC_RUN_ID": "4243", "NCCLX": "not a prefix match", "MASTER": "no underscore"}
    argv = ["torchrun", "--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu01:29500",
            "-m", "nanoforge", "base", "--run-dir", RUN]
    assert GPU_PROFILE.exec_command(argv, env) == [
        "env",
        "APPTAINERENV_MASTER_ADDR=gpu01",
        "APPTAINERENV_MASTER_PORT=29500",
        "APPTAINERENV_NCCL_IB_HCA==mlx5_0,mlx5_1",
        "APPTAINERENV_NCCL_SOCKET_IFNAME=ib0",
        "APPTAINERENV_OMP_NUM_THREADS=8",
        "APPTAINERENV_SLURM_JOB_NODELIST=gpu[01-02]",
        "APPTAINERENV_SLURM_NNODES=2",
        "APPTAINERENV_SLURM_NODEID=1",
        "APPTAINERENV_TORCHELASTIC_RUN_ID=4243",
        "APPTAINERENV_TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
        "apptainer", "exec", "--nv", "--cleanenv",
        "--bind", f"{DATA}:{DATA}", "--bind", f"{RUNS}:{RUNS}",
        IMAGE, *argv,
    ]


def test_exec_line_chat_on_a_login_node_without_gpus():
    env = {**HOST_NOISE, "NANOFORGE_HOME": "/scratch/alice/nanoforge"}
    assert GPU_PROFILE.exec_command(["nanoforge", "chat", "--run-dir", RUN], env, nv=False) == [
        "env", "APPTAINERENV_NANOFORGE_HOME=/scratch/alice/nanoforge",
        "apptainer", "exec", "--cleanenv", "--bind", f"{DATA}:{DATA}", "--bind", f"{RUNS}:{RUNS}",
        IMAGE, "nanoforge", "chat", "--run-dir", RUN,
    ]


def test_exec_line_development_mode_binds_the_source_tree_over_the_installed_one():
    settings = ContainerSettings(runtime="apptainer", image=IMAGE, binds=(f"{DATA}:/data:ro", RUNS, RUNS), nv=True,
                                 dev_source="/home/alice/nanoforge/src")
    assert settings.exec_command(["nanoforge", "base", "--run-dir", RUN], HOST_NOISE) == [
        "apptainer", "exec", "--nv", "--cleanenv",
        "--bind", f"{DATA}:/data:ro", "--bind", f"{RUNS}:{RUNS}",
        "--bind", "/home/alice/nanoforge/src:/opt/nanoforge/src",
        IMAGE, "nanoforge", "base", "--run-dir", RUN,
    ]


def test_exec_line_singularity_uses_its_own_prefix_and_binary():
    line = exec_command("singularity", IMAGE, ["nanoforge", "stage"], binds=[DATA], nv=False, cleanenv=True,
                        env_passthrough={"SLURM_JOB_ID": "7", "HOME": "/home/alice"})
    assert line == ["env", "SINGULARITYENV_SLURM_JOB_ID=7", "singularity", "exec", "--cleanenv",
                    "--bind", f"{DATA}:{DATA}", IMAGE, "nanoforge", "stage"]


def test_exec_line_without_cleanenv_inherits_the_environment():
    line = exec_command("apptainer", IMAGE, ["nanoforge", "web"], binds=[], nv=True, cleanenv=False,
                        env_passthrough={"SLURM_JOB_ID": "7"})
    assert line == ["apptainer", "exec", "--nv", IMAGE, "nanoforge", "web"]


def test_exec_line_extra_env_is_passed_whatever_its_name():
    line = GPU_PROFILE.exec_command(["nanoforge", "mid", "--run-dir", RUN], {"SLURM_JOB_ID": "7", "HOME": "/h"},
                                    extra_env={"PYTHONUNBUFFERED": "1", "NANOFORGE_RUN_NAME": "d20"})
    assert line == ["env", "APPTAINERENV_SLURM_JOB_ID=7", "APPTAINERENV_PYTHONUNBUFFERED=1",
                    "APPTAINERENV_NANOFORGE_RUN_NAME=d20", "apptainer", "exec", "--nv", "--cleanenv",
                    "--bind", f"{DATA}:{DATA}", "--bind", f"{RUNS}:{RUNS}", IMAGE, "nanoforge", "mid", "--run-dir", RUN]


def test_none_runtime_returns_the_command_unchanged():
    settings = ContainerSettings(runtime="none", binds=(DATA,), dev_source="/home/alice/nanoforge/src")
    argv = ["nanoforge", "base", "--run-dir", RUN]
    assert settings.exec_command(argv, {"SLURM_JOB_ID": "1"}) == argv


def test_passthrough_keeps_only_job_variables():
    env = {"SLURM_X": "1", "NCCL_DEBUG": "INFO", "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "16",
           "HOME": "/h", "RANKS": "no", "slurm_lower": "no", "NANOFORGE_RUN": "r"}
    assert list(passthrough_env(env)) == ["LOCAL_RANK", "NANOFORGE_RUN", "NCCL_DEBUG", "RANK", "SLURM_X",
                                          "WORLD_SIZE"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(runtime="docker", image=IMAGE), "container.runtime is 'docker'; use one of apptainer, singularity, none"),
    (dict(runtime="apptainer"), "container.runtime is apptainer but container.image is empty"),
    (dict(runtime="apptainer", image=IMAGE, binds=("data",)), "container bind 'data' needs absolute paths"),
    (dict(runtime="apptainer", image=IMAGE, binds=("/a:/b:rx",)), "container bind '/a:/b:rx' is not SRC[:DST"),
])
def test_bad_container_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)):
        ContainerSettings(**kwargs)


def test_the_none_runtime_runs_a_real_command_end_to_end():
    settings = ContainerSettings(runtime="none")
    argv = settings.exec_command([NANOFORGE, "config", "show", "--preset", "demo", "--json"], dict(os.environ))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["config"]["model"]["depth"] > 0 and shown["plan"]["params"] > 0


# ---------------------------------------------------------------- build command line and records


def test_build_command_uses_fakeroot_when_not_root_and_passes_build_args():
    args = {"GIT_SHA": "abc123", "BUILD_DATE": "2026-11-21T22:00:00Z"}
    assert container.build_command("apptainer", "Apptainer.def", "/scratch/a/nanoforge.sif", is_root=False,
                                   build_args=args) == [
        "apptainer", "build", "--fakeroot", "--build-arg", "GIT_SHA=abc123",
        "--build-arg", "BUILD_DATE=2026-11-21T22:00:00Z", "/scratch/a/nanoforge.sif", "Apptainer.def"]
    assert container.build_command("singularity", "containers/cpu.def", "cpu.sif", is_root=True, force=True,
                                   build_args={}) == [
        "singularity", "build", "--force", "cpu.sif", "containers/cpu.def"]


def test_build_environment_puts_cache_and_tmp_on_scratch_unless_already_set():
    assert container.build_environment("apptainer", "/scratch/a", {}) == {
        "APPTAINER_CACHEDIR": "/scratch/a/apptainer/cache", "APPTAINER_TMPDIR": "/scratch/a/apptainer/tmp"}
    assert container.build_environment("singularity", "/scratch/a", {"SINGULARITY_CACHEDIR": "/fast/cache"}) == {
        "SINGULARITY_TMPDIR": "/scratch/a/singularity/tmp"}
    assert container.build_environment("apptainer", None, {}) == {}
    assert container.default_scratch({"SCRATCH": "/scratch/a", "HOME": "/h"}) == "/scratch/a"
    assert container.default_scratch({"NANOFORGE_SCRATCH": "/s2", "SCRATCH": "/scratch/a"}) == "/s2"


def test_plan_build_labels_the_image_with_the_git_sha_and_date():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    now = dt.datetime(2026, 11, 21, 22, 5, 0, tzinfo=dt.timezone.utc)
    plan = container.plan_build(REPO / "Apptainer.def", Path("/scratch/a/nanoforge.sif"), binary="apptainer",
                                repo=REPO, scratch="/scratch/a", env={}, is_root=False, force=False, now=now)
    assert plan.git_sha in (head, f"{head}-dirty")
    assert plan.argv == ["apptainer", "build", "--fakeroot", "--build-arg", f"GIT_SHA={plan.git_sha}",
                         "--build-arg", "BUILD_DATE=2026-11-21T22:05:00Z", "/scratch/a/nanoforge.sif",
                         str(REPO / "Apptainer.def")]


def test_record_image_writes_sha256_and_json_next_to_the_image(tmp_path):
    sif = tmp_path / "nanoforge.sif"
    sif.write_bytes(b"SIF image bytes" * 1000)
    plan = container.BuildPlan(argv=["apptainer", "build", str(sif), "Apptainer.def"], env={},
                               def_file=REPO / "Apptainer.def", sif=sif, git_sha="abc123",
                               build_date="2026-11-21T22:05:00Z")
    record = container.record_image(plan, REPO)
    digest = subprocess.run(["sha256sum", str(sif)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert (tmp_path / "nanoforge.sif.sha256").read_text() == f"{digest}  nanoforge.sif\n"
    assert json.loads((tmp_path / "nanoforge.sif.json").read_text()) == record == {
        "image": "nanoforge.sif", "sha256": digest, "size_bytes": 15000, "def_file": "Apptainer.def",
        "git_sha": "abc123", "build_date": "2026-11-21T22:05:00Z", "builder": "apptainer"}


def test_image_record_is_read_back_for_provenance_only_while_it_matches(tmp_path):
    sif = tmp_path / "nanoforge.sif"
    sif.write_bytes(b"x" * 100)
    assert container.read_image_record(sif) is None  # never recorded
    plan = container.BuildPlan(argv=["apptainer"], env={}, def_file=tmp_path / "other.def", sif=sif,
                               git_sha="abc", build_date="2026-11-21T22:05:00Z")
    record = container.record_image(plan, REPO)
    assert record["def_file"] == str(tmp_path / "other.def")  # outside the repository: kept as given
    assert container.read_image_record(sif) == record
    sif.write_bytes(b"y" * 101)  # rebuilt without a new record
    assert container.read_image_record(sif) is None


def test_build_without_apptainer_exits_2_with_one_line(tmp_path):
    path_without_apptainer = ":".join(p for p in os.environ["PATH"].split(":")
                                      if not any(Path(p, b).exists() for b in ("apptainer", "singularity")))
    env = {**os.environ, "PATH": path_without_apptainer}
    result = subprocess.run([NANOFORGE, "container", "build", "--out", str(tmp_path / "x.sif")], cwd=REPO,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"nanoforge: error: no apptainer or singularity binary on PATH; {container.INSTALL_HINT}"]
    assert list(tmp_path.iterdir()) == []


def test_build_dry_run_prints_the_command_from_the_repository_root(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("APPTAINER_CACHEDIR", "APPTAINER_TMPDIR")}
    result = subprocess.run([NANOFORGE, "container", "build", "--def", "containers/cpu.def", "--scratch",
                             str(tmp_path), "--dry-run"], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"cd {REPO} && APPTAINER_CACHEDIR={tmp_path}/apptainer/cache "
                           f"APPTAINER_TMPDIR={tmp_path}/apptainer/tmp apptainer build ")
    assert line.endswith(f"{REPO}/nanoforge-cpu.sif {REPO}/containers/cpu.def")
    assert list(tmp_path.iterdir()) == []
