"""Peak FLOP/s of the device actually used, for MFU: the GPU's dense bf16 tensor-core peak, or an estimate of
the CPU's fp32 FMA peak (threads x clock x SIMD FLOPs per cycle) so CPU runs report a meaningful ratio too."""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from nanoforge.plan import GPU_PEAK_FLOPS


def _cpu_flags_and_mhz() -> tuple[set[str], float]:
    flags: set[str] = set()
    mhz = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    return flags, mhz or 2500.0


@lru_cache(maxsize=None)
def cpu_peak_flops(threads: int) -> float:
    flags, mhz = _cpu_flags_and_mhz()
    # fp32 FLOPs per cycle per core with two FMA units: 16 lanes x 2 (AVX-512), 8 x 2 (AVX2), 4 x 2 (SSE).
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return threads * mhz * 1e6 * lanes * 2 * 2


def device_peak_flops(device: torch.device) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key != "cpu" and key.lower() in name.lower():
                return flops
        return float(os.environ.get("NANOFORGE_PEAK_FLOPS", 312e12))
    return cpu_peak_flops(torch.get_num_threads())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
