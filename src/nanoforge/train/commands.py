"""`nanoforge base|mid|sft --run-dir DIR`: the training stages. Same command on one CPU, under torchrun on 8 GPUs,
or across nodes; idempotent (DONE stages are skipped, unfinished ones resume)."""

from __future__ import annotations

import argparse

STAGES = {
    "base": ("pretrain the base model on the corpus shards", "nanoforge.train.base:base_stage"),
    "mid": ("midtrain the base model on chat conversations and tool use", "nanoforge.train.mid:mid_stage"),
    "sft": ("fine-tune the midtrained model on whole conversations", "nanoforge.train.sft:sft_stage"),
}


def register(subparsers) -> None:
    from nanoforge.cli import add_config_args

    for name, (help_text, _) in STAGES.items():
        p = subparsers.add_parser(name, help=help_text, description=f"{help_text}. Exit codes: 0 done, "
                                  "2 bad input, 75 checkpointed after a stop signal (requeue to resume).")
        p.add_argument("--run-dir", required=True, help="the run directory (created on first use)")
        add_config_args(p)
        p.set_defaults(handler=_run_stage, stage=name)


def _run_stage(args: argparse.Namespace) -> int:
    import importlib

    from nanoforge.train.distributed import shutdown
    from nanoforge.train.loop import run_stage
    from nanoforge.train.run import commit_run, open_run

    module, func = STAGES[args.stage][1].split(":")
    ctx = open_run(args)
    try:
        stage = getattr(importlib.import_module(module), func)(ctx)
        commit_run(ctx, args.stage)
        return run_stage(ctx, stage)
    finally:
        shutdown(ctx.dist)
