"""The `workflows` training stage: a GPT on prepared workflow windows, run by the one training loop.

The loop gives it checkpoints, exact resume, exit 75 on stop signals, DONE and metrics; this module supplies the
model, batches of windows (nanoforge.workflows.windows) and the evaluation: validation loss and bits per
canonical byte — total nats over the validation documents' tokens / (ln 2 x bytes of their canonical JSON), a
number that does not depend on the tokenizer.

The run directory keeps its own copy of the schema tokenizer (<run_dir>/workflows_tokenizer/), so sampling and
evaluation need nothing but the run directory; the prepared data must keep using the same tokenizer (its hash).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from nanoforge.errors import UserError
from nanoforge.train.loop import RunContext, Stage
from nanoforge.workflows.windows import (WindowBatches, documents_within, read_metadata, rows_to_xy,
                                         split_documents)

STAGE = "workflows"
RUN_TOKENIZER = "workflows_tokenizer"


def prepared_dir(cfg) -> Path:
    if not cfg.data.workflows_dir:
        raise UserError("no prepared workflow data: pass --data DIR (the output of `nanoforge workflows prepare`)")
    path = Path(cfg.data.workflows_dir)
    if not path.is_dir():
        raise UserError(f"prepared data folder {path} does not exist; run `nanoforge workflows prepare --output "
                        f"{path}` first")
    return path


def load_run_tokenizer(run_dir: Path):
    from nanoforge.tokenizer.schema import SchemaTokenizer

    path = Path(run_dir) / RUN_TOKENIZER
    if not path.is_dir():
        raise UserError(f"{run_dir} has no workflow tokenizer ({path}); train first: nanoforge workflows train "
                        f"--run-dir {run_dir} --data PREPARED_DIR")
    return SchemaTokenizer.load(path)


def stage_tokenizer(ctx: RunContext, data: Path, metadata: dict):
    """The run's tokenizer (copied from the prepared data on first use); refuses data prepared with another."""
    from nanoforge.tokenizer.schema import SchemaTokenizer

    run_copy = ctx.run_dir / RUN_TOKENIZER
    tok = SchemaTokenizer.load(run_copy if run_copy.is_dir() else data / metadata.get("tokenizer_dir", "tokenizer"))
    if tok.content_hash() != metadata.get("tokenizer_hash"):
        raise UserError(f"{data} was prepared with another tokenizer than {ctx.run_dir} trains with; use a new "
                        f"--run-dir or prepare again with --tokenizer {run_copy}")
    if tok.vocab_size > ctx.cfg.model.vocab_size:
        raise UserError(f"the schema tokenizer has {tok.vocab_size} tokens but model.vocab_size is "
                        f"{ctx.cfg.model.vocab_size}; set model.vocab_size >= {tok.vocab_size}")
    context = metadata["context_size"]
    if context - 1 > ctx.cfg.model.sequence_len:
        raise UserError(f"the prepared windows hold {context} tokens but model.sequence_len is "
                        f"{ctx.cfg.model.sequence_len}; set model.sequence_len >= {context - 1} or prepare with "
                        f"--context-size {ctx.cfg.model.sequence_len}")
    return tok


def save_run_tokenizer(ctx: RunContext, data: Path, metadata: dict) -> None:
    """Copy the prepared tokenizer into the run (rank 0, once, all or nothing)."""
    target = ctx.run_dir / RUN_TOKENIZER
    if target.is_dir() or not ctx.dist.is_main:
        return
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(data / metadata.get("tokenizer_dir", "tokenizer"), tmp)
    os.replace(tmp, target)


@torch.no_grad()
def loss_and_bits_per_byte(model, windows: np.ndarray, docs, pad_id: int, batch_size: int, device, rank: int = 0,
                           world_size: int = 1, autocast=None) -> dict[str, float]:
    """Validation loss per token and bits per canonical byte over the windows of `docs` (every rank takes every
    world_size-th row; the sums are all-reduced when a process group is up)."""
    import contextlib

    rows = np.concatenate([np.arange(d.first_row, d.first_row + d.n_rows) for d in docs]) if docs else np.array([])
    mine = rows[rank::world_size].astype(np.int64)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # nats, tokens
    for start in range(0, len(mine), batch_size):
        x, y = rows_to_xy(np.asarray(windows[mine[start:start + batch_size]]), pad_id, device)
        with autocast() if autocast else contextlib.nullcontext():
            loss = model(x, y, loss_reduction="none").double()
        totals += torch.stack([loss.sum(), (y >= 0).sum().double()])  # ignored targets have loss 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    nbytes = sum(d.canonical_bytes for d in docs)
    nan = float("nan")
    return {
        "val_loss": float(totals[0] / totals[1]) if totals[1] > 0 else nan,
        "val_bpb": float(totals[0] / (math.log(2) * nbytes)) if nbytes else nan,
    }


def workflows_stage(ctx: RunContext) -> Stage:
    from nanoforge.model.gpt import GPT, GPTConfig
    from nanoforge.workflows.prepare import load_windows

    cfg, plan, d = ctx.cfg, ctx.plan, ctx.dist
    data = prepared_dir(cfg)
    metadata = read_metadata(data)
    tok = stage_tokenizer(ctx, data, metadata)
    train_windows = load_windows(data, "train")
    if cfg.data.workflows_train_samples:
        train_windows = train_windows[: cfg.data.workflows_train_samples]
    val_windows = load_windows(data, "val")
    context = metadata["context_size"]
    val_docs = split_documents(val_windows, tok)
    batch = cfg.train.device_batch_size
    ctx.log(f"workflows: {len(train_windows):,} train windows, {len(val_docs):,} val documents "
            f"({len(val_windows):,} windows) of {context} tokens from {data}; vocab {tok.vocab_size}; "
            f"{plan.steps:,} steps of {plan.total_batch_size:,} tokens")

    def build_model(ctx: RunContext) -> GPT:
        return GPT(GPTConfig.from_model_config(cfg.model))

    def build_batches(ctx: RunContext, state):
        return WindowBatches(train_windows, batch, d.rank, plan.grad_accum, plan.slots, d.device, tok.pad_id,
                             cfg.train.seed, state=state)

    def evaluate(ctx: RunContext, model) -> dict[str, float]:
        docs = documents_within(val_docs, cfg.train.eval_tokens, context)
        if not docs:
            return {}
        return loss_and_bits_per_byte(model, val_windows, docs, tok.pad_id, batch, d.device, d.rank, d.world_size,
                                      ctx.autocast)

    def sample(ctx: RunContext, model) -> dict[str, str]:
        from nanoforge.workflows.sample import generate, to_yaml

        s = generate(model, tok, 1, constrained=True, temperature=1.0, seed=cfg.train.seed)[0]
        return {"sample_0": to_yaml(s.value) if s.value is not None else s.reason}

    extra = {"data": str(data), "tokenizer_hash": metadata.get("tokenizer_hash"),
             "train_windows": len(train_windows)}
    return Stage(STAGE, plan.steps, build_model, build_batches, evaluate, sample, extra_done=extra)


def run_train(args) -> int:
    from nanoforge.train.distributed import shutdown
    from nanoforge.train.loop import run_stage
    from nanoforge.train.run import commit_run, open_run

    run_dir = Path(args.run_dir)
    if args.preset is None and getattr(args, "config", None) is None and not (run_dir / "config.yaml").exists():
        args.preset = "workflows"
    if args.data is not None:
        args.overrides = [f"data.workflows_dir={Path(args.data).resolve()}", *args.overrides]
    if args.train_samples is not None:
        if args.train_samples < 1:
            raise UserError(f"--train-samples must be at least 1, got {args.train_samples}")
        args.overrides = [f"data.workflows_train_samples={args.train_samples}", *args.overrides]
    ctx = open_run(args)
    try:
        stage = workflows_stage(ctx)
        commit_run(ctx, STAGE)
        data = prepared_dir(ctx.cfg)
        save_run_tokenizer(ctx, data, read_metadata(data))
        return run_stage(ctx, stage)
    finally:
        shutdown(ctx.dist)
