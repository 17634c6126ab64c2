"""`nanoforge workflows compare DIR`: tokens per document, schema tokenizer vs o200k_base and cl100k_base.

The general tokenizers see the same document twice: as minified JSON (the canonical form, what the schema
tokenizer decodes to) and as the YAML text as written. They come from the `bpe-openai` package, which ships
its vocabularies inside the wheel (tiktoken.get_encoding would download them). Two figures for the schema
tokenizer: trained on all documents (the benchmark setting) and held out (trained on a seeded 80% of the
documents, counted on the other 20%).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from nanoforge.errors import UserError

BANDS = [(0, 1024, "< 1 KB"), (1024, 2048, "1-2 KB"), (2048, 4096, "2-4 KB"), (4096, 8192, "4-8 KB"),
         (8192, float("inf"), ">= 8 KB")]
GENERAL = ("o200k_base", "cl100k_base")


@dataclass
class DocCount:
    name: str
    json_bytes: int
    schema: int
    o200k_json: int
    cl100k_json: int
    o200k_yaml: int
    cl100k_yaml: int
    fallback_tokens: int

    @property
    def saving_vs_o200k(self) -> float:
        return 1.0 - self.schema / self.o200k_json


def general_encodings() -> dict:
    import bpe_openai

    return {name: bpe_openai.get_encoding(name) for name in GENERAL}


def count_documents(texts: dict[str, str], tokenizer, encodings=None) -> list[DocCount]:
    from nanoforge.workflows.canonical import DocumentError, canonical_json, parse_document

    encodings = encodings or general_encodings()
    out = []
    for name, text in texts.items():
        try:
            value = parse_document(text)
        except DocumentError:
            continue
        minified = canonical_json(value)
        ids, stats = tokenizer.codec.encode_value(value)
        out.append(DocCount(
            name=name, json_bytes=len(minified.encode("utf-8")), schema=len(ids),
            o200k_json=len(encodings["o200k_base"].encode(minified)),
            cl100k_json=len(encodings["cl100k_base"].encode(minified)),
            o200k_yaml=len(encodings["o200k_base"].encode(text)),
            cl100k_yaml=len(encodings["cl100k_base"].encode(text)),
            fallback_tokens=stats.fallback_tokens,
        ))
    return out


def _row(label: str, docs: list[DocCount]) -> dict:
    def mean(attr):
        return float(np.mean([getattr(d, attr) for d in docs])) if docs else 0.0

    return {
        "band": label, "docs": len(docs), "schema": mean("schema"), "o200k_json": mean("o200k_json"),
        "cl100k_json": mean("cl100k_json"), "o200k_yaml": mean("o200k_yaml"), "cl100k_yaml": mean("cl100k_yaml"),
        # mean of the per-document savings (every document weighs the same, as in "averaged over workflows")
        "saving_vs_o200k_json": float(np.mean([d.saving_vs_o200k for d in docs])) if docs else 0.0,
        "saving_vs_cl100k_json": float(np.mean([1 - d.schema / d.cl100k_json for d in docs])) if docs else 0.0,
    }


def compare_table(counts: list[DocCount]) -> dict:
    rows = []
    for low, high, label in BANDS:
        band = [d for d in counts if low <= d.json_bytes < high]
        if band:
            rows.append(_row(label, band))
    largest = max(counts, key=lambda d: d.json_bytes)
    total = sum(d.schema for d in counts)
    return {
        "rows": rows,
        "mean": _row("mean", counts),
        "largest": {**asdict(largest), "saving_vs_o200k_json": largest.saving_vs_o200k},
        "fallback_fraction": sum(d.fallback_tokens for d in counts) / total if total else 0.0,
    }


def run_compare(texts: dict[str, str], tokenizer=None, vocab_size: int = 8192, schema=None, holdout: float = 0.2,
                seed: int = 0) -> dict:
    from nanoforge.tokenizer.schema import SchemaTokenizer, load_schema
    from nanoforge.workflows.prepare import split_documents

    if not texts:
        raise UserError("no documents to compare")
    schema_doc = schema if isinstance(schema, dict) else load_schema(schema)
    encodings = general_encodings()
    trained_here = tokenizer is None
    if trained_here:
        tokenizer = SchemaTokenizer.train(texts.values(), schema_doc, vocab_size)
    counts = count_documents(texts, tokenizer, encodings)
    if not counts:
        raise UserError("none of the documents parses as YAML or JSON")
    result = {"vocab_size": tokenizer.vocab_size, "documents": len(counts), "all": compare_table(counts)}
    if holdout > 0 and len(counts) >= 5:
        train_names, val_names = split_documents([d.name for d in counts], 1.0 - holdout, seed)
        held = SchemaTokenizer.train((texts[n] for n in train_names), schema_doc, vocab_size)
        held_counts = count_documents({n: texts[n] for n in val_names}, held, encodings)
        if held_counts:
            result["held_out"] = {"train_documents": len(train_names), **compare_table(held_counts)}
    result["tokenizer"] = "trained on these documents" if trained_here else "given"
    return result


def format_compare(result: dict) -> str:
    header = (f"{'size band':<10} {'docs':>5} {'schema':>8} {'o200k json':>11} {'cl100k json':>12} "
              f"{'o200k yaml':>11} {'cl100k yaml':>12} {'vs o200k json':>14}")
    lines = [f"tokens per document (schema tokenizer vocab {result['vocab_size']}, {result['tokenizer']}):", header,
             "-" * len(header)]

    def fmt(row):
        return (f"{row['band']:<10} {row['docs']:>5} {row['schema']:>8.1f} {row['o200k_json']:>11.1f} "
                f"{row['cl100k_json']:>12.1f} {row['o200k_yaml']:>11.1f} {row['cl100k_yaml']:>12.1f} "
                f"{-100 * row['saving_vs_o200k_json']:>+13.1f}%")

    table = result["all"]
    lines += [fmt(r) for r in table["rows"]]
    lines += ["-" * len(header), fmt(table["mean"])]
    big = table["largest"]
    lines.append(f"largest document: {big['name']} ({big['json_bytes']:,} bytes of JSON): schema {big['schema']}, "
                 f"o200k json {big['o200k_json']}, cl100k json {big['cl100k_json']}, o200k yaml {big['o200k_yaml']}, "
                 f"cl100k yaml {big['cl100k_yaml']} ({-100 * big['saving_vs_o200k_json']:+.1f}% vs o200k json)")
    lines.append(f"fallback (generic JSON) tokens: {100 * table['fallback_fraction']:.2f}%")
    held = result.get("held_out")
    if held:
        m = held["mean"]
        lines.append(f"held out (trained on {held['train_documents']} documents, counted on {m['docs']} others): "
                     f"schema {m['schema']:.1f} vs o200k json {m['o200k_json']:.1f} tokens per document, "
                     f"{-100 * m['saving_vs_o200k_json']:+.1f}% (cl100k json {-100 * m['saving_vs_cl100k_json']:+.1f}%)")
    return "\n".join(lines)
