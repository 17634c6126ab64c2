"""Shared fixtures. Integration fixtures start the real components (SLURM, sshd, Prometheus, HTTP, Chromium);
when one cannot start, tests fail in CI (CI=true) and skip elsewhere, with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"

# A model small enough that a few steps take seconds on one CPU core, with every feature of the real one.
TINY = [
    "model.depth=2",
    "model.head_dim=32",
    "model.vocab_size=512",
    "model.sequence_len=64",
    "tokenizer.vocab_size=512",
    "tokenizer.max_chars=1000000",
    "train.device_batch_size=4",
    "train.total_batch_size=512",
    "train.num_iterations=8",
    "train.eval_every=4",
    "train.eval_tokens=1024",
    "train.save_every=2",
    "train.sample_every=0",
    "train.muon_momentum_warmup=4",
    "data.tokenizer_threads=1",
    "metrics.prometheus=none",
]


def missing_infrastructure(what: str) -> None:
    """Fail in CI, skip locally: CI must never pass by skipping an integration area."""
    if IN_CI:
        pytest.fail(f"required test infrastructure is missing in CI: {what}")
    pytest.skip(f"infrastructure missing: {what}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        missing_infrastructure(f"{SHARED_DATA} (the shared test data folder)")
    return SHARED_DATA


def nanoforge(*args: str, env: dict | None = None, check: bool = True, timeout: float = 600,
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as users do."""
    proc = subprocess.run([sys.executable, "-m", "nanoforge", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"nanoforge {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A small deterministic demo corpus (docs-only prose, a few MB) under <data_dir>/corpora/demo."""
    data_dir = tmp_path_factory.mktemp("data")
    nanoforge("data", "build-demo", "--out", str(data_dir / "corpora" / "demo"), "--size-mb", "3")
    return data_dir


@pytest.fixture(scope="session")
def tiny_tokenizer_run(tiny_data_dir, tmp_path_factory) -> Path:
    """A run directory with a trained 512-token tokenizer; copy it for each test that trains."""
    run_dir = tmp_path_factory.mktemp("tok") / "run"
    nanoforge("tokenizer", "train", "--run-dir", str(run_dir), "--preset", "demo",
              *tiny_overrides(tiny_data_dir))
    return run_dir


def tiny_overrides(data_dir: Path, *extra: str) -> list[str]:
    out: list[str] = []
    for item in [*TINY, f"data.data_dir={data_dir}", *extra]:
        out += ["--set", item]
    return out


@pytest.fixture
def tiny_run(tiny_tokenizer_run, tmp_path):
    """Factory: a fresh run dir holding the shared tokenizer and config, ready for `nanoforge base`."""
    import shutil

    counter = iter(range(1000))

    def make(name: str | None = None) -> Path:
        dest = tmp_path / (name or f"run{next(counter)}")
        shutil.copytree(tiny_tokenizer_run, dest)
        return dest

    return make


@pytest.fixture(scope="session")
def trained_tiny_run(tiny_tokenizer_run, tiny_data_dir, tmp_path_factory) -> Path:
    """A run with a finished 20-step TINY base stage, trained once per session. Read-only for tests: copy it
    (shutil.copytree) before writing into it."""
    import shutil

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(tiny_tokenizer_run, run_dir)
    nanoforge("base", "--run-dir", str(run_dir),
              *tiny_overrides(tiny_data_dir, "train.num_iterations=20", "train.eval_every=5",
                              "train.save_every=10"))
    return run_dir


@pytest.fixture(scope="session")
def local_cluster():
    """The real local SLURM + sshd + HTTP cluster (scripts/local-cluster up, idempotent); see tests/local_cluster.py."""
    from local_cluster import start_local_cluster

    return start_local_cluster()


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_run):
    """The shared tiny run's tokenizer."""
    from nanoforge.tokenizer.bpe import Tokenizer

    return Tokenizer.load(tiny_tokenizer_run / "tokenizer")


@pytest.fixture(scope="module")
def dist():
    """A single-process distributed context (no process group) for evaluators that take one."""
    from nanoforge.train.distributed import init_distributed

    return init_distributed()
