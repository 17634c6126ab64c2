"""The whole demo pipeline's wall time (target: under 20 minutes on 2 CPU cores; base alone under 10).

Runs `nanoforge pipeline --preset demo` in a fresh run dir and NANOFORGE_HOME (so the demo corpus build is
counted), then prints each stage's wall and CPU time and writes them, with the machine's core count and load
average before and after, to benchmarks/results/demo_pipeline.json. On a shared machine the wall time
depends on what else runs; the CPU time (user + system of each stage's processes) does not, and CPU time /
cores is what the stage would take alone on this machine if it kept every core busy.

    python benchmarks/demo_pipeline.py [--keep DIR] [--set KEY=VALUE ...] [--out benchmarks/results/demo_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_TOTAL_S, TARGET_BASE_S = 20 * 60, 10 * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_pipeline.json"))
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="demo-pipeline-"))
    root.mkdir(parents=True, exist_ok=True)
    run_dir = root / "run"
    load_before = os.getloadavg()
    started = time.time()
    cmd = [sys.executable, "-m", "nanoforge", "pipeline", "--preset", "demo", "--run-dir", str(run_dir)]
    for item in args.overrides:
        cmd += ["--set", item]
    code = subprocess.call(cmd, env={**os.environ, "NANOFORGE_HOME": str(root / "home")})
    total = time.time() - started
    record = json.loads((run_dir / "pipeline.json").read_text())
    stages = {s["stage"]: s for s in record["stages"]}
    cores = os.cpu_count() or 1
    result = {
        "exit_code": code,
        "cores": cores,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "total_wall_seconds": total,
        "total_cpu_seconds": sum(s.get("cpu_seconds") or 0 for s in record["stages"]),
        "stages": record["stages"],
        "base_under_target": (stages.get("base", {}).get("seconds") or 1e9) < TARGET_BASE_S,
        "total_under_target": total < TARGET_TOTAL_S,
        "overrides": args.overrides,
    }
    print(f"\n{'stage':<13} {'wall s':>9} {'CPU s':>9} {'CPU s / cores':>14}")
    for s in record["stages"]:
        cpu = s.get("cpu_seconds") or 0
        print(f"{s['stage']:<13} {s['seconds'] or 0:9.1f} {cpu:9.1f} {cpu / cores:14.1f}")
    print(f"{'total':<13} {total:9.1f} {result['total_cpu_seconds']:9.1f} {result['total_cpu_seconds'] / cores:14.1f}")
    print(f"targets: total < {TARGET_TOTAL_S} s: {result['total_under_target']}, "
          f"base < {TARGET_BASE_S} s: {result['base_under_target']} (load average before/after: "
          f"{load_before[0]:.1f} / {result['load_average_after'][0]:.1f} on {cores} cores)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
