"""`python -m nanoforge.cluster.launch <torchrun arguments>`: torchrun, with two changes the batch script needs.

1. The job gets the workers' exit code. torchrun exits 1 whenever a worker fails, so a stage that checkpointed
   after a stop signal (75) or rejected its input (2) would look like a crash and never be requeued. Here the
   exit code is the one all failed workers share, else the first failure's (the root cause).
2. SIGUSR1 reaches the workers. torchrun dies on USR1 (the default action) or, with --signals-to-handle, kills
   its workers with it and raises; either way nobody is left to report 75. Here USR1 is forwarded to the worker
   processes and torchrun keeps waiting for them to save and exit.
Everything else (arguments, rendezvous, environment) is torchrun's own code.
"""

from __future__ import annotations

import os
import signal
import sys


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


def _forward(signum, _frame) -> None:
    for child in _children(os.getpid()):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass


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


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    signal.signal(signal.SIGUSR1, _forward)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        return exit_code_of(exc.failures)
    except SignalException as exc:
        # SIGTERM (scancel, the hard time limit): torchrun has passed it on and waited for the workers.
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
