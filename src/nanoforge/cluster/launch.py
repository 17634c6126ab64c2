"""`python -m nanoforge.cluster.launch <torchrun arguments>`: torchrun, with two changes the batch script needs.

1. The job gets the workers' exit code. torchrun exits 1 whenever a worker fails, so a stage that checkpointed
   after a stop signal (75) or rejected its input (2) would look like a crash and never be requeued. Here the
   exit code is the one all failed workers share, else the first failure's (the root cause).
2. SIGUSR1 reaches the workers. torchrun dies on USR1 (the default action) or, with --signals-to-handle, kills
   its workers with it and raises; either way nobody is left to report 75. Here USR1 is forwarded to the worker
   processes and torchrun keeps waiting for them to save and exit.
Everything else (arguments, rendezvous, environment) is torchrun's own code.

A worker gets USR1 only once it catches it (SigCgt in /proc/<pid>/status): a signal that arrives while the
stage is still importing torch would otherwise kill it instead of asking for a checkpoint. A stage that never
catches USR1 (one that cannot checkpoint) keeps running until SLURM's time limit.

`--single -- CMD ...` runs one plain process the same way (the tokenizer and report stages need no torchrun).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                found.extend(int(p) for p in handle.read().split())
        except OSError:
            continue
    return found


USR1_MASK = 1 << (signal.SIGUSR1 - 1)


def catches_usr1(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & USR1_MASK)
    except OSError:
        pass
    return False


class StopForwarder:
    """Takes USR1 in this process and hands it to each child as soon as that child catches USR1."""

    def __init__(self, poll_seconds: float = 0.2):
        self.requested = threading.Event()
        self.delivered: set[int] = set()
        self.poll_seconds = poll_seconds

    def install(self) -> None:
        signal.signal(signal.SIGUSR1, lambda *_: self.requested.set())
        threading.Thread(target=self._deliver, name="usr1-forwarder", daemon=True).start()

    def _deliver(self) -> None:
        self.requested.wait()
        while True:
            for child in _children(os.getpid()):
                if child not in self.delivered and catches_usr1(child):
                    try:
                        os.kill(child, signal.SIGUSR1)
                    except ProcessLookupError:
                        continue
                    self.delivered.add(child)
            time.sleep(self.poll_seconds)


def exit_code_of(failures: dict) -> int:
    """The workers' shared exit code, else the first failure's; negative codes (killed by a signal) -> 128+n."""
    codes = [f.exitcode for f in failures.values()]
    if codes and all(c == codes[0] for c in codes):
        code = codes[0]
    else:
        first = min(failures.values(), key=lambda f: f.timestamp)
        code = first.exitcode
    if code < 0:
        return 128 - code
    return code or 1


def run_single(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("nanoforge.cluster.launch --single: give the command to run after --", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    StopForwarder().install()
    if argv[:1] == ["--single"]:
        return run_single(argv[1:])

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        return exit_code_of(exc.failures)
    except SignalException as exc:
        # SIGTERM (scancel, the hard time limit): torchrun has passed it on and waited for the workers.
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
