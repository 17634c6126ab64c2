"""Pipeline latency on the local SLURM cluster: from `nanoforge submit` to the first training step.

    scripts/local-cluster up && python benchmarks/cluster_latency.py [--repeats 2]

Submits the demo tokenizer -> base chain (tiny model, 2-process torchrun with gloo on the 2 fake GPUs) and
takes every time from the real records: submit time here, job start/end from `scontrol show job`, the first
training step from <run_dir>/metrics/base.jsonl. Columns: submit -> tokenizer start (scheduling), tokenizer
run, the afterok hop (tokenizer end -> base start), base start -> first step (preflight, torchrun, imports,
model build) and the total. Prints a table and writes benchmarks/results/cluster_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cluster_latency.json"
TINY = ["model.depth=2", "model.head_dim=32", "model.vocab_size=512", "model.sequence_len=64",
        "tokenizer.vocab_size=512", "tokenizer.max_chars=1000000", "train.device_batch_size=4",
        "train.total_batch_size=512", "train.num_iterations=8", "train.eval_every=4", "train.eval_tokens=1024",
        "train.save_every=4", "train.sample_every=0", "data.tokenizer_threads=1", "metrics.prometheus=none"]


def scontrol(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(token.split("=", 1) for token in out.split() if "=" in token)


def epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").timestamp()


def wait_done(job_id: str, timeout: float = 600) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = scontrol(job_id)
        if fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            return fields
        time.sleep(0.5)
    raise SystemExit(f"job {job_id} did not finish within {timeout} s")


def one_run(cluster_dir: Path) -> dict[str, float]:
    run = f"bench-{uuid.uuid4().hex[:8]}"
    sets = [arg for item in TINY for arg in ("--set", item)]
    submitted = time.time()
    proc = subprocess.run([sys.executable, "-m", "nanoforge", "submit", "--profile", "local", "--run-name", run,
                           "--preset", "demo", "--stages", "tokenizer,base", *sets], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    run_dir = cluster_dir / "scratch" / "runs" / run
    jobs = json.loads((run_dir / "slurm_jobs.json").read_text())["stages"]
    tok = wait_done(jobs["tokenizer"]["job_id"])
    base = wait_done(jobs["base"]["job_id"])
    if tok["JobState"] != "COMPLETED" or base["JobState"] != "COMPLETED":
        raise SystemExit(f"jobs did not complete: {tok['JobState']}, {base['JobState']} (logs in {run_dir}/logs)")
    first_step = next(json.loads(line)["time"] for line in (run_dir / "metrics" / "base.jsonl").read_text().splitlines()
                      if json.loads(line).get("kind") == "train")
    return {
        "submit_to_tokenizer_start_s": epoch(tok["StartTime"]) - submitted,
        "tokenizer_run_s": epoch(tok["EndTime"]) - epoch(tok["StartTime"]),
        "afterok_hop_s": epoch(base["StartTime"]) - epoch(tok["EndTime"]),
        "base_start_to_first_step_s": first_step - epoch(base["StartTime"]),
        "submit_to_first_step_s": first_step - submitted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cluster_dir = Path(os.environ.get("NANOFORGE_CLUSTER_DIR", "/tmp/nanoforge-cluster"))
    env_file = cluster_dir / "env"
    if not env_file.exists():
        raise SystemExit(f"no local cluster at {cluster_dir}: run scripts/local-cluster up first")
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            os.environ[key] = value
    rows = [one_run(cluster_dir) for _ in range(args.repeats)]
    keys = list(rows[0])
    print(f"{'repeat':<8}" + "".join(f"{k.removesuffix('_s'):>28}" for k in keys))
    for number, row in enumerate(rows, 1):
        print(f"{number:<8}" + "".join(f"{row[k]:>28.1f}" for k in keys))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "host": platform.node(), "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "SLURM times have 1 s resolution; CPUs shared with other work", "runs": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
