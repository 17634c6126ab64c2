"""What midtraining and SFT share: start from the previous stage's newest checkpoint, train on a mixture of
chat tasks (nanoforge.data.chat_tasks) rendered to tokens and a loss mask, validate with the loss and bits per
byte of the assistant tokens of a held-out mixture, and show a few greedy replies.

Each stage trains under its own view of the run config (`chat.mid` / `chat.sft`): its batch size, learning rate
scale, number of steps and warmdown replace the `train` section's, and the plan is derived again from that, so
the one training loop runs it unchanged (checkpoints, exact resume, metrics, stop signals, DONE).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch

from nanoforge.config import RunConfig
from nanoforge.data.chat_loader import ChatBatches
from nanoforge.data.chat_tasks import build_mixture
from nanoforge.errors import UserError
from nanoforge.eval.bpb import loss_and_bits_per_byte
from nanoforge.model.gpt import GPT, GPTConfig
from nanoforge.plan import derive_plan
from nanoforge.tokenizer.chat import ConversationError, render_conversation, render_for_completion
from nanoforge.train import checkpoint as ckpt
from nanoforge.train.base import load_run_tokenizer
from nanoforge.train.loop import RunContext, Stage

PREVIOUS_STAGE = {"mid": "base", "sft": "mid"}
LR_KEYS = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "adamw_lr")
SAMPLE_PROMPTS = ["Who are you?", "How many r are in strawberry?", "What is 12 * 34?"]
ESTIMATE_SAMPLE = 2000  # conversations rendered to estimate the tokens of one pass over a packed mixture


def stage_config(cfg: RunConfig, name: str, num_iterations: int) -> RunConfig:
    """The run config as stage `name` trains under it: the `train` section with chat.<name>'s settings."""
    sc = getattr(cfg.chat, name)
    out = copy.deepcopy(cfg)
    t = out.train
    for key in LR_KEYS:
        setattr(t, key, getattr(t, key) * sc.lr_scale)
    t.device_batch_size = sc.device_batch_size or t.device_batch_size
    t.total_batch_size = sc.total_batch_size or derive_plan(cfg, cfg.hardware.gpus_per_node).total_batch_size
    t.num_iterations = num_iterations
    t.warmup_steps = 0
    t.warmdown_ratio = sc.warmdown_ratio
    t.eval_every, t.eval_tokens, t.save_every = sc.eval_every, sc.eval_tokens, sc.save_every
    t.sample_every = num_iterations if t.sample_every else 0  # replies before and after the stage
    return out


def stage_context(ctx: RunContext, name: str, num_iterations: int) -> RunContext:
    cfg = stage_config(ctx.cfg, name, num_iterations)
    try:
        plan = derive_plan(cfg, ctx.dist.world_size)
    except UserError as exc:
        raise UserError(f"chat.{name}: {exc} (chat.{name}.device_batch_size / chat.{name}.total_batch_size)") from None
    return dataclasses.replace(ctx, cfg=cfg, plan=plan)


def one_pass_iterations(mixture, tok, packing: str, seq_len: int, total_batch_size: int) -> int:
    """Steps for about one pass over the mixture: exact for padded rows (one example per row), estimated from
    a deterministic sample of rendered conversations for dense packing."""
    if packing == "pad":
        return max(1, math.ceil(len(mixture) / (total_batch_size // seq_len)))
    n = min(len(mixture), ESTIMATE_SAMPLE)
    tokens = 0
    for position in range(n):
        try:
            tokens += len(render_conversation(tok, mixture.get(0, position), max_tokens=seq_len + 1)[0])
        except ConversationError:
            pass
    return max(1, math.ceil(tokens / n * len(mixture) / total_batch_size))


def previous_checkpoint(ctx: RunContext, name: str):
    prev = PREVIOUS_STAGE[name]
    found = ckpt.latest_valid(ctx.run_dir, prev, log=lambda *a, **k: None)
    if found is None:
        raise UserError(f"stage '{name}' starts from the newest '{prev}' checkpoint and {ctx.run_dir} has none; "
                        f"run first: nanoforge {prev} --run-dir {ctx.run_dir}")
    return found[0], prev


def chat_stage(ctx: RunContext, name: str) -> Stage:
    cfg, d = ctx.cfg, ctx.dist
    sc = getattr(cfg.chat, name)
    tok = load_run_tokenizer(ctx)
    seq = cfg.model.sequence_len
    done = ckpt.is_done(ctx.run_dir, name)
    start_path, prev = (None, PREVIOUS_STAGE[name]) if done else previous_checkpoint(ctx, name)
    train_mix = build_mixture(sc.train_tasks, "train", cfg, key=f"chat.{name}.train_tasks")
    val_mix = build_mixture(sc.val_tasks, "val", cfg, key=f"chat.{name}.val_tasks")

    iterations = sc.num_iterations
    if not iterations and not done:
        total = stage_config(cfg, name, 1).train.total_batch_size
        iterations = one_pass_iterations(train_mix, tok, sc.packing, seq, total)
    sctx = stage_context(ctx, name, iterations or 1)
    plan, batch = sctx.plan, sctx.cfg.train.device_batch_size
    token_bytes = torch.as_tensor(tok.token_bytes, dtype=torch.int64)
    if not done:
        note = "" if ckpt.is_done(ctx.run_dir, prev) else f" (stage '{prev}' is not finished: starting from it anyway)"
        ctx.log(f"{name}: from {start_path}{note}; {plan.steps} steps of {plan.total_batch_size:,} tokens; "
                f"training on {len(train_mix):,} conversations ({train_mix.describe()}), packing={sc.packing}")

    def build_model(sctx: RunContext) -> GPT:
        model = GPT(GPTConfig.from_model_config(sctx.cfg.model))
        try:
            model.load_state_dict(ckpt.load_file(start_path, "model.pt", "cpu"))
        except RuntimeError as exc:
            raise UserError(f"the '{prev}' checkpoint {start_path} does not fit this run's model config "
                            f"({str(exc).splitlines()[0]}); was model.* changed after '{prev}' trained?") from None
        return model

    def build_batches(sctx: RunContext, state):
        return ChatBatches(train_mix, tok, batch, seq, d.rank, plan.grad_accum, plan.slots, d.device,
                           packing=sc.packing, state=state, loop=True)

    def evaluate(sctx: RunContext, model) -> dict[str, float]:
        steps = max(1, sctx.cfg.train.eval_tokens // (batch * seq * d.world_size))
        val = ChatBatches(val_mix, tok, batch, seq, d.rank, 1, d.world_size, d.device, packing=sc.packing,
                          loop=False)
        return loss_and_bits_per_byte(sctx, model, val, steps, token_bytes)

    def sample(sctx: RunContext, model) -> dict[str, str]:
        end = tok.special_id("assistant_end")
        out = {}
        for i, prompt in enumerate(SAMPLE_PROMPTS):
            ids = render_for_completion(tok, {"messages": [{"role": "user", "content": prompt}]})
            reply = model.generate_greedy(ids, max_tokens=32)
            reply = reply[: reply.index(end)] if end in reply else reply
            out[f"sample_{i}"] = f"{prompt} -> {tok.decode(reply)}"
        return out

    extra = {"started_from": str(start_path), "train_tasks": train_mix.describe(), "packing": sc.packing}
    return Stage(name, plan.steps, build_model, build_batches, evaluate, sample, extra_done=extra, context=sctx)
