"""Metrics exporter overhead as a fraction of a demo training step (target: under 1%).

    python benchmarks/metrics_overhead.py [--calls 2000] [--steps 3]

Measures, in one process: the time of a real demo-preset optimizer step (GPT + Muon/AdamW, the demo batch of
8192 tokens, random tokens instead of the data loader), and the time of `MetricsSink.log` with every output on
(stdout line to a file as under SLURM, JSONL, Prometheus) for each Prometheus mode. The http mode is scraped
once a second by a thread while it is timed; the textfile mode's background writes are timed separately and
reported as the share of one core they take. Prints a table and writes benchmarks/results/metrics_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from nanoforge.config import make_config
from nanoforge.metrics.sink import MetricsSink
from nanoforge.model.gpt import GPT, GPTConfig
from nanoforge.model.optim import apply_schedules, build_optimizers
from nanoforge.plan import derive_plan

RESULTS = Path(__file__).resolve().parent / "results" / "metrics_overhead.json"


def demo_step_seconds(steps: int, device: torch.device) -> tuple[float, dict]:
    """Median wall time of one demo optimizer step (all micro-batches, backward, optimizer), after a warm-up."""
    import contextlib

    cfg = make_config("demo")
    plan = derive_plan(cfg, 1)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_model_config(cfg.model)).to(device)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    optimizers = build_optimizers(model, cfg.train, model.config.n_embd)
    rows, seq = cfg.train.device_batch_size, cfg.model.sequence_len
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        for _ in range(plan.grad_accum):
            x = torch.randint(0, cfg.model.vocab_size, (rows, seq), device=device)
            y = torch.randint(0, cfg.model.vocab_size, (rows, seq), device=device)
            with autocast():
                loss = model(x, y)
            (loss / plan.grad_accum).backward()
        apply_schedules(optimizers, step, plan.steps, cfg.train)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        if step > 0:  # the first step pays for allocations and lazy initialisation
            times.append(time.perf_counter() - t0)
    shape = {"params": plan.params, "tokens_per_step": plan.total_batch_size, "grad_accum": plan.grad_accum,
             "torch_threads": torch.get_num_threads(), "device": str(device)}
    return statistics.median(times), shape


def values_for(step: int) -> dict[str, float]:
    return {
        "loss": 4.0 - step * 1e-4, "lr": 0.02, "grad_norm": 0.8, "tokens_per_second": 12345.0 + step,
        "mfu": 0.12, "step_seconds": 0.21, "data_wait_seconds": 0.001, "memory_bytes": 1.2e9,
        "tokens_total": 8192 * step, "eta_seconds": 130.0, "cost_usd": 0.01, "total_steps": 400,
    }


def time_sink(run_dir: Path, overrides: list[str], calls: int) -> dict:
    cfg = make_config("demo", overrides)
    run_dir.mkdir(parents=True)
    with open(run_dir / "stdout.log", "w") as stream:
        sink = MetricsSink(run_dir, "base", cfg, stream=stream)
        stop = threading.Event()
        scraper = None
        scrapes = 0
        if cfg.metrics.prometheus == "http":
            url = f"http://127.0.0.1:{sink.prometheus.port}/metrics"

            def scrape():
                nonlocal scrapes
                while not stop.wait(1.0):
                    urllib.request.urlopen(url, timeout=5).read()
                    scrapes += 1

            scraper = threading.Thread(target=scrape, daemon=True)
            scraper.start()
        sink.log(0, values_for(0))  # warm-up: children created, files opened
        start = time.perf_counter()
        for step in range(1, calls + 1):
            sink.log(step, values_for(step))
        per_call = (time.perf_counter() - start) / calls
        stop.set()
        if scraper is not None:
            scraper.join()
        sink.close()
    result = {"per_log_seconds": per_call}
    if scraper is not None:
        result["scrapes_during_timing"] = scrapes
    if cfg.metrics.prometheus == "textfile":
        # the background write, timed on its own: what one flush of the full registry costs
        exporter = sink.prometheus
        start = time.perf_counter()
        for _ in range(50):
            exporter.flush()
        result["textfile_write_seconds"] = (time.perf_counter() - start) / 50
        result["textfile_write_every_seconds"] = cfg.metrics.push_every_seconds
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="sink.log calls timed per mode")
    parser.add_argument("--steps", type=int, default=3, help="demo steps timed (after one warm-up step)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    load_before = os.getloadavg()
    step_s, shape = demo_step_seconds(args.steps, torch.device(args.device))
    modes = {
        "stdout+jsonl only": ["metrics.prometheus=none"],
        "+ textfile (default, every 10 s)": ["metrics.prometheus=textfile"],
        "+ textfile written every log": ["metrics.prometheus=textfile", "metrics.push_every_seconds=0"],
        "+ http, scraped every 1 s": ["metrics.prometheus=http"],
    }
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(modes.items()):
            rows[name] = time_sink(Path(tmp) / f"run{i}", overrides, args.calls)
            rows[name]["fraction_of_demo_step"] = rows[name]["per_log_seconds"] / step_s

    print(f"demo step on {shape['device']}: {step_s * 1000:.0f} ms ({shape['tokens_per_step']} tokens, "
          f"{shape['params'] / 1e6:.1f}M params, {shape['torch_threads']} torch threads, "
          f"load average {load_before[0]:.1f})")
    print(f"{'outputs':<34} {'per sink.log':>13} {'of demo step':>13}")
    for name, row in rows.items():
        print(f"{name:<34} {row['per_log_seconds'] * 1e6:>10.1f} us {100 * row['fraction_of_demo_step']:>12.4f}%")
    tf = rows["+ textfile (default, every 10 s)"]
    write_share = tf["textfile_write_seconds"] / tf["textfile_write_every_seconds"]
    print(f"textfile write (background thread): {tf['textfile_write_seconds'] * 1000:.2f} ms per write, "
          f"{100 * write_share:.4f}% of one core at one write per {tf['textfile_write_every_seconds']:.0f} s")
    worst = max(row["fraction_of_demo_step"] for row in rows.values())
    # the default output's cost in absolute terms: which steps would be fast enough to feel it (GPU demo steps
    # are far shorter than CPU ones)
    default_call = rows["+ textfile (default, every 10 s)"]["per_log_seconds"]
    break_even = default_call / 0.01
    print(f"worst case: {100 * worst:.4f}% of a demo step per logged step (target < 1%): "
          f"{'OK' if worst < 0.01 else 'OVER TARGET'}")
    print(f"with the default outputs, logging every step stays under 1% for any step longer than "
          f"{break_even * 1000:.1f} ms")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "metrics_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "load_average_1min": load_before[0]},
        "demo_step_seconds": step_s,
        "demo_shape": shape,
        "calls_per_mode": args.calls,
        "modes": rows,
        "textfile_background_core_share": write_share,
        "worst_fraction_of_step": worst,
        "step_seconds_at_1_percent_default_outputs": break_even,
        "target_fraction": 0.01,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
