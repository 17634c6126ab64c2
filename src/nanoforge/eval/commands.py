"""`nanoforge eval --run-dir DIR`: bits per byte and CORE for the base model, chat evaluations for mid/SFT."""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got '{value}'")
    return n


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a run's trained stages (bpb, CORE, ARC, MMLU, GSM8K, HumanEval, ChatCORE)",
        description="Evaluate a run: validation bits per byte and CORE for base, the chat evaluations and "
                    "ChatCORE for mid and sft. Writes <run_dir>/eval/<stage>.json and <run_dir>/eval/DONE. "
                    "Works under torchrun (items are split across ranks).")
    p.add_argument("--run-dir", required=True, help="the run directory")
    p.add_argument("--stage", choices=["base", "mid", "sft", "all"], default="all",
                   help="which stage to evaluate (default: every trained stage)")
    p.add_argument("--max-items", type=_positive, metavar="N",
                   help="score at most N items per task (a fixed random subset); the demo preset on a CPU "
                        "defaults to 20")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="only these: bpb, CORE task labels (e.g. arc_easy copa), chat tasks (arc-easy "
                        "arc-challenge mmlu gsm8k humaneval)")
    p.add_argument("--eval-bundle", metavar="PATH",
                   help="CORE eval bundle folder (core.yaml + eval_data/); default $NANOFORGE_EVAL_BUNDLE, else "
                        "<data_dir>/eval_bundle")
    p.add_argument("--seed", type=int, default=1234, help="seed for item subsets and few-shot examples")
    p.add_argument("--force", action="store_true", help="evaluate again even if eval/DONE lists the stage")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from nanoforge.errors import UserError
    from nanoforge.eval.run import EvalOptions, run_eval

    bundle = Path(args.eval_bundle) if args.eval_bundle else None
    if bundle is not None and not (bundle / "core.yaml").is_file():
        raise UserError(f"--eval-bundle {bundle}: no core.yaml there (expected core.yaml + eval_data/)")
    options = EvalOptions(max_items=args.max_items, tasks=args.tasks, eval_bundle=bundle, seed=args.seed)
    return run_eval(Path(args.run_dir), args.stage, options, force=args.force)
