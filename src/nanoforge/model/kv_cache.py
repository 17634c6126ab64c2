"""Key/value cache for incremental decoding: preallocated per layer, filled position by position."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, batch_size: int, n_layer: int, n_kv_head: int, head_dim: int, max_len: int,
                 device=None, dtype=torch.float32):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.position = 0

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int) -> "KVCache":
        cfg = model.config
        weight = model.wte.weight
        dtype = torch.bfloat16 if weight.is_cuda else weight.dtype
        return cls(batch_size, cfg.n_layer, cfg.n_kv_head, cfg.n_embd // cfg.n_head, max_len, weight.device, dtype)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this step's keys/values (B, H, T, D) for one layer; return all keys/values so far."""
        end = self.position + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions asked, room for {self.max_len}")
        self.k[layer, :, :, self.position:end] = k
        self.v[layer, :, :, self.position:end] = v
        return self.k[layer, :, :, :end].to(k.dtype), self.v[layer, :, :, :end].to(v.dtype)

    def advance(self, steps: int) -> None:
        self.position += steps
