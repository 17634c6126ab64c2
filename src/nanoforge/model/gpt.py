"""Decoder-only GPT in the modern nanochat style.

- rotary position embeddings, no learned positions
- QK-norm and parameter-free RMSNorm everywhere (pre-norm blocks, normed embedding, normed final state)
- ReLU^2 MLP, untied input embedding and output head, tanh logit soft-capping
- optional grouped-query attention (n_kv_head < n_head) and sliding-window layers (window_pattern "SSSL")
- per-layer residual mixing scalars: x <- resid_lambda * x + x0_lambda * x0 (x0 = the normed embedding)
- attention through PyTorch SDPA (flash kernels on CUDA when no mask is needed)

The same code runs in fp32 on CPU and under bf16 autocast on CUDA; nothing here knows which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoforge.config import ModelConfig, model_shape


@dataclass
class GPTConfig:
    sequence_len: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "L"
    sliding_window: int = 0  # 0: sequence_len // 2
    softcap: float = 15.0
    dropout: float = 0.0

    @classmethod
    def from_model_config(cls, m: ModelConfig) -> "GPTConfig":
        width, heads, kv_heads = model_shape(m)
        return cls(
            sequence_len=m.sequence_len,
            vocab_size=m.vocab_size,
            n_layer=m.depth,
            n_head=heads,
            n_kv_head=kv_heads,
            n_embd=width,
            window_pattern=m.window_pattern,
            sliding_window=m.sliding_window,
            softcap=m.softcap,
            dropout=m.dropout,
        )

    def layer_windows(self) -> list[int | None]:
        """Attention window per layer (None = full causal). The last layer always sees everything."""
        window = self.sliding_window or self.sequence_len // 2
        out: list[int | None] = []
        for i in range(self.n_layer):
            sliding = self.window_pattern[i % len(self.window_pattern)] == "S" and i != self.n_layer - 1
            out.append(window if sliding else None)
        return out


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); rotate the two halves of the head dimension."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0, device=None):
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, D/2)


def attention_mask(q_len: int, k_len: int, window: int | None, device) -> torch.Tensor | None:
    """Boolean mask (True = attend) for queries at the last q_len positions of k_len keys; None when plain causal
    attention over a square matrix suffices (lets SDPA pick flash kernels)."""
    if window is None and q_len == k_len:
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask &= (q_pos - k_pos) < window
    return mask


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=False)

    def forward(self, x, cos, sin, window, kv_cache=None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = rms_norm(q), rms_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer_idx, k, v)
        mask = attention_mask(T, k.size(2), window, x.device)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, window, kv_cache=None):
        x = x + self.dropout(self.attn(rms_norm(x), cos, sin, window, kv_cache))
        return x + self.dropout(self.mlp(rms_norm(x)))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        self.windows = config.layer_windows()
        # Rotary tables cover generation past the training context (KV cache), at no parameter cost.
        self.rotary_len = config.sequence_len * 4
        cos, sin = rotary_tables(self.rotary_len, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nanochat-style init: unit embeddings, tiny head, zero output projections (each block starts as the
        identity), uniform inputs with std 1/sqrt(width)."""
        width = self.config.n_embd
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = math.sqrt(3.0 / width)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.0)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The split the optimizers need: matrices (Muon), embedding, head, scalars (AdamW)."""
        matrices = [p for block in self.blocks for p in block.parameters()]
        return {
            "matrix": matrices,
            "embedding": [self.wte.weight],
            "head": [self.lm_head.weight],
            "scalar": [self.resid_lambdas, self.x0_lambdas],
        }

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction: str = "mean"):
        B, T = idx.shape
        start = kv_cache.position if kv_cache is not None else 0
        if start + T > self.rotary_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's rotary table ({self.rotary_len})")
        cos, sin = self.cos[:, start:start + T], self.sin[:, start:start + T]
        x = rms_norm(self.wte(idx))
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin, self.windows[i], kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = rms_norm(x)
        logits = self.lm_head(x).float()
        if self.config.softcap:
            cap = self.config.softcap
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=loss_reduction
        )

    @torch.no_grad()
    def generate_greedy(self, tokens: list[int], max_tokens: int) -> list[int]:
        """Plain greedy continuation without a cache; for training-time samples only (the serving engine has the
        KV cache and sampling)."""
        idx = torch.tensor([tokens], dtype=torch.long, device=self.wte.weight.device)
        out: list[int] = []
        for _ in range(max_tokens):
            logits = self(idx[:, -self.config.sequence_len:])
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            idx = torch.cat([idx, idx.new_tensor([[nxt]])], dim=1)
        return out
