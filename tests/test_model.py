"""The GPT, its attention masks, the optimizers and schedules, and the depth dial's numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanoforge.config import TrainConfig, make_config
from nanoforge.model.gpt import GPT, GPTConfig, apply_rotary, rms_norm
from nanoforge.model.optim import build_optimizers, lr_multiplier, muon_momentum, orthogonalize
from nanoforge.plan import count_params, derive_plan, flops_per_token


def reference_attention(attn, x, cos, sin, window):
    """Attention written out by hand: explicit scores, causal + window mask, repeated KV heads."""
    B, T, _ = x.shape
    h, kv, d = attn.n_head, attn.n_kv_head, attn.head_dim
    q = rms_norm(apply_rotary(attn.c_q(x).view(B, T, h, d), cos, sin)).transpose(1, 2)
    k = rms_norm(apply_rotary(attn.c_k(x).view(B, T, kv, d), cos, sin)).transpose(1, 2)
    v = attn.c_v(x).view(B, T, kv, d).transpose(1, 2)
    k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((i - j) < window if window else True)
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = F.softmax(scores, dim=-1) @ v
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, h * d))


@pytest.mark.parametrize("kv_heads, window", [(4, None), (2, None), (1, 5), (4, 3)])
def test_attention_matches_hand_written_reference(kv_heads, window):
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=1, n_head=4, n_kv_head=kv_heads, n_embd=64)
    model = GPT(cfg)
    attn = model.blocks[0].attn
    torch.nn.init.normal_(attn.c_proj.weight, std=0.1)  # zero-initialised output would hide everything
    x = torch.randn(2, 12, 64)
    cos, sin = model.cos[:, :12], model.sin[:, :12]
    expected = reference_attention(attn, x, cos, sin, window)
    torch.testing.assert_close(attn(x, cos, sin, window), expected, rtol=1e-4, atol=1e-5)


def test_window_pattern_keeps_last_layer_full():
    cfg = GPTConfig(sequence_len=32, n_layer=4, n_head=2, n_kv_head=2, n_embd=32, window_pattern="SSL")
    assert cfg.layer_windows() == [16, 16, None, None]


def test_parameter_count_matches_plan_and_loss_starts_near_uniform():
    cfg = make_config("demo", ["model.depth=2", "model.n_kv_head=2"])
    model = GPT(GPTConfig.from_model_config(cfg.model))
    assert model.num_params() == count_params(cfg)[0]
    idx = torch.randint(0, cfg.model.vocab_size, (2, 32))
    with torch.no_grad():
        loss = model(idx, idx)
    # The head is initialised tiny, so the first loss is about ln(vocab).
    assert abs(loss.item() - math.log(cfg.model.vocab_size)) < 0.1


def test_depth_dial_derives_nanochat_numbers():
    plan = derive_plan(make_config("d20"))
    assert (plan.width, plan.heads) == (1280, 10)
    assert 5.5e8 < plan.params < 5.7e8
    assert plan.total_batch_size == 2**19 and plan.grad_accum == 1
    assert plan.tokens == pytest.approx(20 * plan.params, rel=0.01)
    assert flops_per_token(make_config("d20")) == pytest.approx(3.49e9, rel=0.01)
    d26 = derive_plan(make_config("d26"))
    assert d26.width == 1664 and d26.grad_accum == 2
    assert derive_plan(make_config("d20"), world_size=4).grad_accum == 2


def test_orthogonalize_flattens_the_spectrum():
    torch.manual_seed(0)
    g = torch.randn(64, 128) @ torch.diag(torch.logspace(-2, 1, 128))
    s = torch.linalg.svdvals(orthogonalize(g))
    assert 0.5 < float(s.min()) and float(s.max()) < 1.3  # Muon's quintic lands in roughly [0.7, 1.2]


def test_schedules():
    cfg = TrainConfig(warmup_steps=10, warmdown_ratio=0.5, final_lr_frac=0.1)
    assert lr_multiplier(0, 100, cfg) == pytest.approx(0.1)
    assert lr_multiplier(30, 100, cfg) == 1.0
    assert lr_multiplier(75, 100, cfg) == pytest.approx(0.55)
    assert lr_multiplier(100, 100, cfg) == pytest.approx(0.1)
    cos = TrainConfig(schedule="cosine", warmup_steps=0, final_lr_frac=0.1)
    assert lr_multiplier(0, 100, cos) == pytest.approx(1.0)
    assert lr_multiplier(100, 100, cos) == pytest.approx(0.1)
    assert muon_momentum(0, cfg) == 0.85 and muon_momentum(10_000, cfg) == 0.95


def test_optimizer_groups_cover_every_parameter_once():
    cfg = make_config("demo", ["model.depth=2"])
    model = GPT(GPTConfig.from_model_config(cfg.model))
    for optimizer in ("muon", "adamw"):
        cfg.train.optimizer = optimizer
        seen = [id(p) for opt in build_optimizers(model, cfg.train, 256) for g in opt.param_groups for p in g["params"]]
        assert sorted(seen) == sorted(id(p) for p in model.parameters())
