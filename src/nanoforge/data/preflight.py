"""Preflight: open every asset a stage will read, the way it will read it, with the network off.

Runs on the devel node before anything is queued and again at the start of every job, so a missing or damaged
file costs seconds instead of a queued job. It is cheap on purpose: parquet files are checked by their footer
and first row group, the eval bundle by core.yaml and the first line of each task file, sizes against the
staging lock. Full sha256 checks are staging's job (`nanoforge stage` re-verifies every file).

While it runs, any socket connection to a non-loopback address fails, and the usual offline switches of
Hugging Face libraries are set, so an asset that a stage would quietly download is reported as missing here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nanoforge.config import RunConfig
from nanoforge.data.manifest import (
    STAGES,
    assets_for_stages,
    build_manifest,
    is_local_corpus,
    local_corpus_command,
)
from nanoforge.errors import PreflightError, UserError

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "WANDB_MODE": "offline"}
NEEDS_TOKENIZER = ("base", "mid", "sft", "eval")  # stages that read <run_dir>/tokenizer/
NEEDS_LOCAL_CORPUS = ("tokenizer", "base", "eval")


@dataclass(frozen=True)
class Requirement:
    """Something a stage reads: where it is, how to load it, and the command that provides it."""

    name: str
    path: Path
    kind: str  # parquet | eval_bundle | tokenizer | local_corpus
    fix: str
    columns: tuple[str, ...] = ()
    size: int | None = None  # from the staging lock, when known


@dataclass(frozen=True)
class Problem:
    requirement: Requirement
    state: str  # missing | damaged
    detail: str

    def format(self) -> str:
        return f"  {self.state:<8} {self.requirement.path}  ({self.requirement.name}: {self.detail})"


def stage_requirements(cfg: RunConfig, run_dir: str | os.PathLike, stage: str | None = None) -> list[Requirement]:
    """What `stage` reads; with stage=None, what the whole pipeline needs staged before it is queued (which
    leaves out what earlier stages produce, such as the tokenizer)."""
    from nanoforge.data.staging import StagingLock

    if stage is not None and stage not in STAGES:
        raise UserError(f"unknown stage '{stage}'; choose from {', '.join(STAGES)}")
    stages = STAGES if stage is None else (stage,)
    run_dir = Path(run_dir)
    data_dir = cfg.data_dir()
    fetch = f"nanoforge stage --run-dir {run_dir}"
    lock = StagingLock(data_dir) if (data_dir / "staging.lock.json").exists() else None
    reqs: list[Requirement] = []
    for asset in assets_for_stages(build_manifest(cfg), stages):
        entry = lock.get(asset.download_path) if lock else None
        size = asset.size if asset.size is not None else (entry or {}).get("size")
        reqs.append(Requirement(name=asset.name, path=data_dir / asset.dest, kind=asset.kind, fix=fetch,
                                columns=asset.columns, size=size if asset.unpack == "none" else None))
    if is_local_corpus(cfg) and set(stages) & set(NEEDS_LOCAL_CORPUS):
        reqs.append(Requirement(name=f"local corpus '{cfg.data.corpus}'", path=data_dir / "corpora" / cfg.data.corpus,
                                kind="local_corpus", fix=local_corpus_command(cfg), columns=("text",)))
    if stage in NEEDS_TOKENIZER:
        reqs.append(Requirement(name="tokenizer", path=run_dir / "tokenizer", kind="tokenizer",
                                fix=f"nanoforge tokenizer train --run-dir {run_dir}"))
    return reqs


# ---------------------------------------------------------------------------------------------------------------
# Loading each kind of asset


def _check_parquet(path: Path, columns: tuple[str, ...], size: int | None) -> str | None:
    import pyarrow.parquet as pq

    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} != {size} recorded when it was staged"
    try:
        pf = pq.ParquetFile(path)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            return f"no column(s) {', '.join(missing)}; has {', '.join(pf.schema_arrow.names)}"
        if pf.metadata.num_row_groups == 0:
            return "no row groups"
        pf.read_row_group(0, columns=list(columns) or None)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        return f"cannot be read as parquet: {exc}"
    return None


def _check_eval_bundle(path: Path) -> str | None:
    import yaml

    core = path / "core.yaml"
    if not core.is_file():
        return "no core.yaml"
    try:
        tasks = yaml.safe_load(core.read_text())["icl_tasks"]
        uris = list(dict.fromkeys(task["dataset_uri"] for task in tasks))  # two tasks may share a file
    except Exception as exc:
        return f"core.yaml is not a CORE task list: {exc}"
    bad = []
    for uri in uris:
        task_file = path / "eval_data" / uri
        try:
            with open(task_file, encoding="utf-8") as f:
                json.loads(f.readline())
        except FileNotFoundError:
            bad.append(f"eval_data/{uri} missing")
        except (ValueError, UnicodeDecodeError):
            bad.append(f"eval_data/{uri} does not start with a JSON line")
    if bad:
        return f"{len(bad)} of {len(uris)} task files: " + ", ".join(bad)
    return None


def _check_tokenizer(path: Path) -> str | None:
    if not any(path.iterdir()):
        return "empty folder"
    try:
        from nanoforge.tokenizer.bpe import Tokenizer
    except ImportError:
        return None  # the tokenizer module is not part of this install; the folder exists, which is all we can say
    try:
        Tokenizer.load(path)
    except Exception as exc:
        return f"cannot be loaded: {exc}"
    return None


def _check_local_corpus(path: Path, columns: tuple[str, ...]) -> str | None:
    shards = sorted(path.glob("shard_*.parquet"))
    if len(shards) < 2:
        return f"{len(shards)} shard(s); needs at least 2 (training + validation)"
    for shard in shards:
        problem = _check_parquet(shard, columns, None)
        if problem:
            return f"{shard.name}: {problem}"
    return None


def check_requirement(req: Requirement) -> Problem | None:
    exists = req.path.is_dir() if req.kind in ("eval_bundle", "tokenizer", "local_corpus") else req.path.is_file()
    if not exists:
        return Problem(req, "missing", "not found")
    if req.kind == "parquet":
        detail = _check_parquet(req.path, req.columns, req.size)
    elif req.kind == "eval_bundle":
        detail = _check_eval_bundle(req.path)
    elif req.kind == "tokenizer":
        detail = _check_tokenizer(req.path)
    elif req.kind == "local_corpus":
        detail = _check_local_corpus(req.path, req.columns)
    else:
        raise ValueError(f"unknown requirement kind {req.kind}")
    return Problem(req, "damaged", detail) if detail else None


# ---------------------------------------------------------------------------------------------------------------
# Network off


def _is_loopback(host) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def network_disabled():
    """Within: offline switches set, and connecting or resolving anything but loopback raises OSError."""
    saved_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def refuse(what):
        raise OSError(f"network access during preflight ({what}): every asset must already be on disk")

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(f"connect to {address[0]}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            refuse(f"connect to {address[0]}")
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host if isinstance(host, str) else host.decode()):
            refuse(f"resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
            real_connect, real_connect_ex, real_getaddrinfo)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PreflightReport:
    requirements: list[Requirement]
    problems: list[Problem]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems

    def fixes(self) -> list[str]:
        return list(dict.fromkeys(p.requirement.fix for p in self.problems))

    def format(self) -> str:
        if self.ok:
            return f"preflight ok: {len(self.requirements)} asset(s) loaded in {self.seconds:.1f} s"
        lines = [f"preflight failed: {len(self.problems)} of {len(self.requirements)} asset(s) missing or damaged"]
        lines += [p.format() for p in sorted(self.problems, key=lambda p: str(p.requirement.path))]
        lines += [f"fix: {cmd}" for cmd in self.fixes()]
        return "\n".join(lines)


def run_preflight(cfg: RunConfig, run_dir: str | os.PathLike, stage: str | None = None,
                  threads: int = 8) -> PreflightReport:
    """Check everything `stage` (or the whole pipeline) reads, offline. Returns the report; does not raise
    for missing assets (see `require`)."""
    start = time.perf_counter()
    with network_disabled():
        reqs = stage_requirements(cfg, run_dir, stage)
        with ThreadPoolExecutor(max_workers=threads) as pool:  # pyarrow reads release the GIL
            results = list(pool.map(check_requirement, reqs))
    problems = [p for p in results if p is not None]
    return PreflightReport(reqs, problems, time.perf_counter() - start)


def require(cfg: RunConfig, run_dir: str | os.PathLike, stage: str | None = None) -> PreflightReport:
    """run_preflight, raising PreflightError (exit 3) with the list and the fix when anything is missing."""
    report = run_preflight(cfg, run_dir, stage)
    if not report.ok:
        raise PreflightError(report.format())
    return report
