"""Schema-aware tokenizer speed (encode/decode MB/s, constrained-decoding cost per step) against o200k_base,
and the token-count comparison table (schema tokenizer vs o200k/cl100k on minified JSON and on YAML).

    python benchmarks/tokenizer_throughput.py [--input ../shared/data/workflows/starter] [--vocab 8192]

Prints tables and writes benchmarks/results/tokenizer_throughput.json. MB are megabytes of canonical JSON
(what decode produces) unless a row says otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "tokenizer_throughput.json"
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "workflows" / "starter"


def _rate(fn, items, nbytes: int, min_seconds: float = 1.0) -> float:
    """MB/s of `fn` over all `items`, repeated until at least `min_seconds` have passed."""
    rounds, start = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return rounds * nbytes / elapsed / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(DEFAULT_INPUT), help="folder of YAML/JSON workflow files")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum time per measurement")
    args = parser.parse_args()

    from nanoforge.tokenizer.schema import SchemaTokenizer, load_schema
    from nanoforge.workflows.canonical import DocumentError, canonical_json, parse_document
    from nanoforge.workflows.compare import format_compare, general_encodings, run_compare
    from nanoforge.workflows.prepare import read_corpus

    corpus = read_corpus(args.input)
    texts = {}
    for name, text in corpus.texts.items():
        try:
            parse_document(text)
            texts[name] = text
        except DocumentError:
            continue
    schema = load_schema()
    start = time.perf_counter()
    tok = SchemaTokenizer.train(texts.values(), schema, args.vocab)
    train_s = time.perf_counter() - start

    values = [parse_document(t) for t in texts.values()]
    minified = [canonical_json(v) for v in values]
    json_bytes = sum(len(m.encode("utf-8")) for m in minified)
    yaml_bytes = sum(len(t.encode("utf-8")) for t in texts.values())
    ids = [tok.encode_value(v) for v in values]
    o200k = general_encodings()["o200k_base"]
    o_ids = [o200k.encode(m) for m in minified]

    rows = {
        "schema encode, YAML text in (MB of YAML)": _rate(tok.encode, list(texts.values()), yaml_bytes, args.seconds),
        "schema encode, JSON text in": _rate(tok.encode, minified, json_bytes, args.seconds),
        "schema encode, parsed value in": _rate(tok.encode_value, values, json_bytes, args.seconds),
        "schema decode to canonical JSON": _rate(tok.decode, ids, json_bytes, args.seconds),
        "o200k encode (minified JSON)": _rate(o200k.encode, minified, json_bytes, args.seconds),
        "o200k decode (minified JSON)": _rate(o200k.decode, o_ids, json_bytes, args.seconds),
    }
    # What a constrained sampler pays per step: feed one token, ask for the next mask (teacher-forced here).
    steps, start = 0, time.perf_counter()
    for doc_ids in ids[:40]:
        state = tok.new_state()
        for token in doc_ids:
            tok.allowed_next(state)
            state.feed(token)
            steps += 1
    mask_ms = (time.perf_counter() - start) / steps * 1e3

    print(f"schema tokenizer: vocab {tok.vocab_size} (asked {args.vocab}), {len(tok.literals)} literals, "
          f"trained in {train_s:.2f} s on {len(texts)} documents ({yaml_bytes / 1e3:.0f} kB YAML, "
          f"{json_bytes / 1e3:.0f} kB JSON)")
    print(f"{'measurement':<45} {'MB/s':>8} {'vs o200k':>9}")
    for name, rate in rows.items():
        base = rows["o200k encode (minified JSON)"] if "encode" in name else rows["o200k decode (minified JSON)"]
        print(f"{name:<45} {rate:>8.2f} {rate / base:>8.2f}x")
    print(f"{'allowed_next + feed per token (ms)':<45} {mask_ms:>8.3f}")
    print()
    compare = run_compare(texts, schema=schema, vocab_size=args.vocab)
    print(format_compare(compare))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor()},
        "input": str(args.input), "documents": len(texts), "vocab_size": tok.vocab_size, "train_seconds": train_s,
        "throughput_mb_per_s": rows, "constrained_step_ms": mask_ms, "compare": compare,
    }, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
