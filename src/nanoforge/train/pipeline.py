"""`nanoforge pipeline --preset demo --run-dir DIR`: every stage of a run on this machine, in order.

tokenizer -> base -> mid -> sft -> eval -> report, each as its own `python -m nanoforge <stage>` process, so each
is the same resumable command a cluster job runs: a finished stage (DONE marker) is skipped, an interrupted one
resumes from its checkpoint, and the first stage that fails stops the pipeline with its exit code (75 after a
stop signal, which is forwarded to the running stage). The demo corpus is built first when it is missing.
Each stage's wall time goes to a table at the end and to <run_dir>/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nanoforge.errors import EXIT_STOPPED

# (name, command words, DONE marker relative to the run dir or None when the command decides itself)
PIPELINE = (
    ("tokenizer", ("tokenizer", "train"), "tokenizer/DONE"),
    ("base", ("base",), "checkpoints/base/DONE"),
    ("mid", ("mid",), "checkpoints/mid/DONE"),
    ("sft", ("sft",), "checkpoints/sft/DONE"),
    ("eval", ("eval",), None),  # eval/DONE lists the stages it measured; `nanoforge eval` skips those itself
    ("report", ("report",), None),
)


@dataclass
class StageRecord:
    stage: str
    status: str  # ran | done earlier | not available | stopped (exit 75, resumable) | failed
    seconds: float | None = None
    exit_code: int | None = None
    cpu_seconds: float | None = None  # user + system time of the stage's processes: the load-independent cost


def register(subparsers) -> None:
    from nanoforge.cli import add_config_args

    p = subparsers.add_parser(
        "pipeline", help="run every stage locally: tokenizer, base, mid, sft, eval, report",
        description="Run the whole pipeline on this machine, each stage as its own resumable process; finished "
                    "stages are skipped, so running it again resumes. Exit code: 0, or the failing stage's.")
    p.add_argument("--run-dir", required=True, help="the run directory (created on first use)")
    add_config_args(p)
    p.set_defaults(handler=run_pipeline)


def command_parser(root: argparse.ArgumentParser, words: tuple[str, ...]) -> argparse.ArgumentParser | None:
    """The parser of `nanoforge <words>`, or None when this nanoforge has no such command (stages land over
    time; a missing one is skipped with a note)."""
    parser = root
    for word in words:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or word not in sub.choices:
            return None
        parser = sub.choices[word]
    return parser


def takes_config(parser: argparse.ArgumentParser) -> bool:
    return "--set" in parser._option_string_actions


class Forwarder:
    """SIGTERM/SIGUSR1 to the pipeline go to the running stage, which checkpoints and exits 75."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def _forward(self, signum, frame):
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self, argv: list[str]) -> int:
        self.child = subprocess.Popen(argv)
        try:
            while True:
                try:
                    code = self.child.wait()
                    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
                except KeyboardInterrupt:  # Ctrl-C reaches the stage too (same process group); wait for it
                    continue
        finally:
            self.child = None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ensure_demo_corpus(cfg, forwarder: Forwarder) -> StageRecord | None:
    """Build the demo corpus if this run trains on it and it is not there yet."""
    if cfg.data.corpus != "demo":
        return None
    out = cfg.data_dir() / "corpora" / "demo"
    if any(out.glob("shard_*.parquet")):
        return None
    print(f"== demo corpus: building {out}", flush=True)
    start, cpu = time.time(), children_cpu_seconds()
    code = forwarder.run([sys.executable, "-m", "nanoforge", "data", "build-demo", "--out", str(out)])
    return StageRecord("demo corpus", "ran" if code == 0 else "failed", time.time() - start, code,
                       children_cpu_seconds() - cpu)


def print_table(records: list[StageRecord], total: float) -> None:
    print("\nstage         status              wall time    CPU time")
    for r in records:
        wall = f"{r.seconds:8.1f} s" if r.seconds is not None else "       -  "
        cpu = f"{r.cpu_seconds:8.1f} s" if r.cpu_seconds is not None else ""
        print(f"{r.stage:<13} {r.status:<17} {wall}  {cpu}")
    print(f"{'total':<13} {'':<17} {total:8.1f} s  (this invocation)", flush=True)


def write_record(run_dir: Path, records: list[StageRecord], total: float, exit_code: int) -> None:
    path = run_dir / "pipeline.json"
    data = {"finished_at": time.time(), "exit_code": exit_code, "total_seconds": total,
            "stages": [asdict(r) for r in records]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def earlier_records(run_dir: Path) -> dict[str, dict]:
    """Times measured by an earlier invocation (the one that finished a stage), kept for stages done now."""
    try:
        data = json.loads((run_dir / "pipeline.json").read_text())
        return {s["stage"]: s for s in data["stages"] if s.get("seconds") is not None}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run_pipeline(args: argparse.Namespace) -> int:
    from nanoforge.train.run import resolve_config

    run_dir = Path(args.run_dir).resolve()
    cfg = resolve_config(run_dir, args.preset, args.overrides, args.config)  # bad config: exit 2 before anything
    config_args = [*(["--preset", args.preset] if args.preset else []),
                   *(["--config", args.config] if args.config else [])]
    for item in args.overrides:
        config_args += ["--set", item]
    from nanoforge.cli import build_parser

    root = build_parser()
    earlier = earlier_records(run_dir)
    records: list[StageRecord] = []
    forwarder = Forwarder()
    started = time.time()
    exit_code = 0
    try:
        corpus = ensure_demo_corpus(cfg, forwarder)
        if corpus is not None:
            records.append(corpus)
            exit_code = corpus.exit_code or 0
        for name, words, marker in PIPELINE if exit_code == 0 else ():
            if marker and (run_dir / marker).exists():
                before = earlier.get(name, {})
                records.append(StageRecord(name, "done earlier", before.get("seconds"),
                                           cpu_seconds=before.get("cpu_seconds")))
                continue
            parser = command_parser(root, words)
            if parser is None:
                print(f"== {name}: `nanoforge {' '.join(words)}` is not part of this nanoforge yet; skipping",
                      flush=True)
                records.append(StageRecord(name, "not available"))
                continue
            argv = [sys.executable, "-m", "nanoforge", *words, "--run-dir", str(run_dir)]
            if takes_config(parser):
                argv += config_args
            print(f"== {name}: {' '.join(['nanoforge', *argv[3:]])}", flush=True)
            start, cpu = time.time(), children_cpu_seconds()
            code = forwarder.run(argv)
            status = "ran" if code == 0 else "stopped" if code == EXIT_STOPPED else "failed"
            records.append(StageRecord(name, status, time.time() - start, code, children_cpu_seconds() - cpu))
            if code != 0:
                exit_code = code
                break
    finally:
        forwarder.restore()
    total = time.time() - started
    if run_dir.is_dir():
        write_record(run_dir, records, total, exit_code)
    print_table(records, total)
    if exit_code:
        failed = records[-1].stage
        how = "it was stopped and checkpointed" if exit_code == EXIT_STOPPED else f"it exited with {exit_code}"
        print(f"\nthe pipeline stopped at '{failed}': {how}. Run the same command again to resume.", flush=True)
        return exit_code
    print(f"\nTalk to the model:\n  nanoforge chat --run-dir {run_dir}\n  nanoforge web --run-dir {run_dir}"
          f"   (then open http://127.0.0.1:8000)", flush=True)
    return 0
