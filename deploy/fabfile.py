"""Fabric tasks: drive a cluster from a laptop or login node over SSH (`fab -l` lists them).

    fab setup build-image                       # once: folders on scratch, the host venv, the image
    fab stage-data --preset d20 submit-run      # assets on the devel node, then the SLURM pipeline
    fab status | logs | cancel | fetch-report | chat

Every task takes --profile (deploy/clusters/<name>.yaml or a path) and --run (the run name); defaults come from
NANOFORGE_PROFILE and NANOFORGE_RUN in the environment or .env.local, so a chain like `fab stage-data submit-run`
needs them only once. With `fab -H user@host:port -i key TASK` the given host is used instead of the profile's.

Where things run (DESIGN.md): `nanoforge stage`/`preflight`/`chat` inside the container (or the profile's venv
for runtime none); `nanoforge submit` and `runs ...` in the login host's venv, because sbatch and squeue exist
on the host and not in the image.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import tarfile
from pathlib import Path

import yaml
from fabric import Connection, task
from invoke.exceptions import Exit

REPO = Path(__file__).resolve().parent.parent


# --- helpers ---------------------------------------------------------------------------------------------------


def _defaults() -> dict[str, str]:
    from nanoforge.cluster.profile import read_env_local

    return {**read_env_local(Path.cwd(), REPO), **os.environ}


def _profile(name: str):
    from nanoforge.cluster.profile import load_profile
    from nanoforge.errors import UserError

    name = name or _defaults().get("NANOFORGE_PROFILE", "")
    if not name:
        raise Exit("fab: say which cluster: --profile NAME (or NANOFORGE_PROFILE in .env.local)", code=2)
    try:
        return load_profile(name)
    except UserError as exc:
        raise Exit(f"fab: {exc}", code=2) from None


def _run_name(run: str) -> str:
    from nanoforge.cluster.slurm import check_run_name
    from nanoforge.errors import UserError

    run = run or _defaults().get("NANOFORGE_RUN", "")
    if not run:
        raise Exit("fab: say which run: --run NAME (or NANOFORGE_RUN in .env.local)", code=2)
    try:
        return check_run_name(run)
    except UserError as exc:
        raise Exit(f"fab: {exc}", code=2) from None


def _connect(c, profile, role: str) -> Connection:
    """The connection `fab -H` gave us, else the profile's devel or login host."""
    if isinstance(c, Connection):
        return c
    kwargs = {"look_for_keys": False, "allow_agent": False, "key_filename": profile.ssh.key} if profile.ssh.key else {}
    return Connection(getattr(profile.hosts, role), user=profile.ssh.user, port=profile.ssh.port,
                      connect_kwargs=kwargs)


def _in_runtime(profile, argv: list[str], gpus: bool = False) -> str:
    """The remote shell line running `nanoforge ...` in the profile's container (or its venv for `none`)."""
    from nanoforge.cluster.runtime import ContainerSettings

    env = {"NANOFORGE_HOME": profile.scratch}
    c = profile.container
    if c.runtime == "none":
        program = f"{profile.venv}/bin/{argv[0]}" if profile.venv else argv[0]
        line = ["env", *(f"{k}={v}" for k, v in env.items()), program, *argv[1:]]
    else:
        settings = ContainerSettings(runtime=c.runtime, image=c.image, binds=[profile.scratch, *c.binds], nv=c.nv,
                                     dev_source=c.dev_source or None)
        line = settings.exec_command(argv, env, nv=c.nv and gpus)
    return " ".join(shlex.quote(w) for w in line)


def _on_host(profile, argv: list[str]) -> str:
    """`nanoforge ...` in the login host's venv (where sbatch is)."""
    program = f"{profile.host_venv}/bin/nanoforge" if profile.host_venv else "nanoforge"
    return " ".join(shlex.quote(w) for w in [program, *argv[1:]])


def _remote_profile_path(profile) -> str:
    return f"{profile.scratch}/profiles/{profile.name}.yaml"


def _upload_profile(conn: Connection, profile) -> str:
    """The resolved profile (placeholders filled, mail from .env.local) goes to scratch for the remote side."""
    path = _remote_profile_path(profile)
    conn.run(f"mkdir -p {shlex.quote(str(Path(path).parent))}", hide=True)
    text = "# written by `fab` from " + profile.source + "; edit that file, not this one\n"
    text += yaml.safe_dump(profile.to_dict(), sort_keys=False)
    conn.put(io.BytesIO(text.encode()), path)
    return path


def _config_args(preset: str, overrides: str) -> list[str]:
    args = ["--preset", preset] if preset else []
    for item in filter(None, (o.strip() for o in (overrides or "").split(","))):
        args += ["--set", item]
    return args


def _run(conn: Connection, line: str, **kwargs):
    result = conn.run(line, warn=True, **kwargs)
    if result.failed:
        raise Exit(f"fab: remote command failed with exit code {result.exited}: {line}", code=result.exited or 1)
    return result


PROFILE_HELP = "cluster profile: deploy/clusters/<name>.yaml or a path (default $NANOFORGE_PROFILE)"
RUN_HELP = "run name; the run folder is <scratch>/runs/<name> (default $NANOFORGE_RUN)"
CONFIG_HELP = {"preset": "run config preset for a new run (demo, d20, d26, ...)",
               "overrides": "comma-separated config overrides, e.g. train.device_batch_size=16,model.depth=12"}


# --- tasks -----------------------------------------------------------------------------------------------------


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP})
def setup(c, profile="", run=""):
    """Create the scratch folders, upload the profile, sync the code and make the login host's venv."""
    prof = _profile(profile)
    conn = _connect(c, prof, "login")
    folders = " ".join(shlex.quote(f"{prof.scratch}/{d}") for d in ("runs", "data", "images", "profiles", "code"))
    _run(conn, f"mkdir -p {folders}", hide=True)
    _upload_profile(conn, prof)
    _sync_code(conn, prof)
    venv = prof.host_venv
    if venv and conn.run(f"test -x {shlex.quote(venv)}/bin/nanoforge", warn=True, hide=True).failed:
        # Only what submit/status need (no torch): the stages themselves run in the image.
        code = shlex.quote(f"{prof.scratch}/code")
        _run(conn, f"python3 -m venv {shlex.quote(venv)} && {shlex.quote(venv)}/bin/pip install -q pyyaml tqdm "
                   f"&& {shlex.quote(venv)}/bin/pip install -q --no-deps -e {code}")
    _run(conn, _on_host(prof, ["nanoforge", "--version"]))
    if prof.container.runtime != "none" and conn.run(f"test -f {shlex.quote(prof.container.image)}",
                                                      warn=True, hide=True).failed:
        print(f"no image at {prof.container.image} yet: run `fab build-image --profile {prof.name}`")


def _sync_code(conn: Connection, prof) -> None:
    """This checkout's committed tree (git archive HEAD) unpacked into <scratch>/code."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar.gz", "HEAD"], capture_output=True)
    if archive.returncode != 0:
        raise Exit(f"fab: git archive failed: {archive.stderr.decode().strip()}", code=1)
    remote = f"{prof.scratch}/code.tar.gz"
    conn.put(io.BytesIO(archive.stdout), remote)
    code = shlex.quote(f"{prof.scratch}/code")
    _run(conn, f"mkdir -p {code} && tar -xzf {shlex.quote(remote)} -C {code} && rm -f {shlex.quote(remote)}", hide=True)


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "force": "rebuild even if the image exists"})
def build_image(c, profile="", run="", force=False):
    """Build the Apptainer image on the devel node (internet) into the profile's image path."""
    prof = _profile(profile)
    if prof.container.runtime == "none":
        print(f"profile {prof.name} uses runtime 'none': there is no image to build")
        return
    conn = _connect(c, prof, "devel")
    _sync_code(conn, prof)
    argv = ["nanoforge", "container", "build", "--def", "Apptainer.def", "--out", prof.container.image,
            "--scratch", prof.scratch] + (["--force"] if force else [])
    _run(conn, f"cd {shlex.quote(prof.scratch + '/code')} && {_on_host(prof, argv)}")


STAGES_HELP = "comma-separated subset of tokenizer,base,mid,sft,eval,report (default: all)"


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, **CONFIG_HELP, "jobs": "parallel downloads (default 8)",
            "stages": "only what these stages read: " + STAGES_HELP})
def stage_data(c, profile="", run="", preset="", overrides="", jobs=8, stages=""):
    """Download every asset the run needs on the devel node (creates the run's config.yaml on first use)."""
    prof = _profile(profile)
    name = _run_name(run)
    conn = _connect(c, prof, "devel")
    run_dir = str(prof.run_dir(name))
    argv = ["nanoforge", "stage", "--run-dir", run_dir, *_config_args(preset, overrides), "--jobs", str(jobs),
            "--no-progress"] + (["--stages", stages] if stages else [])
    result = _run(conn, _in_runtime(prof, argv))
    # Corpora built from local text (the demo) are not downloaded: build them here, where staging happens.
    match = re.search(r"built locally: (nanoforge [^)\n]+)", result.stdout)
    if match:
        _run(conn, _in_runtime(prof, shlex.split(match.group(1))))


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, **CONFIG_HELP,
            "stages": STAGES_HELP,
            "nodes": "nodes for the GPU stages (default 1)", "dry_run": "print the batch scripts, submit nothing"})
def submit_run(c, profile="", run="", preset="", overrides="", stages="", nodes=1, dry_run=False):
    """On the login node: preflight (offline asset check), then queue the stages as an afterok chain."""
    prof = _profile(profile)
    name = _run_name(run)
    conn = _connect(c, prof, "login")
    remote_profile = _upload_profile(conn, prof)
    config = _config_args(preset, overrides)
    argv = ["nanoforge", "submit", "--profile", remote_profile, "--run-name", name, *config, "--nodes", str(nodes)]
    if stages:
        argv += ["--stages", stages]
    # Preflight in the container (where the stages will load the assets), then sbatch on the host.
    _run(conn, _in_runtime(prof, argv + ["--preflight-only"]))
    _run(conn, _on_host(prof, argv + (["--dry-run"] if dry_run else [])))


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "json": "print the status as JSON"})
def status(c, profile="", run="", json=False):
    """Each stage's state, job id, elapsed time and last metrics line (squeue/scontrol/sacct)."""
    prof = _profile(profile)
    conn = _connect(c, prof, "login")
    argv = ["nanoforge", "runs", "status", "--profile", _upload_profile(conn, prof), "--run-name", _run_name(run)]
    _run(conn, _on_host(prof, argv + (["--json"] if json else [])))


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "stage": "which stage (default: the latest that started)",
            "lines": "lines from the end (default 50)"})
def logs(c, profile="", run="", stage="", lines=50):
    """The tail of a stage's job log."""
    prof = _profile(profile)
    conn = _connect(c, prof, "login")
    argv = ["nanoforge", "runs", "logs", "--profile", _upload_profile(conn, prof), "--run-name", _run_name(run),
            "--lines", str(lines)] + (["--stage", stage] if stage else [])
    _run(conn, _on_host(prof, argv))


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP})
def cancel(c, profile="", run=""):
    """scancel every job of the run that has not finished."""
    prof = _profile(profile)
    conn = _connect(c, prof, "login")
    argv = ["nanoforge", "runs", "cancel", "--profile", _upload_profile(conn, prof), "--run-name", _run_name(run)]
    _run(conn, _on_host(prof, argv))


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "dest": "local folder (default reports/<run>)"})
def fetch_report(c, profile="", run="", dest=""):
    """Copy <run_dir>/report/ (report.md and plots) back to this machine."""
    prof = _profile(profile)
    name = _run_name(run)
    conn = _connect(c, prof, "login")
    run_dir = prof.run_dir(name)
    if conn.run(f"test -d {shlex.quote(str(run_dir / 'report'))}", warn=True, hide=True).failed:
        raise Exit(f"fab: {run_dir}/report does not exist yet: the report stage has not run (fab status)", code=1)
    remote = f"/tmp/nanoforge-report-{name}-{os.getpid()}.tar.gz"
    _run(conn, f"tar -czf {shlex.quote(remote)} -C {shlex.quote(str(run_dir))} report", hide=True)
    buffer = io.BytesIO()
    try:
        conn.get(remote, buffer)
    finally:
        conn.run(f"rm -f {shlex.quote(remote)}", warn=True, hide=True)
    target = Path(dest or Path("reports") / name)
    target.mkdir(parents=True, exist_ok=True)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:gz") as archive:
        archive.extractall(target, filter="data")
    print(f"report of run {name} -> {target / 'report'}")


@task(help={"profile": PROFILE_HELP, "run": RUN_HELP, "stage": "checkpoint to talk to: base, mid or sft "
            "(default: the newest)", "prompt": "ask one question and print the answer (no interactive session)"})
def chat(c, profile="", run="", stage="", prompt=""):
    """Talk to the run's model in the terminal (runs on the login node, on its CPU or GPU)."""
    prof = _profile(profile)
    conn = _connect(c, prof, "login")
    argv = ["nanoforge", "chat", "--run-dir", str(prof.run_dir(_run_name(run)))] + (["--stage", stage] if stage else [])
    if prompt:
        _run(conn, _in_runtime(prof, argv + ["--prompt", prompt]))
    else:
        conn.run(_in_runtime(prof, argv), pty=True, warn=True)
