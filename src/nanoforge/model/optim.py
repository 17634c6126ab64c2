"""Optimizers: Muon for the transformer's matrices, AdamW for embedding, head and scalars; schedules.

Every rank holds the full optimizer state and applies the same update to the same all-reduced gradients, so the
weights stay identical across ranks without broadcasting them (checked by tests).
"""

from __future__ import annotations

import math

import torch

from nanoforge.config import TrainConfig


@torch.no_grad()
def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (quintic coefficients tuned to converge
    fast from any spectrum, as in Muon). bf16 on CUDA for speed; fp32 on CPU where bf16 matmuls are slow."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.mT
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalized per matrix and scaled by sqrt(max(1, rows/cols))
    so every matrix moves at a comparable RMS whatever its shape."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"])  # Nesterov
                update = orthogonalize(update, group["ns_steps"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def build_optimizers(model, cfg: TrainConfig, width: int) -> list[torch.optim.Optimizer]:
    groups = model.parameter_groups()
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    if cfg.optimizer == "adamw":
        decay = groups["matrix"] + groups["embedding"] + groups["head"]
        optimizers = [torch.optim.AdamW(
            [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=groups["scalar"], weight_decay=0.0)],
            lr=cfg.adamw_lr, betas=betas, eps=1e-8, **fused,
        )]
    else:
        # AdamW learning rates were tuned at width 768 and scale as 1/sqrt(width) (muP-like).
        scale = (width / 768) ** -0.5
        adam = torch.optim.AdamW(
            [
                dict(params=groups["embedding"], lr=cfg.embedding_lr * scale),
                dict(params=groups["head"], lr=cfg.unembedding_lr * scale),
                dict(params=groups["scalar"], lr=cfg.scalar_lr),
            ],
            betas=betas, eps=1e-10, weight_decay=0.0, **fused,
        )
        muon = Muon(groups["matrix"], lr=cfg.matrix_lr, momentum=cfg.muon_momentum_end, weight_decay=cfg.weight_decay)
        optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(step: int, total: int, cfg: TrainConfig) -> float:
    """trapezoid: linear warmup, constant, linear warmdown to final_lr_frac over the last warmdown_ratio;
    cosine: linear warmup, then cosine from 1 to final_lr_frac."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
    warmdown = round(cfg.warmdown_ratio * total)
    if step < total - warmdown:
        return 1.0
    progress = (total - step) / max(1, warmdown)
    return progress + (1 - progress) * cfg.final_lr_frac


def muon_momentum(step: int, cfg: TrainConfig) -> float:
    frac = min(step / max(1, cfg.muon_momentum_warmup), 1.0)
    return (1 - frac) * cfg.muon_momentum_start + frac * cfg.muon_momentum_end


def apply_schedules(optimizers, step: int, total: int, cfg: TrainConfig) -> float:
    mult = lr_multiplier(step, total, cfg)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * mult
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum(step, cfg)
    return mult
