"""The container runtime: turns `nanoforge <stage> ...` into the line that runs it inside the image.

Kinds: `apptainer`, `singularity` (same flags, older name) and `none` (run on the host, which is what tests and
laptops use). Everything here is a pure function of the settings and an environment dict, so the exact line can
be printed (`--dry-run`) and tested without an apptainer binary.

Passing variables through `--cleanenv`: we use the `APPTAINERENV_<NAME>` / `SINGULARITYENV_<NAME>` prefix on the
runtime's own environment (`env APPTAINERENV_X=v apptainer exec ...`), not `--env X=v`. `--env` is parsed as a
key=value map: a value holding a second `=` is split as CSV (e.g. `NCCL_IB_HCA==mlx5_0`, `SLURM_TRES_PER_TASK=cpu=8`)
and surrounding quotes are trimmed, so values would not arrive verbatim. The prefixed variables always do, on every
Apptainer and Singularity >= 3.x, and they take precedence over the image's %environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from nanoforge.errors import UserError

RUNTIMES = ("apptainer", "singularity", "none")

# Where the image installs nanoforge (editable): binding a checkout's src/ here runs that code with the image's deps.
IMAGE_SOURCE_DIR = "/opt/nanoforge/src"

# What a job needs to see inside --cleanenv: the scheduler's view, the rendezvous, NCCL tuning, our own settings.
PASSTHROUGH_PREFIXES = ("SLURM_", "NCCL_", "MASTER_", "NANOFORGE_", "TORCHELASTIC_", "TORCH_NCCL_")
PASSTHROUGH_NAMES = frozenset({
    "CUDA_VISIBLE_DEVICES", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
    "OMP_NUM_THREADS",
})

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ContainerSettings:
    """A cluster profile's `container:` block (keys runtime, image, binds, nv, dev_source)."""

    runtime: str = "none"
    image: str = ""
    binds: tuple[str, ...] = field(default_factory=tuple)
    nv: bool = True
    dev_source: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "binds", tuple(self.binds))
        validate_settings(self)

    def exec_command(self, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                     nv: bool | None = None, cleanenv: bool = True,
                     extra_env: Mapping[str, str] | None = None) -> list[str]:
        """This profile's exec line; `nv=False` for commands on a node without GPUs (chat on a login node)."""
        return exec_command(self.runtime, self.image, argv, binds=self.binds, nv=self.nv if nv is None else nv,
                            cleanenv=cleanenv, env_passthrough=env or {}, dev_source=self.dev_source,
                            extra_env=extra_env)


def validate_settings(settings: ContainerSettings) -> None:
    if settings.runtime not in RUNTIMES:
        raise UserError(f"container.runtime is {settings.runtime!r}; use one of {', '.join(RUNTIMES)}")
    if settings.runtime != "none" and not settings.image:
        raise UserError(f"container.runtime is {settings.runtime} but container.image is empty; "
                        "set it to the .sif path (build one with `nanoforge container build`)")
    for bind in settings.binds:
        normalize_bind(bind)


def normalize_bind(bind: str) -> str:
    """`SRC` -> `SRC:SRC` (same path inside), `SRC:DST[:ro|rw]` kept; both paths must be absolute."""
    parts = str(bind).split(":")
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise UserError(f"container bind {bind!r} is not SRC[:DST[:ro|rw]]; fix container.binds")
    if not all(p.startswith("/") for p in parts[:2]):
        raise UserError(f"container bind {bind!r} needs absolute paths on both sides; fix container.binds")
    return ":".join(parts)


def passthrough_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `env` a job must still see inside --cleanenv, sorted by name."""
    return {
        name: env[name] for name in sorted(env)
        if _ENV_NAME.match(name) and (name in PASSTHROUGH_NAMES or name.startswith(PASSTHROUGH_PREFIXES))
    }


def exec_command(runtime: str, image: str, argv: Sequence[str], binds: Sequence[str] = (), nv: bool = False,
                 cleanenv: bool = True, env_passthrough: Mapping[str, str] | None = None,
                 dev_source: str | None = None, extra_env: Mapping[str, str] | None = None) -> list[str]:
    """The argv that runs `argv` (e.g. ["nanoforge", "base", "--run-dir", RUN]) with this runtime.

    `env_passthrough` is the environment of the process that will run the line (for SLURM: the task's). With
    `cleanenv`, the variables that match the pass-through rules are handed in through the runtime's env prefix.
    `extra_env` is always handed in, whatever its names (e.g. PYTHONUNBUFFERED); with `none` the caller sets it.
    `dev_source` binds a checkout's src/ over the image's installed source (development mode).
    """
    if runtime not in RUNTIMES:
        raise UserError(f"container runtime {runtime!r} is unknown; use one of {', '.join(RUNTIMES)}")
    if runtime == "none":
        return list(argv)
    if not image:
        raise UserError(f"container runtime {runtime} needs an image (.sif path); set container.image")
    if not argv:
        raise UserError("nothing to run in the container: the command is empty")

    prefix = "APPTAINERENV_" if runtime == "apptainer" else "SINGULARITYENV_"
    passed = passthrough_env(env_passthrough or {}) if cleanenv else {}
    for name, value in (extra_env or {}).items():
        if not _ENV_NAME.match(name):
            raise UserError(f"environment variable name {name!r} is not valid; use letters, digits and _")
        passed[name] = value
    line: list[str] = []
    if passed:
        line += ["env"] + [f"{prefix}{name}={value}" for name, value in passed.items()]
    line += [runtime, "exec"]
    if nv:
        line.append("--nv")
    if cleanenv:
        line.append("--cleanenv")
    all_binds = [normalize_bind(b) for b in binds]
    if dev_source:
        if not str(dev_source).startswith("/"):
            raise UserError(f"container dev_source {dev_source!r} must be an absolute path to a checkout's src/")
        all_binds.append(f"{dev_source}:{IMAGE_SOURCE_DIR}")
    for bind in dict.fromkeys(all_binds):  # a path bound twice would be mounted twice; keep the first
        line += ["--bind", bind]
    line.append(image)
    line += list(argv)
    return line
