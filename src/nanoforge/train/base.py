"""Base pretraining: a fresh GPT on packed corpus shards, validation bits per byte, greedy text samples."""

from __future__ import annotations

from pathlib import Path

import torch

from nanoforge.data.loader import PackedBatches
from nanoforge.data.shards import list_shards
from nanoforge.errors import UserError
from nanoforge.eval.bpb import loss_and_bits_per_byte
from nanoforge.model.gpt import GPT, GPTConfig
from nanoforge.model.load import load_tokenizer
from nanoforge.train.loop import RunContext, Stage

SAMPLE_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
]


def load_run_tokenizer(ctx: RunContext):
    tok = load_tokenizer(ctx.run_dir)
    if tok.vocab_size > ctx.cfg.model.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but model.vocab_size is {ctx.cfg.model.vocab_size}; "
                        f"set model.vocab_size >= {tok.vocab_size}")
    return tok


def corpus_shards(ctx: RunContext) -> tuple[list[Path], Path]:
    return list_shards(ctx.cfg.data_dir() / "corpora" / ctx.cfg.data.corpus)


def base_stage(ctx: RunContext) -> Stage:
    cfg, plan, d = ctx.cfg, ctx.plan, ctx.dist
    tok = load_run_tokenizer(ctx)
    train_paths, val_path = corpus_shards(ctx)
    token_bytes = torch.as_tensor(tok.token_bytes, dtype=torch.int64)
    batch, seq = cfg.train.device_batch_size, cfg.model.sequence_len
    threads = cfg.data.tokenizer_threads

    def build_model(ctx: RunContext) -> GPT:
        return GPT(GPTConfig.from_model_config(cfg.model))

    def build_batches(ctx: RunContext, state):
        return PackedBatches(train_paths, tok, batch, seq, d.rank, plan.grad_accum, plan.slots, d.device,
                             state=state, loop=True, threads=threads)

    def evaluate(ctx: RunContext, model) -> dict[str, float]:
        steps = max(1, cfg.train.eval_tokens // (batch * seq * d.world_size))
        val = PackedBatches([val_path], tok, batch, seq, d.rank, 1, d.world_size, d.device, loop=False,
                            threads=threads)
        try:
            return loss_and_bits_per_byte(ctx, model, val, steps, token_bytes)
        finally:
            val.close()

    def sample(ctx: RunContext, model) -> dict[str, str]:
        out = {}
        for i, prompt in enumerate(SAMPLE_PROMPTS):
            ids = model.generate_greedy([tok.bos_id] + tok.encode(prompt), max_tokens=16)
            out[f"sample_{i}"] = prompt + tok.decode(ids)
        return out

    return Stage("base", plan.steps, build_model, build_batches, evaluate, sample)
