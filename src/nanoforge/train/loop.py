"""The one training loop for every stage (base, mid, sft, workflows).

A stage supplies how to build its model, its batches and its evaluation (`Stage`); the loop owns everything that
must be the same everywhere: gradient accumulation, gradient all-reduce, schedules, clipping, metrics, checkpoints,
exact resume, stop signals (exit 75) and the DONE marker.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from nanoforge.config import RunConfig
from nanoforge.errors import EXIT_OK, EXIT_STOPPED
from nanoforge.model.optim import apply_schedules, build_optimizers
from nanoforge.plan import Plan
from nanoforge.train import checkpoint as ckpt
from nanoforge.train.distributed import (Dist, all_reduce_gradients, all_reduce_sum, any_rank, barrier,
                                          gather_objects)
from nanoforge.train.hardware import device_peak_flops, memory_bytes


@dataclass
class RunContext:
    run_dir: Path
    cfg: RunConfig
    plan: Plan
    dist: Dist

    def autocast(self):
        dev = self.dist.device
        if dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 0):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def log(self, *args, **kwargs) -> None:
        if self.dist.is_main:
            print(*args, **kwargs, flush=True)


@dataclass
class Stage:
    name: str
    num_iterations: int
    build_model: Callable[[RunContext], torch.nn.Module]
    # (ctx, saved loader state or None) -> object with next_batch(micro_step), state_dict(), close()
    build_batches: Callable[[RunContext, dict | None], object]
    evaluate: Callable[[RunContext, torch.nn.Module], dict[str, float]] | None = None
    sample: Callable[[RunContext, torch.nn.Module], dict[str, str]] | None = None
    extra_done: dict = field(default_factory=dict)
    # A stage's own view of the run (mid/sft train with their own batch size, learning rates and schedule); the
    # loop then runs under it. None: the run's context as opened.
    context: RunContext | None = None


class StopRequest:
    """SIGUSR1 (SLURM's warning before the time limit) or SIGTERM: finish the step, save, exit 75."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _maybe_compile(ctx: RunContext, model):
    mode = ctx.cfg.train.compile
    if mode == "on" or (mode == "auto" and ctx.dist.device.type == "cuda"):
        return torch.compile(model, dynamic=False)
    return model


def _grad_norm(params) -> float:
    norms = [p.grad.detach().norm(2) for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


@torch.no_grad()
def replica_fingerprint(model) -> list[float]:
    """Per-parameter sums in float64: equal on every rank exactly when the replicas are (practically) identical."""
    return [float(p.double().sum()) + float(p.double().square().sum()) for p in model.parameters()]


def run_stage(ctx: RunContext, stage: Stage) -> int:
    ctx = stage.context or ctx
    d, cfg, tc = ctx.dist, ctx.cfg, ctx.cfg.train
    if ckpt.is_done(ctx.run_dir, stage.name):
        ctx.log(f"stage {stage.name} is already done ({ckpt.stage_dir(ctx.run_dir, stage.name) / ckpt.DONE}); skipping")
        return EXIT_OK

    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = stage.build_model(ctx).to(d.device)
    params = list(model.parameters())
    optimizers = build_optimizers(model, tc, model.config.n_embd)
    total_steps = stage.num_iterations

    resumed = ckpt.latest_valid(ctx.run_dir, stage.name, log=ctx.log)
    step, tokens_total, elapsed_before, loader_state, restarts = 0, 0, 0.0, None, 0
    if resumed:
        path, meta = resumed
        model.load_state_dict(ckpt.load_file(path, "model.pt", d.device))
        for opt, state in zip(optimizers, ckpt.load_file(path, "optim.pt", d.device)):
            opt.load_state_dict(state)
        train_state = ckpt.load_file(path, "train_state.pt")
        step, tokens_total = meta["step"], meta["tokens_total"]
        elapsed_before, restarts = meta.get("elapsed_seconds", 0.0), meta.get("restarts", 0) + 1
        loader_state = train_state["loader"]
        _set_rng_state(train_state["rng"][d.rank % len(train_state["rng"])], d.device)
        ctx.log(f"resuming {stage.name} from {path} (step {step}/{total_steps})")
    else:
        torch.manual_seed(tc.seed + 1 + d.rank)  # dropout differs per rank, reproducibly
    (ckpt.stage_dir(ctx.run_dir, stage.name) / "STOPPED").unlink(missing_ok=True)

    batches = stage.build_batches(ctx, loader_state)
    train_model = _maybe_compile(ctx, model)
    from nanoforge.metrics.sink import MetricsSink

    sink = MetricsSink(ctx.run_dir, stage.name, cfg, rank=d.rank, restart=restarts)
    stop = StopRequest()
    peak = device_peak_flops(d.device) * d.world_size
    tokens_per_step = ctx.plan.total_batch_size
    lr_base = tc.adamw_lr if tc.optimizer == "adamw" else tc.matrix_lr
    start_time = time.time()
    steps_this_session = 0

    def save(at_step: int) -> Path | None:
        fingerprints = gather_objects(d, replica_fingerprint(model))
        if any(f != fingerprints[0] for f in fingerprints):
            raise RuntimeError("model replicas diverged across ranks; refusing to save an inconsistent checkpoint")
        rng = gather_objects(d, _rng_state(d.device))
        loader = gather_objects(d, batches.state_dict())
        merged = {"slots": {k: v for part in loader for k, v in part.get("slots", {}).items()}}
        for part in loader:  # stage-specific loaders may keep other keys; rank 0's win
            merged = {**part, **merged}
        path = None
        if d.is_main:
            meta = {
                "tokens_total": tokens_total,
                "elapsed_seconds": elapsed_before + time.time() - start_time,
                "restarts": restarts,
                "world_size": d.world_size,
                "replicas_identical": len(fingerprints),
                "config": cfg.to_dict(),
            }
            files = {
                "model.pt": model.state_dict(),
                "optim.pt": [opt.state_dict() for opt in optimizers],
                "train_state.pt": {"loader": merged, "rng": rng},
            }
            path = ckpt.save_checkpoint(ctx.run_dir, stage.name, at_step, files, meta, tc.keep_checkpoints)
        barrier(d)
        return path

    def evaluate(at_step: int) -> None:
        if stage.evaluate is None:
            return
        model.eval()
        values = stage.evaluate(ctx, model)
        model.train()
        sink.log_eval(at_step, values)
        if stage.sample is not None and d.is_main and tc.sample_every and at_step % tc.sample_every == 0:
            model.eval()
            for name, text in stage.sample(ctx, model).items():
                sink.log_text(at_step, name, text)
            model.train()

    try:
        model.train()
        while step < total_steps:
            if tc.eval_every and step % tc.eval_every == 0:
                evaluate(step)
            t0 = time.time()
            data_wait = 0.0
            loss_sum = torch.zeros((), device=d.device)
            for micro in range(ctx.plan.grad_accum):
                w0 = time.time()
                x, y = batches.next_batch(micro)
                data_wait += time.time() - w0
                with ctx.autocast():
                    loss = train_model(x, y)
                (loss / ctx.plan.grad_accum).backward()
                loss_sum += loss.detach()
            all_reduce_gradients(d, params)
            grad_norm = _grad_norm(params)
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            mult = apply_schedules(optimizers, step, total_steps, tc)
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            loss_mean = float(all_reduce_sum(d, loss_sum) / (ctx.plan.grad_accum * d.world_size))
            if d.device.type == "cuda":
                torch.cuda.synchronize(d.device)
            step += 1
            steps_this_session += 1
            tokens_total += tokens_per_step
            dt = time.time() - t0
            if d.is_main and (step % tc.log_every == 0 or step == total_steps):
                session = time.time() - start_time
                elapsed = elapsed_before + session
                tps = tokens_per_step / dt
                sink.log(step, {
                    "loss": loss_mean,
                    "lr": lr_base * mult,
                    "grad_norm": grad_norm,
                    "tokens_per_second": tps,
                    "mfu": ctx.plan.flops_per_token * tps / peak,
                    "step_seconds": dt,
                    "data_wait_seconds": data_wait,
                    "memory_bytes": memory_bytes(d.device),
                    "tokens_total": tokens_total,
                    "eta_seconds": session / steps_this_session * (total_steps - step),
                    "cost_usd": elapsed / 3600 * d.world_size * cfg.hardware.price_per_gpu_hour,
                    "total_steps": total_steps,
                })
            if not math.isfinite(loss_mean):
                ctx.log(f"error: loss is {loss_mean} at step {step}; lower the learning rate or check the data",
                        file=sys.stderr)
                return 1
            if any_rank(d, stop.signal is not None):
                path = save(step)
                if d.is_main:
                    ckpt.stage_dir(ctx.run_dir, stage.name).joinpath("STOPPED").write_text(f"{step}\n")
                ctx.log(f"stop signal: saved {path} at step {step}; exiting with {EXIT_STOPPED} to be requeued")
                return EXIT_STOPPED
            if step == total_steps or (tc.save_every and step % tc.save_every == 0):
                save(step)
        evaluate(step)
        summary = {
            "stage": stage.name,
            "steps": step,
            "tokens": tokens_total,
            "elapsed_seconds": elapsed_before + time.time() - start_time,
            **stage.extra_done,
        }
        if d.is_main:
            ckpt.mark_done(ctx.run_dir, stage.name, summary)
        barrier(d)
        ctx.log(f"stage {stage.name} done: {step} steps, {tokens_total:,} tokens, "
                f"{summary['elapsed_seconds']:.0f} s")
        return EXIT_OK
    finally:
        stop.restore()
        sink.close()
        batches.close()
