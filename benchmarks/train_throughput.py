"""Training throughput: tokens/s and MFU of full training steps (forward, backward, Muon + AdamW) for the demo
config and a depth-8 config, on whatever device is present (CPU here; CUDA with bf16 + torch.compile on a GPU).

Noise on shared machines is large, so each config is also compared with a baseline measured in the same run:
a plain square matmul's FLOP/s on the same device ("achieved / matmul"), which says how close the model step
gets to what this machine can actually do right now.

    python benchmarks/train_throughput.py [--steps 5] [--configs demo,d8] [--out benchmarks/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nanoforge.config import make_config
from nanoforge.model.gpt import GPT, GPTConfig
from nanoforge.model.optim import build_optimizers
from nanoforge.plan import flops_per_token
from nanoforge.train.hardware import device_name, device_peak_flops

CONFIGS = {
    "demo": ("demo", []),
    "d8": ("demo", ["model.depth=8", "model.head_dim=64", "model.sequence_len=512", "train.device_batch_size=8"]),
    "d20": ("d20", ["train.device_batch_size=16"]),  # GPU only
}


def measured_matmul_flops(device, dtype, n: int, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, device, steps: int) -> dict:
    preset, overrides = CONFIGS[name]
    cfg = make_config(preset, overrides)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_model_config(cfg.model)).to(device)
    optimizers = build_optimizers(model, cfg.train, model.config.n_embd)
    compiled = torch.compile(model) if device.type == "cuda" else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    batch, seq = cfg.train.device_batch_size, cfg.model.sequence_len
    x = torch.randint(0, cfg.model.vocab_size, (batch, seq + 1), device=device)

    def step():
        with autocast:
            loss = compiled(x[:, :-1], x[:, 1:])
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (and compile on GPU)
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - t) / steps
    tokens_per_second = batch * seq / seconds
    achieved = flops_per_token(cfg) * tokens_per_second
    return {
        "config": name,
        "params": model.num_params(),
        "batch_tokens": batch * seq,
        "step_seconds": seconds,
        "tokens_per_second": tokens_per_second,
        "mfu": achieved / device_peak_flops(device),
        "achieved_flops": achieved,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--configs", default=None, help="comma-separated: demo,d8 (CPU default), demo,d8,d20 (GPU)")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = (args.configs or ("demo,d8,d20" if device.type == "cuda" else "demo,d8")).split(",")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    baseline = measured_matmul_flops(device, dtype, 8192 if device.type == "cuda" else 1024)
    rows = []
    for name in names:
        row = bench(name, device, args.steps)
        row["vs_matmul"] = row["achieved_flops"] / baseline
        rows.append(row)
    print(f"device: {device_name(device)}; peak used for MFU {device_peak_flops(device):.3g} FLOP/s; "
          f"measured matmul baseline {baseline:.3g} FLOP/s")
    print(f"{'config':<8}{'params':>12}{'tokens/step':>13}{'s/step':>9}{'tokens/s':>12}{'MFU':>8}{'vs matmul':>11}")
    for r in rows:
        print(f"{r['config']:<8}{r['params']:>12,}{r['batch_tokens']:>13,}{r['step_seconds']:>9.3f}"
              f"{r['tokens_per_second']:>12,.0f}{r['mfu']:>8.1%}{r['vs_matmul']:>11.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name(device), "matmul_flops": baseline, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
