"""Validation loss and bits per byte. Bits per byte normalise the loss by the UTF-8 bytes the targets stand for,
so models with different tokenizers compare fairly. Masked targets (-1) count in neither; special tokens (0 bytes)
count in the loss but not in bits per byte."""

from __future__ import annotations

import math

import torch

from nanoforge.train.distributed import all_reduce_sum


@torch.no_grad()
def loss_and_bits_per_byte(ctx, model, batches, steps: int, token_bytes: torch.Tensor) -> dict[str, float]:
    """Mean loss per trained token and bits per byte over `steps` batches of this rank, summed over ranks."""
    d = ctx.dist
    token_bytes = token_bytes.to(d.device)
    totals = torch.zeros(4, dtype=torch.float64, device=d.device)  # nats, tokens, nats with bytes, bytes
    for _ in range(steps):
        try:
            x, y = batches.next_batch(0)
        except StopIteration:
            break
        with ctx.autocast():
            loss = model(x, y, loss_reduction="none").view(-1).double()
        flat = y.reshape(-1)
        trained = flat >= 0
        nbytes = torch.where(trained, token_bytes[flat.clamp(min=0)], 0).double()
        totals += torch.stack([(loss * trained).sum(), trained.sum().double(), (loss * (nbytes > 0)).sum(),
                               nbytes.sum()])
    all_reduce_sum(d, totals)
    nan = float("nan")
    return {
        "val_loss": float(totals[0] / totals[1]) if totals[1] > 0 else nan,
        "val_bpb": float(totals[2] / (math.log(2) * totals[3])) if totals[3] > 0 else nan,
    }


def bits_per_byte(ctx, model, batches, steps: int, token_bytes: torch.Tensor) -> float:
    return loss_and_bits_per_byte(ctx, model, batches, steps, token_bytes)["val_bpb"]
