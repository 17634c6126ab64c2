"""`nanoforge workflows train|sample|evaluate`: the workflow model (registered under `nanoforge workflows`)."""

from __future__ import annotations

import json
from pathlib import Path


def register_model_commands(sub) -> None:
    from nanoforge.cli import add_config_args

    train = sub.add_parser("train", help="train a workflow model on prepared windows (the shared training loop)",
                           description="Train the `workflows` stage. Exit codes: 0 done, 2 bad input, 75 "
                           "checkpointed after a stop signal (run again to resume).")
    train.add_argument("--run-dir", required=True, help="the run directory (created on first use)")
    train.add_argument("--data", help="output folder of `nanoforge workflows prepare` (stored in the run's config)")
    train.add_argument("--train-samples", type=int,
                       help="train on only the first N windows (the overfitting check: --train-samples 10)")
    add_config_args(train)
    train.set_defaults(handler=_train)

    sample = sub.add_parser("sample", help="sample workflows from a trained model, valid by construction")
    sample.add_argument("--run-dir", required=True, help="a run trained with `nanoforge workflows train`")
    sample.add_argument("--n", type=int, default=10, help="number of samples")
    sample.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--max-tokens", type=int,
                        help="length budget in tokens (default: the model's context); constrained samples close "
                             "their document from near the budget on")
    sample.add_argument("--unconstrained", action="store_true", help="sample any token (to measure the difference)")
    sample.add_argument("--out", help="folder for the samples as YAML files (default: <run-dir>/samples)")
    sample.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    sample.set_defaults(handler=_sample)

    ev = sub.add_parser("evaluate", help="validity, bits per canonical byte, key-field distances; "
                                         "writes <run-dir>/workflows_eval.json")
    ev.add_argument("--run-dir", required=True, help="a run trained with `nanoforge workflows train`")
    ev.add_argument("--n", type=int, default=100, help="samples of each kind (constrained, unconstrained)")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--data", help="prepared data folder (default: the one the run trained on)")
    ev.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    ev.set_defaults(handler=_evaluate)


def _train(args) -> int:
    from nanoforge.workflows.train import run_train

    return run_train(args)


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _sample(args) -> int:
    from nanoforge.model.load import load_model
    from nanoforge.workflows.sample import generate, summarize, write_samples
    from nanoforge.workflows.train import STAGE, load_run_tokenizer

    run_dir = Path(args.run_dir)
    tok = load_run_tokenizer(run_dir)
    model, _, meta = load_model(run_dir, STAGE, _device(args.device))
    samples = generate(model, tok, args.n, constrained=not args.unconstrained, temperature=args.temperature,
                       seed=args.seed, max_tokens=args.max_tokens, progress=True)
    out = Path(args.out) if args.out else run_dir / "samples"
    kind = "unconstrained" if args.unconstrained else "constrained"
    write_samples(samples, out, kind)
    summary = summarize(samples)
    (out / f"{kind}-summary.json").write_text(json.dumps({"checkpoint": meta["path"], **summary}, indent=2) + "\n")
    reasons = f" (invalid: {summary['invalid_reasons']})" if summary["invalid_reasons"] else ""
    print(f"{kind} samples from {meta['path']}: n {summary['n']}, valid {summary['valid']} "
          f"({100 * summary['validity']:.1f}%){reasons}, mean tokens {summary['mean_tokens']:.1f}; "
          f"written to {out}")
    return 0


def _evaluate(args) -> int:
    from nanoforge.errors import UserError
    from nanoforge.workflows.evaluate import evaluate_run, format_report

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    result = evaluate_run(args.run_dir, n=args.n, temperature=args.temperature, seed=args.seed,
                          device=_device(args.device), data_dir=args.data)
    print(format_report(result))
    print(f"written: {Path(args.run_dir) / 'workflows_eval.json'}")
    return 0
