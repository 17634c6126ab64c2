"""What a config means in numbers: parameters, FLOPs per token, token budget, batch split, steps, GPU-hours, cost.

Scaling rules (nanochat, documented in docs/scaling.md):
- width = 64 x depth rounded up to the head size; heads = width / head_dim.
- tokens = tokens_per_param x parameters (Chinchilla's compute-optimal 20 by default).
- total batch: 2^19 tokens at the d20 budget, scaled with the token budget to the power 0.383 (the
  "Power Lines" fit nanochat adopted), rounded to a power of two, and at least one row per GPU.
- AdamW learning rates scale with 1/sqrt(width/768) (muP-style); Muon's learning rate is width-independent
  because its update is orthogonalized and rescaled per matrix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nanoforge.config import RunConfig, model_shape
from nanoforge.errors import UserError

# Dense bf16 tensor-core peaks (FLOP/s), per GPU.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "V100": 125e12,
    "cpu": 1e12,  # placeholder for estimates only; the measured MFU uses the real CPU's peak
}

D20_TOKENS = 20 * 560_988_160  # the d20 token budget the reference batch (2^19) was tuned at
REFERENCE_BATCH = 2**19


def gpu_peak_flops(name: str) -> float:
    for key, flops in GPU_PEAK_FLOPS.items():
        if key.lower() in name.lower():
            return flops
    raise UserError(f"unknown GPU '{name}' for estimates; use one of {', '.join(GPU_PEAK_FLOPS)} in hardware.gpu")


@dataclass
class Plan:
    width: int
    heads: int
    kv_heads: int
    params: int
    params_embedding: int
    flops_per_token: float
    tokens: int
    total_batch_size: int
    steps: int
    world_size: int
    grad_accum: int
    slots: int  # independent data streams = world_size x grad_accum (constant for a config)
    est_hours: float
    est_gpu_hours: float
    est_cost: float

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(cfg: RunConfig) -> tuple[int, int]:
    """(all parameters, embedding parameters), without building the model."""
    m = cfg.model
    width, heads, kv_heads = model_shape(m)
    head_dim = width // heads
    attn = width * heads * head_dim + 2 * width * kv_heads * head_dim + heads * head_dim * width
    mlp = 8 * width * width
    scalars = 2  # residual and x0 mixing weights per layer
    embedding = m.vocab_size * width
    total = embedding + m.depth * (attn + mlp + scalars) + m.vocab_size * width
    return total, embedding


def attention_spans(cfg: RunConfig) -> list[int]:
    m = cfg.model
    window = m.sliding_window or m.sequence_len // 2
    spans = []
    for layer in range(m.depth):
        kind = m.window_pattern[layer % len(m.window_pattern)]
        # The last layer always sees the full context (as in nanochat), so the model can use it all.
        full = kind == "L" or layer == m.depth - 1
        spans.append(m.sequence_len if full else min(window, m.sequence_len))
    return spans


def flops_per_token(cfg: RunConfig) -> float:
    """6 x non-embedding params (forward + backward matmuls) + attention's score/value FLOPs."""
    params, embedding = count_params(cfg)
    width, heads, _ = model_shape(cfg.model)
    head_dim = width // heads
    attention = sum(12 * heads * head_dim * span for span in attention_spans(cfg))
    return 6 * (params - embedding) + attention


def derive_plan(cfg: RunConfig, world_size: int | None = None) -> Plan:
    m, t, hw = cfg.model, cfg.train, cfg.hardware
    width, heads, kv_heads = model_shape(m)
    params, embedding = count_params(cfg)
    world = world_size or hw.gpus_per_node * hw.nodes
    rows_per_step = t.device_batch_size * m.sequence_len * world

    if t.total_batch_size:
        total_batch = t.total_batch_size
    else:
        budget = t.tokens_per_param * params
        total_batch = 2 ** round(math.log2(REFERENCE_BATCH * (budget / D20_TOKENS) ** 0.383))
        total_batch = max(total_batch, rows_per_step)
    if total_batch % rows_per_step:
        raise UserError(
            f"impossible batch split: total_batch_size={total_batch} tokens is not a multiple of "
            f"device_batch_size x sequence_len x world_size = {t.device_batch_size} x {m.sequence_len} x {world}"
            f" = {rows_per_step}; change train.total_batch_size or train.device_batch_size"
        )
    grad_accum = total_batch // rows_per_step
    steps = t.num_iterations or max(1, round(t.tokens_per_param * params / total_batch))
    tokens = steps * total_batch
    fpt = flops_per_token(cfg)
    gpus = hw.gpus_per_node * hw.nodes
    seconds = fpt * tokens / (gpus * gpu_peak_flops(hw.gpu) * hw.assumed_mfu)
    gpu_hours = seconds * gpus / 3600
    return Plan(
        width=width,
        heads=heads,
        kv_heads=kv_heads,
        params=params,
        params_embedding=embedding,
        flops_per_token=fpt,
        tokens=tokens,
        total_batch_size=total_batch,
        steps=steps,
        world_size=world,
        grad_accum=grad_accum,
        slots=world * grad_accum,
        est_hours=seconds / 3600,
        est_gpu_hours=gpu_hours,
        est_cost=gpu_hours * hw.price_per_gpu_hour,
    )


def format_plan(cfg: RunConfig, plan: Plan) -> str:
    m, hw = cfg.model, cfg.hardware
    rows = [
        ("preset", cfg.preset),
        ("depth / width / heads (kv)", f"{m.depth} / {plan.width} / {plan.heads} ({plan.kv_heads})"),
        ("sequence length / vocab", f"{m.sequence_len} / {m.vocab_size}"),
        ("parameters", f"{plan.params:,} ({plan.params_embedding:,} in the input embedding)"),
        ("FLOPs per token", f"{plan.flops_per_token:.3e}"),
        ("tokens (tokens/param)", f"{plan.tokens:,} ({plan.tokens / plan.params:.1f})"),
        ("total batch (tokens)", f"{plan.total_batch_size:,}"),
        ("steps", f"{plan.steps:,}"),
        ("world size / device batch / grad accum",
         f"{plan.world_size} / {cfg.train.device_batch_size} / {plan.grad_accum}"),
        (f"estimated wall time on {hw.nodes}x{hw.gpus_per_node} {hw.gpu} at {hw.assumed_mfu:.0%} MFU",
         f"{plan.est_hours:.2f} h"),
        ("estimated GPU-hours", f"{plan.est_gpu_hours:.1f}"),
        (f"estimated cost at ${hw.price_per_gpu_hour:.2f}/GPU-hour", f"${plan.est_cost:,.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
