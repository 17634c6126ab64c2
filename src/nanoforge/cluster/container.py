"""`nanoforge container build`: build the image with apptainer (or singularity) and record what was built.

The command line is made by `build_command` and `build_environment`, pure functions, so it can be shown and
tested without a binary. The build itself is one subprocess; spython's `Client.build` is not used because it only
runs a binary named `singularity`, prepends sudo by default, and cannot take the build environment as an argument.

Afterwards `<sif>.sha256` (sha256sum format) and `<sif>.json` (definition file, git SHA, date, size, sha256) sit
next to the image, so a run can put the image's identity into its provenance.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from nanoforge.errors import UserError

BINARIES = ("apptainer", "singularity")
INSTALL_HINT = ("install Apptainer (https://apptainer.org/docs/admin/main/installation.html), "
                "or on a cluster `module load apptainer`")


@dataclass(frozen=True)
class BuildPlan:
    """Everything one build needs: the argv, the environment additions, and where the outputs go."""

    argv: list[str]
    env: dict[str, str]
    def_file: Path
    sif: Path
    git_sha: str
    build_date: str


def find_binary(which=shutil.which) -> str | None:
    """apptainer first (the maintained name), then singularity."""
    for name in BINARIES:
        if which(name):
            return name
    return None


def build_command(binary: str, def_file: str | Path, sif: str | Path, *, is_root: bool,
                  build_args: Mapping[str, str], force: bool = False) -> list[str]:
    """`apptainer build [--fakeroot] [--force] --build-arg K=V ... SIF DEF`.

    --fakeroot when not root: unprivileged users on the cluster build with their subuid mapping. Build args fill
    the definition's `{{ NAME }}` template variables (Apptainer >= 1.3, SingularityCE >= 4).
    """
    argv = [binary, "build"]
    if not is_root:
        argv.append("--fakeroot")
    if force:
        argv.append("--force")
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    argv += [str(sif), str(def_file)]
    return argv


def build_environment(binary: str, scratch: str | Path | None, env: Mapping[str, str]) -> dict[str, str]:
    """The cache and tmp folders for the build, on scratch: layers and the squashfs take tens of GB, far more
    than a home quota. Values the caller already set win; with no scratch given, nothing is added."""
    prefix = "APPTAINER" if binary == "apptainer" else "SINGULARITY"
    if scratch is None:
        return {}
    base = Path(scratch) / binary
    added = {}
    for var, sub in ((f"{prefix}_CACHEDIR", "cache"), (f"{prefix}_TMPDIR", "tmp")):
        if not env.get(var):
            added[var] = str(base / sub)
    return added


def default_scratch(env: Mapping[str, str]) -> str | None:
    """The scratch folder from the environment: $NANOFORGE_SCRATCH, then the common cluster names."""
    for var in ("NANOFORGE_SCRATCH", "SCRATCH"):
        if env.get(var):
            return env[var]
    return None


def git_sha(repo: Path) -> str:
    """HEAD's SHA, with `-dirty` when the tree has uncommitted changes (the image then holds them too)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def plan_build(def_file: Path, sif: Path, *, binary: str, repo: Path, scratch: str | None,
               env: Mapping[str, str], is_root: bool, force: bool, now: _dt.datetime | None = None) -> BuildPlan:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    sha = git_sha(repo)
    date = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    argv = build_command(binary, def_file, sif, is_root=is_root, force=force,
                         build_args={"GIT_SHA": sha, "BUILD_DATE": date})
    return BuildPlan(argv=argv, env=build_environment(binary, scratch, env), def_file=def_file, sif=sif,
                     git_sha=sha, build_date=date)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def record_image(plan: BuildPlan, repo: Path) -> dict:
    """Write <sif>.sha256 and <sif>.json; return the record."""
    sif = plan.sif
    digest = sha256_file(sif)
    try:
        def_file = str(plan.def_file.resolve().relative_to(repo.resolve()))
    except ValueError:
        def_file = str(plan.def_file)
    record = {
        "image": sif.name,
        "sha256": digest,
        "size_bytes": sif.stat().st_size,
        "def_file": def_file,
        "git_sha": plan.git_sha,
        "build_date": plan.build_date,
        "builder": plan.argv[0],
    }
    sif.with_name(sif.name + ".sha256").write_text(f"{digest}  {sif.name}\n")
    sif.with_name(sif.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_image_record(sif: str | Path) -> dict | None:
    """The build record of an image for a run's provenance, without hashing gigabytes per job.

    None when there is no <sif>.json or it no longer describes the file (size changed: rebuilt or copied over
    without its record); then provenance should say the image is unrecorded rather than guess.
    """
    sif = Path(sif)
    try:
        record = json.loads(sif.with_name(sif.name + ".json").read_text())
        size = sif.stat().st_size
    except (OSError, ValueError):
        return None
    return record if record.get("size_bytes") == size else None


def run_build(plan: BuildPlan, repo: Path) -> dict:
    """Run the build from the repository root (the definitions' %files paths are relative to it)."""
    if plan.sif.exists() and "--force" not in plan.argv:
        raise UserError(f"{plan.sif} already exists; pass --force to replace it or --out to write another file")
    # Records of an earlier image at this path would describe the wrong file if this build fails.
    for stale in (plan.sif.with_name(plan.sif.name + ".sha256"), plan.sif.with_name(plan.sif.name + ".json")):
        stale.unlink(missing_ok=True)
    for var in ("APPTAINER_CACHEDIR", "APPTAINER_TMPDIR", "SINGULARITY_CACHEDIR", "SINGULARITY_TMPDIR"):
        if var in plan.env:
            Path(plan.env[var]).mkdir(parents=True, exist_ok=True)
    result = subprocess.run(plan.argv, cwd=repo, env={**os.environ, **plan.env})
    if result.returncode != 0:
        raise UserError(f"`{' '.join(plan.argv)}` failed with exit code {result.returncode}; "
                        "see its output above (a partial image is not recorded)")
    if not plan.sif.exists():
        raise UserError(f"the build finished but {plan.sif} is missing; check the build output above")
    return record_image(plan, repo)
