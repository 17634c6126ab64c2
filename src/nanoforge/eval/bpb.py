"""Validation bits per byte: the loss normalised by the UTF-8 bytes the targets stand for, so models with
different tokenizers compare fairly. Special tokens (0 bytes) and masked targets (-1) do not count."""

from __future__ import annotations

import math

import torch

from nanoforge.train.distributed import all_reduce_sum


@torch.no_grad()
def bits_per_byte(ctx, model, batches, steps: int, token_bytes: torch.Tensor) -> float:
    d = ctx.dist
    token_bytes = token_bytes.to(d.device)
    totals = torch.zeros(2, dtype=torch.float64, device=d.device)  # nats, bytes
    for _ in range(steps):
        try:
            x, y = batches.next_batch(0)
        except StopIteration:
            break
        with ctx.autocast():
            loss = model(x, y, loss_reduction="none").view(-1).double()
        flat = y.reshape(-1)
        nbytes = torch.where(flat >= 0, token_bytes[flat.clamp(min=0)], 0).double()
        totals[0] += (loss * (nbytes > 0)).sum()
        totals[1] += nbytes.sum()
    all_reduce_sum(d, totals)
    if totals[1] == 0:
        return float("nan")
    return float(totals[0] / (math.log(2) * totals[1]))
