"""Demo corpus build, tokenizer training and encoding speed, and compression against GPT-4/GPT-4o vocabularies.

    python benchmarks/tokenizer_bench.py [--size-mb 30] [--vocab 4096] [--threads 2]

Prints a table and writes benchmarks/results/tokenizer.json. Everything runs in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from nanoforge.config import PRESETS
from nanoforge.data.demo_corpus import build_demo_corpus
from nanoforge.data.shards import iter_texts, list_shards
from nanoforge.tokenizer.bpe import train_tokenizer
from nanoforge.tokenizer.commands import capped_texts
from nanoforge.tokenizer.compression import SAMPLE_TEXTS, compare, format_table, reference_encoders

RESULTS = Path(__file__).resolve().parent / "results" / "tokenizer.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=30.0)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    demo_tok = PRESETS["demo"]["tokenizer"]

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "demo"
        start = time.perf_counter()
        summary = build_demo_corpus(corpus, args.size_mb, progress=False)
        build_s = time.perf_counter() - start
        train_paths, val_path = list_shards(corpus)

        texts = list(capped_texts(iter_texts(train_paths), demo_tok["max_chars"], demo_tok["doc_cap"]))
        train_chars = sum(map(len, texts))
        start = time.perf_counter()
        tokenizer = train_tokenizer(texts, args.vocab)
        train_s = time.perf_counter() - start

        val_texts = list(iter_texts([val_path]))
        val_bytes = sum(len(t.encode("utf-8")) for t in val_texts)
        encode_rates = {}
        for threads in sorted({1, args.threads}):
            start = time.perf_counter()
            tokenizer.encode_batch(val_texts, num_threads=threads)
            encode_rates[threads] = val_bytes / (time.perf_counter() - start)

    encoders = {f"ours-{tokenizer.vocab_size}": tokenizer.encode, **reference_encoders()}
    named = {name: [text] for name, text in SAMPLE_TEXTS.items()}
    named["validation"] = val_texts
    compression = compare(named, encoders)

    rows = [
        ("demo corpus build", f"{build_s:.2f} s", f"{summary.bytes / 1e6:.1f} MB, {summary.documents} docs, "
                                                   f"{summary.shards} shards"),
        (f"train vocab {args.vocab}", f"{train_s:.2f} s", f"{train_chars / 1e6:.1f}M chars, "
                                                           f"{train_chars / train_s / 1e6:.2f}M chars/s"),
    ]
    rows += [(f"encode_batch x{t}", f"{rate / 1e6:.1f} MB/s", f"validation shard, {val_bytes / 1e6:.1f} MB")
             for t, rate in encode_rates.items()]
    print(f"{'measure':<22}{'value':>12}  detail")
    for name, value, detail in rows:
        print(f"{name:<22}{value:>12}  {detail}")
    print()
    print(format_table(compression, list(encoders)))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": platform.processor()},
        "demo_corpus": {"seconds": round(build_s, 3), "bytes": summary.bytes, "documents": summary.documents,
                        "shards": summary.shards},
        "train": {"vocab_size": args.vocab, "chars": train_chars, "seconds": round(train_s, 3)},
        "encode_bytes_per_s": {str(t): round(r) for t, r in encode_rates.items()},
        "compression": compression,
    }, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
