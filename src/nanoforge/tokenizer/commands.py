"""`nanoforge tokenizer train|eval --run-dir DIR`: the run's tokenizer lives in <run_dir>/tokenizer/."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

DONE_FILE = "DONE"
EVAL_FILE = "eval.json"


def register(subparsers) -> None:
    from nanoforge.cli import add_config_args

    tokenizer = subparsers.add_parser("tokenizer", help="train and evaluate the run's BPE tokenizer")
    sub = tokenizer.add_subparsers(dest="tokenizer_command", metavar="<subcommand>", required=True)

    train = sub.add_parser("train", help="train the BPE tokenizer on the config's corpus (skipped when done)")
    train.add_argument("--run-dir", required=True, help="run directory; the tokenizer goes to <run_dir>/tokenizer/")
    add_config_args(train)
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("eval", help="compression (bytes/token) vs GPT-4's and GPT-4o's tokenizers")
    evaluate.add_argument("--run-dir", required=True, help="run directory with a trained tokenizer")
    evaluate.add_argument("--val-docs", type=int, default=500, help="validation documents to measure (default 500)")
    evaluate.set_defaults(handler=_eval)


def run_config(args, create: bool):
    """(cfg, run_dir): <run_dir>/config.yaml when it exists (the source of truth, with --set applied on top as
    the training stages do), else a new config from --preset/--config/--set (not saved here)."""
    from nanoforge.config import load_yaml, make_config
    from nanoforge.errors import UserError

    run_dir = Path(args.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file; give a folder")
    config_path = run_dir / "config.yaml"
    if not create:
        if not config_path.is_file():
            raise UserError(
                f"{run_dir} has no config.yaml; start the run with `nanoforge tokenizer train --run-dir {run_dir}`"
            )
        return make_config(base=load_yaml(config_path)), run_dir
    from nanoforge.train.run import resolve_config  # the same rules as every training stage

    return resolve_config(run_dir, args.preset, args.overrides, args.config), run_dir


def capped_texts(texts: Iterable[str], max_chars: int, doc_cap: int) -> Iterator[str]:
    """Each document cut to `doc_cap` characters, stopping after `max_chars` characters in all."""
    remaining = max_chars
    for text in texts:
        if remaining <= 0:
            return
        piece = text[: min(doc_cap, remaining)]
        remaining -= len(piece)
        yield piece


def _train(args) -> int:
    from tqdm import tqdm

    from nanoforge.config import save_config
    from nanoforge.data.shards import iter_texts, list_shards
    from nanoforge.errors import UserError
    from nanoforge.tokenizer.bpe import MIN_VOCAB_SIZE, save_directory_atomic, train_tokenizer

    cfg, run_dir = run_config(args, create=True)
    tokenizer_dir = run_dir / "tokenizer"
    tc = cfg.tokenizer
    if (tokenizer_dir / DONE_FILE).is_file():
        try:
            trained = json.loads((tokenizer_dir / DONE_FILE).read_text()).get("vocab_size")
        except (OSError, ValueError, AttributeError):
            trained = None
        if trained is not None and trained != tc.vocab_size:
            raise UserError(f"{tokenizer_dir} holds a {trained}-token tokenizer but tokenizer.vocab_size is "
                            f"{tc.vocab_size}; use a new --run-dir (or remove {tokenizer_dir} to retrain)")
        print(f"tokenizer already trained at {tokenizer_dir}; skipping (remove that folder to retrain)")
        return 0
    if tc.vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"tokenizer.vocab_size must be >= {MIN_VOCAB_SIZE}, got {tc.vocab_size}")
    if tc.max_chars <= 0 or tc.doc_cap <= 0:
        raise UserError("tokenizer.max_chars and tokenizer.doc_cap must be positive")
    corpus_dir = cfg.data_dir() / "corpora" / cfg.data.corpus
    train_paths, _ = list_shards(corpus_dir)

    stats = {"documents": 0, "chars": 0}

    def counted(texts):
        with tqdm(total=tc.max_chars, unit="char", unit_scale=True, desc="tokenizer text") as bar:
            for text in texts:
                stats["documents"] += 1
                stats["chars"] += len(text)
                bar.update(len(text))
                yield text

    print(f"training a {tc.vocab_size}-token BPE tokenizer on {corpus_dir} ({len(train_paths)} training shards)")
    start = time.perf_counter()
    tokenizer = train_tokenizer(
        counted(capped_texts(iter_texts(train_paths), tc.max_chars, tc.doc_cap)), tc.vocab_size
    )
    seconds = time.perf_counter() - start
    summary = {
        "vocab_size": tokenizer.vocab_size,
        "corpus": cfg.data.corpus,
        "documents": stats["documents"],
        "chars": stats["chars"],
        "seconds": round(seconds, 3),
    }
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed training leaves no run folder behind
    save_config(cfg, run_dir / "config.yaml")
    save_directory_atomic(
        tokenizer, tokenizer_dir, extra_files={DONE_FILE: (json.dumps(summary, indent=2) + "\n").encode()}
    )
    rate = stats["chars"] / seconds if seconds > 0 else float("inf")
    print(
        f"tokenizer: vocab {tokenizer.vocab_size} from {stats['documents']} documents, {stats['chars'] / 1e6:.1f}M "
        f"chars in {seconds:.1f} s ({rate / 1e6:.2f}M chars/s) -> {tokenizer_dir}"
    )
    return 0


def _eval(args) -> int:
    from nanoforge.data.shards import iter_texts, list_shards
    from nanoforge.errors import UserError
    from nanoforge.tokenizer.bpe import Tokenizer, write_file_atomic
    from nanoforge.tokenizer.compression import SAMPLE_TEXTS, compare, format_table, reference_encoders

    if args.val_docs < 0:
        raise UserError(f"--val-docs must be >= 0, got {args.val_docs}")
    cfg, run_dir = run_config(args, create=False)
    tokenizer_dir = run_dir / "tokenizer"
    if not (tokenizer_dir / DONE_FILE).is_file():
        raise UserError(f"no trained tokenizer in {tokenizer_dir}; run `nanoforge tokenizer train --run-dir {run_dir}`")
    tokenizer = Tokenizer.load(tokenizer_dir)

    named_texts: dict[str, list[str]] = {name: [text] for name, text in SAMPLE_TEXTS.items()}
    if args.val_docs:
        _, val_path = list_shards(cfg.data_dir() / "corpora" / cfg.data.corpus)
        val_texts = []
        for text in iter_texts([val_path]):
            if len(val_texts) >= args.val_docs:
                break
            val_texts.append(text)
        named_texts["validation"] = val_texts
        print(f"validation: the first {len(val_texts)} documents of {val_path}")

    ours = f"ours-{tokenizer.vocab_size}"
    encoders = {ours: tokenizer.encode, **reference_encoders()}
    results = compare(named_texts, encoders)
    print(format_table(results, list(encoders)))
    if len(encoders) == 1:
        print("note: no reference vocabularies (the bpe-openai package is missing); only this run's tokenizer")
    report = {
        "vocab_size": tokenizer.vocab_size,
        "encoders": list(encoders),
        "validation_documents": len(named_texts.get("validation", [])),
        "results": results,
    }
    write_file_atomic(tokenizer_dir / EVAL_FILE, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {tokenizer_dir / EVAL_FILE}")
    return 0
