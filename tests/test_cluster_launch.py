"""nanoforge.cluster.launch: torchrun whose exit code is the workers' (75 after a stop, 2 for bad input) and
which passes SIGUSR1 on to the workers instead of dying of it. Real torchrun, real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

WORKER = """
import os, signal, sys, time
stop = False
def on_usr1(*_):
    global stop
    stop = True
open(os.path.join(sys.argv[2], "started-" + os.environ.get("RANK", "0")), "w").close()
time.sleep(float(os.environ.get("SLOW_START", "0")))  # like importing torch before the handler exists
signal.signal(signal.SIGUSR1, on_usr1)
open(os.path.join(sys.argv[2], "ready-" + os.environ.get("RANK", "0")), "w").close()
for _ in range(600):
    if stop:
        sys.exit(75)
    if sys.argv[1] != "wait" and os.environ.get("RANK", "1") == "1":
        sys.exit(int(sys.argv[1]))
    time.sleep(0.05)
sys.exit(0)
"""


def launch(tmp_path, *worker_args, single: bool = False, slow_start: float = 0) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    how = ["--single", "--", sys.executable] if single else ["--standalone", "--nproc_per_node=2"]
    return subprocess.Popen([sys.executable, "-m", "nanoforge.cluster.launch", *how,
                             str(script), *worker_args, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "SLOW_START": str(slow_start)})


def wait_for_files(tmp_path, proc, names, timeout=120):
    deadline = time.monotonic() + timeout
    while not all((tmp_path / name).exists() for name in names):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)


def test_a_failing_worker_exit_code_becomes_the_launcher_exit_code(tmp_path):
    proc = launch(tmp_path, "2")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out  # plain torchrun would say 1


def test_usr1_reaches_the_workers_and_75_comes_back(tmp_path):
    proc = launch(tmp_path, "wait")
    wait_for_files(tmp_path, proc, ["ready-0", "ready-1"])
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out


def test_usr1_before_the_worker_can_take_it_is_held_back_not_fatal(tmp_path):
    """The signal arrives while the workers are still starting (no handler yet): they must not die of it."""
    proc = launch(tmp_path, "wait", slow_start=2)
    wait_for_files(tmp_path, proc, ["started-0", "started-1"])
    assert not (tmp_path / "ready-0").exists()
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out


def test_single_process_mode_keeps_the_exit_code_and_forwards_usr1(tmp_path):
    (tmp_path / "fail").mkdir()
    (tmp_path / "stop").mkdir()
    failing = launch(tmp_path / "fail", "3", single=True)
    assert failing.wait(timeout=60) == 3
    stopping = launch(tmp_path / "stop", "wait", single=True, slow_start=1)
    wait_for_files(tmp_path / "stop", stopping, ["started-0"])
    stopping.send_signal(signal.SIGUSR1)
    out, _ = stopping.communicate(timeout=60)
    assert stopping.returncode == 75, out
