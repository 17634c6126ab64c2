"""Cluster profiles (deploy/clusters/<name>.yaml): where a cluster's hosts, partitions, scratch and container are.

A profile is plain YAML loaded into dataclasses; every key is checked (unknown keys, wrong types and missing
required keys are one clear line naming the file and the key). Secrets and per-user values (mail address, SSH
user) come from `.env.local` (KEY=VALUE lines, never committed) or the environment, so profiles can be shared.

Placeholders in string values: {user} (the SSH user), {scratch} (the resolved scratch root), {cluster_dir}
($NANOFORGE_CLUSTER_DIR, default /tmp/nanoforge-cluster: the local test cluster), {repo} (this checkout).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nanoforge.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[3]
PROFILE_DIR = Path("deploy") / "clusters"
RUNTIMES = ("apptainer", "singularity", "none")
STAGE_NAMES = ("tokenizer", "base", "mid", "sft", "eval", "report")
TIME_FORMAT = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?$")


@dataclass
class Hosts:
    devel: str  # internet access: staging and image builds run here
    login: str  # submits jobs (sbatch, squeue); the same as devel on many clusters


@dataclass
class SSH:
    user: str = ""  # "": NANOFORGE_SSH_USER from .env.local, else $USER
    port: int = 22
    key: str = ""  # "": ssh's defaults (agent, ~/.ssh/id_*)


@dataclass
class Partition:
    name: str
    time_limit: str  # [D-]HH:MM[:SS], the partition's wall-clock limit per job
    cpus_per_node: int
    mem: str = "0"  # --mem per node; "0" asks SLURM for all of the node's memory
    gpus_per_node: int = 0
    gpu_type: str = ""  # for time estimates (nanoforge.plan.GPU_PEAK_FLOPS), e.g. A100-80GB


@dataclass
class Container:
    runtime: str = "none"  # apptainer | singularity | none (stages run on the host, in `venv`)
    image: str = ""  # the .sif on scratch
    binds: list[str] = field(default_factory=list)  # extra SRC[:DST] bind paths (scratch is always bound)
    nv: bool = True  # --nv: the host's NVIDIA driver inside the container
    dev_source: str = ""  # a checkout bound over the image's package (development without rebuilding)


@dataclass
class Profile:
    name: str
    hosts: Hosts
    account: str
    scratch: str  # root for runs/, data/ and images on the cluster's big file system
    partitions: dict[str, Partition]  # keys: gpu, cpu
    ssh: SSH = field(default_factory=SSH)
    container: Container = field(default_factory=Container)
    host_venv: str = ""  # a venv with nanoforge on the login host: submit/status run there (sbatch is on the host)
    venv: str = ""  # runtime none: the venv whose bin/ goes first on PATH inside jobs
    modules: list[str] = field(default_factory=list)  # `module load` lines in every job script
    env: dict[str, str] = field(default_factory=dict)  # exported in every job script (NCCL and friends)
    mail_user: str = ""  # "": NANOFORGE_MAIL_USER from .env.local; empty -> no mail
    mail_type: str = "END,FAIL"
    signal_seconds: int = 600  # USR1 this long before the time limit: enough to write a checkpoint
    max_requeues: int = 10
    stage_partition: dict[str, str] = field(default_factory=dict)  # stage -> gpu|cpu (defaults in slurm.py)
    stage_time: dict[str, str] = field(default_factory=dict)  # stage -> time limit when there is no estimate
    price_per_gpu_hour: float = 0.0
    source: str = ""  # the file it was loaded from (set by the loader, not in YAML)

    @property
    def run_root(self) -> Path:
        return Path(self.scratch) / "runs"

    def run_dir(self, run_name: str) -> Path:
        return self.run_root / run_name

    @property
    def data_dir(self) -> Path:
        return Path(self.scratch) / "data"

    def partition_for(self, stage: str) -> Partition:
        default = "cpu" if stage in ("tokenizer", "report") else "gpu"
        return self.partitions[self.stage_partition.get(stage, default)]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


# --- loading ---------------------------------------------------------------------------------------------------


def find_profile(name_or_path: str) -> Path:
    """A path to a YAML file, or a name looked up in ./deploy/clusters/ and then in this checkout's."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise UserError(f"profile file {candidate} does not exist; give a path or a name from deploy/clusters/")
    for folder in (Path.cwd() / PROFILE_DIR, REPO_ROOT / PROFILE_DIR):
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = sorted(p.stem for p in (REPO_ROOT / PROFILE_DIR).glob("*.yaml"))
    raise UserError(f"no cluster profile '{name_or_path}'; known: {', '.join(known) or 'none'} (deploy/clusters/)")


def read_env_local(*folders: Path) -> dict[str, str]:
    """KEY=VALUE lines from the first `.env.local` found ($NANOFORGE_ENV_FILE wins); # comments allowed."""
    explicit = os.environ.get("NANOFORGE_ENV_FILE")
    paths = [Path(explicit)] if explicit else [f / ".env.local" for f in folders]
    for path in paths:
        if not path.is_file():
            continue
        values = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise UserError(f"{path}:{number}: expected KEY=VALUE, got '{line}'")
            key, value = line.split("=", 1)
            values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
        return values
    return {}


def load_profile(name_or_path: str) -> Profile:
    path = find_profile(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"profile {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"profile {path} must be a mapping of keys (name, hosts, account, ...)")
    profile = _build(Profile, data, str(path), "")
    profile.source = str(path)
    _resolve(profile, read_env_local(Path.cwd(), path.parent.parent.parent, REPO_ROOT))
    _validate(profile, str(path))
    return profile


def profile_from_dict(data: dict, source: str = "<dict>") -> Profile:
    """For a profile already resolved elsewhere (Fabric uploads one to the cluster)."""
    profile = _build(Profile, data, source, "")
    profile.source = source
    _validate(profile, source)
    return profile


def _build(cls, data, source: str, prefix: str):
    if not isinstance(data, dict):
        raise UserError(f"profile {source}: key '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"profile {source}: unknown key '{prefix}{unknown[0]}'; known keys here: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"profile {source}: missing required key '{key}'")
            continue
        values[name] = _convert(data[name], hints[name], source, key)
    return cls(**values)


def _convert(value, typ, source: str, key: str):
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, source, f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"profile {source}: key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(typ)
        return [_convert(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"profile {source}: key '{key}' must be a mapping, got {value!r}")
        _, item = typing.get_args(typ)
        return {str(k): _convert(v, item, source, f"{key}.{k}") for k, v in value.items()}
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. mem: 0, or an unquoted number in env
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(f"profile {source}: key '{key}' must be {typ.__name__}, got {value!r}")
    return value


def _resolve(profile: Profile, env_local: dict[str, str]) -> None:
    """Fill per-user values from .env.local / the environment and expand the placeholders."""
    lookup = {**os.environ, **env_local}
    if not profile.ssh.user:
        profile.ssh.user = lookup.get("NANOFORGE_SSH_USER") or lookup.get("USER") or "root"
    if not profile.mail_user:
        profile.mail_user = lookup.get("NANOFORGE_MAIL_USER", "")
    names = {
        "user": profile.ssh.user,
        "cluster_dir": os.environ.get("NANOFORGE_CLUSTER_DIR", "/tmp/nanoforge-cluster"),
        "repo": str(REPO_ROOT),
    }
    names["scratch"] = _expand(profile.scratch, names, profile.source, "scratch")
    _expand_all(profile, names, profile.source, "")


def _expand(text: str, names: dict[str, str], source: str, key: str) -> str:
    def replace(match):
        name = match.group(1)
        if name not in names:
            raise UserError(f"profile {source}: key '{key}' uses unknown placeholder {{{name}}}; "
                            f"known: {', '.join('{' + n + '}' for n in names)}")
        return names[name]

    return os.path.expanduser(re.sub(r"\{(\w+)\}", replace, text))


def _expand_all(obj, names, source, prefix):
    for f in dataclasses.fields(obj):
        if f.name == "source":
            continue
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(value, str):
            setattr(obj, f.name, _expand(value, names, source, key))
        elif isinstance(value, list):
            setattr(obj, f.name, [_expand(v, names, source, key) if isinstance(v, str) else v for v in value])
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, str):
                    value[k] = _expand(v, names, source, f"{key}.{k}")
                elif dataclasses.is_dataclass(v):
                    _expand_all(v, names, source, f"{key}.{k}.")
        elif dataclasses.is_dataclass(value):
            _expand_all(value, names, source, f"{key}.")


def parse_time_limit(text: str, source: str = "", key: str = "time_limit") -> int:
    """SLURM's [D-]HH:MM[:SS] -> minutes (rounded up)."""
    match = TIME_FORMAT.match(text.strip())
    if not match:
        raise UserError(f"profile {source}: key '{key}' must look like HH:MM:SS or D-HH:MM:SS, got '{text}'")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def format_minutes(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def _validate(profile: Profile, source: str) -> None:
    if profile.container.runtime not in RUNTIMES:
        raise UserError(f"profile {source}: key 'container.runtime' must be one of {', '.join(RUNTIMES)}, "
                        f"got '{profile.container.runtime}'")
    if profile.container.runtime != "none" and not profile.container.image:
        raise UserError(f"profile {source}: key 'container.image' is required for runtime "
                        f"'{profile.container.runtime}' (the .sif path on scratch)")
    for kind in ("gpu", "cpu"):
        if kind not in profile.partitions:
            raise UserError(f"profile {source}: missing required key 'partitions.{kind}'")
    for kind, part in profile.partitions.items():
        parse_time_limit(part.time_limit, source, f"partitions.{kind}.time_limit")
        if part.cpus_per_node <= 0:
            raise UserError(f"profile {source}: key 'partitions.{kind}.cpus_per_node' must be positive")
        if part.gpus_per_node < 0:
            raise UserError(f"profile {source}: key 'partitions.{kind}.gpus_per_node' must be >= 0")
    if profile.partitions["gpu"].gpus_per_node <= 0:
        raise UserError(f"profile {source}: key 'partitions.gpu.gpus_per_node' must be positive")
    for stage, kind in profile.stage_partition.items():
        if stage not in STAGE_NAMES:
            raise UserError(f"profile {source}: key 'stage_partition.{stage}' is not a stage "
                            f"({', '.join(STAGE_NAMES)})")
        if kind not in profile.partitions:
            raise UserError(f"profile {source}: key 'stage_partition.{stage}' names no partition ('{kind}')")
    for stage, limit in profile.stage_time.items():
        if stage not in STAGE_NAMES:
            raise UserError(f"profile {source}: key 'stage_time.{stage}' is not a stage ({', '.join(STAGE_NAMES)})")
        parse_time_limit(limit, source, f"stage_time.{stage}")
    if profile.signal_seconds < 0 or profile.max_requeues < 0:
        raise UserError(f"profile {source}: keys 'signal_seconds' and 'max_requeues' must be >= 0")
    if not Path(profile.scratch).is_absolute():
        raise UserError(f"profile {source}: key 'scratch' must be an absolute path, got '{profile.scratch}'")
    if profile.container.runtime == "none" and profile.venv and not Path(profile.venv).is_absolute():
        raise UserError(f"profile {source}: key 'venv' must be an absolute path, got '{profile.venv}'")
    if profile.mail_user and "@" not in profile.mail_user:
        raise UserError(f"profile {source}: mail address '{profile.mail_user}' has no '@' "
                        f"(key 'mail_user' or NANOFORGE_MAIL_USER in .env.local)")
