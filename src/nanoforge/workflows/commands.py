"""`nanoforge workflows prepare|compare`: windowed training data and the tokenizer comparison for
structured documents (GitHub Actions workflows by default; any JSON Schema with --schema)."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    workflows = subparsers.add_parser("workflows", help="schema-aware tokenizer and training data for workflows")
    sub = workflows.add_subparsers(dest="workflows_command", metavar="<subcommand>", required=True)

    prep = sub.add_parser("prepare", help="tokenize a folder of YAML/JSON documents into training windows")
    prep.add_argument("--input", required=True, help="folder of .yml/.yaml/.json documents (searched recursively)")
    prep.add_argument("--output", required=True, help="folder for train/val windows, metadata.json, tokenizer/")
    prep.add_argument("--context-size", type=int, default=512, help="tokens per window, position token included")
    prep.add_argument("--train-split", type=float, default=0.8, help="share of documents for training (0, 1]")
    prep.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size when training a tokenizer")
    prep.add_argument("--tokenizer", help="use this trained schema tokenizer folder instead of training one")
    prep.add_argument("--schema", help="JSON Schema file (default: the GitHub workflow schema shipped inside)")
    prep.add_argument("--format", choices=("pt", "memmap"), default="pt",
                      help="pt: train.pt/val.pt tensors; memmap: train.bin/val.bin for corpora larger than RAM")
    prep.add_argument("--seed", type=int, default=0, help="seed of the document split")
    prep.set_defaults(handler=_prepare)

    comp = sub.add_parser("compare", help="tokens per document: schema tokenizer vs o200k_base and cl100k_base")
    comp.add_argument("dir", help="folder of .yml/.yaml/.json documents")
    comp.add_argument("--tokenizer", help="a trained schema tokenizer folder (default: train one on DIR)")
    comp.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size when training a tokenizer")
    comp.add_argument("--schema", help="JSON Schema file (default: the GitHub workflow schema shipped inside)")
    comp.add_argument("--json", dest="json_out", help="also write the numbers to this JSON file")
    comp.set_defaults(handler=_compare)

    from nanoforge.workflows.model_commands import register_model_commands

    register_model_commands(sub)


def _prepare(args) -> int:
    from nanoforge.workflows.prepare import prepare, summary_lines

    metadata = prepare(args.input, args.output, context_size=args.context_size, train_split=args.train_split,
                       vocab_size=args.vocab_size, tokenizer_dir=args.tokenizer, schema_path=args.schema,
                       fmt=args.format, seed=args.seed)
    print("\n".join(summary_lines(metadata, args.output)))
    return 0


def _compare(args) -> int:
    from nanoforge.tokenizer.schema import SchemaTokenizer, load_schema
    from nanoforge.workflows.compare import format_compare, run_compare
    from nanoforge.workflows.prepare import read_corpus

    corpus = read_corpus(args.dir)
    tokenizer = SchemaTokenizer.load(args.tokenizer) if args.tokenizer else None
    schema = tokenizer.schema if tokenizer is not None else load_schema(args.schema)
    result = run_compare(corpus.texts, tokenizer=tokenizer, vocab_size=args.vocab_size, schema=schema)
    print(format_compare(result))
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
