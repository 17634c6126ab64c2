"""A schema-aware tokenizer for JSON documents (GitHub Actions workflows by default).

What the schema determines costs (nearly) nothing: known property names, enum values and the corpus's most
frequent whole strings are single *literal* tokens, a variant choice costs one token only where the schema
leaves one open, consts and lone nulls cost none, and JSON punctuation is never spelled out. Free strings
(commands, names, expressions) go through a byte-level BPE trained with rustbpe on the corpus's strings. Values
the schema does not cover fall back to generic JSON tokens, so every JSON document round-trips.

    tok = SchemaTokenizer.train(texts, schema, vocab_size=8192)
    ids = tok.encode(yaml_or_json_text)
    tok.decode(ids) == canonical(yaml_or_json_text)
    state = tok.decode_prefix(ids[:10]); mask = tok.allowed_next(state); state.feed(token_id)

The pieces live in nanoforge.workflows: grammar (schema -> nodes), codec (ids <-> values, the decoder state),
constrain (allowed-next masks), canonical (the canonical JSON form; see docs/workflows.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nanoforge.errors import UserError
from nanoforge.workflows.canonical import DocumentError, canonical_json, canonical_number, parse_document
from nanoforge.workflows.codec import (EOS, LITERAL_BASE, N_POSITIONS, PAD, POSITION_BASE, Codec, DecodeState,
                                       EncodeStats, TokenDecodeError)
from nanoforge.workflows.grammar import Grammar, SchemaError

FORMAT_NAME = "nanoforge-schema-tokenizer"
FORMAT_VERSION = 1
TOKENIZER_FILE = "schema_tokenizer.json"
SCHEMA_FILE = "schema.json"
DEFAULT_VOCAB_SIZE = 8192
# Share of the vocabulary for whole corpus strings (the rest after the schema's literals goes to BPE merges).
CORPUS_LITERAL_SHARE = 0.25
MIN_LITERAL_DOCUMENTS = 2
# The GPT-4 split pattern with digits grouped by at most two (as nanoforge.tokenizer.bpe): merges go to words.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

__all__ = ["SchemaTokenizer", "TokenDecodeError", "DocumentError", "PrefixState", "default_schema_path",
           "EncodeStats"]

PrefixState = DecodeState


def default_schema_path() -> Path:
    """The GitHub workflow schema shipped inside the package (SchemaStore, Apache-2.0, NOTICE next to it)."""
    return Path(__file__).resolve().parent.parent / "workflows" / "github-workflow.schema.json"


def load_schema(path: str | os.PathLike | None = None) -> dict:
    path = Path(path) if path is not None else default_schema_path()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"schema file {path} does not exist; pass --schema PATH to a JSON Schema file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"schema file {path} is not valid JSON ({exc}); pass a draft-07 JSON Schema") from None


def _strings_of(value, out: Counter) -> None:
    """Count every key and string value (and number text) of a JSON value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                out[key] += 1
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            out[item] += 1
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            out[canonical_number(item)] += 1


def _bpe_encoding(ranks: dict[bytes, int], pattern: str):
    import tiktoken

    return tiktoken.Encoding("nanoforge-schema-bpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


class SchemaTokenizer:
    """Token ids for JSON documents along a JSON Schema; see the module docstring."""

    def __init__(self, schema: dict, literals: list[str], bpe_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN):
        try:
            self.grammar = Grammar(schema)
        except SchemaError as exc:
            raise UserError(f"cannot compile the schema: {exc}") from None
        self.schema = schema
        self.pattern = pattern
        self.bpe_ranks = bpe_ranks
        token_bytes = [b""] * len(bpe_ranks)
        for token, rank in bpe_ranks.items():
            token_bytes[rank] = token
        self.codec = Codec(self.grammar, literals, _bpe_encoding(bpe_ranks, pattern), token_bytes)
        self.literals = self.codec.literals

    # ----- training -----
    @classmethod
    def train(cls, docs: Iterable[str], schema: dict | str | os.PathLike | None = None,
              vocab_size: int = DEFAULT_VOCAB_SIZE, corpus_literal_share: float = CORPUS_LITERAL_SHARE
              ) -> "SchemaTokenizer":
        """Learn literals and BPE merges from `docs` (YAML or JSON texts; ones that do not parse are skipped)."""
        import rustbpe

        if not isinstance(schema, dict):
            schema = load_schema(schema)
        try:
            grammar = Grammar(schema)
            schema_literals = grammar.vocabulary_strings()
        except SchemaError as exc:
            raise UserError(f"cannot compile the schema: {exc}") from None
        counts: Counter = Counter()
        documents: Counter = Counter()  # in how many documents each string occurs
        for text in docs:
            try:
                here: Counter = Counter()
                _strings_of(parse_document(text), here)
            except DocumentError:
                continue
            counts.update(here)
            documents.update(here.keys())
        minimum = LITERAL_BASE + len(schema_literals) + 256 + 1
        if not isinstance(vocab_size, int) or vocab_size < minimum:
            raise UserError(f"vocab size must be an integer >= {minimum} for this schema (its {len(schema_literals)} "
                            f"names and values, 256 bytes, {LITERAL_BASE} reserved ids), got {vocab_size!r}")
        literal_set = set(schema_literals)
        budget = int(vocab_size * corpus_literal_share)
        budget = min(budget, vocab_size - minimum)
        # A whole string earns a token when it recurs across documents (repeats inside one document do not
        # generalize); longer ones save more.
        candidates = [(documents[s] * min(len(s), 32), s) for s, count in counts.items()
                      if documents[s] >= MIN_LITERAL_DOCUMENTS and s not in literal_set and 0 < len(s) <= 200]
        candidates.sort(key=lambda pair: (-pair[0], pair[1]))
        corpus_literals = [s for _, s in candidates[:budget]]
        literals = schema_literals + corpus_literals
        literal_set.update(corpus_literals)
        bpe_size = vocab_size - LITERAL_BASE - len(literals)
        texts = [s for s in counts for _ in range(min(documents[s], 64))]
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts or [" "]), bpe_size, pattern=SPLIT_PATTERN)
        ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
        # A small corpus may support fewer merges than asked for: the vocabulary is then smaller than requested.
        return cls(schema, literals, ranks, SPLIT_PATTERN)

    # ----- the public API -----
    @property
    def vocab_size(self) -> int:
        return self.codec.vocab_size

    @property
    def pad_id(self) -> int:
        return PAD

    @property
    def eos_id(self) -> int:
        return EOS

    @staticmethod
    def position_token(k: int) -> int:
        """The id marking a training window that starts at window index `k` of its document (capped at 63)."""
        if k < 0:
            raise ValueError(f"window position must be >= 0, got {k}")
        return POSITION_BASE + min(k, N_POSITIONS - 1)

    def encode_value(self, value) -> list[int]:
        return self.codec.encode_value(value)[0]

    def encode_with_stats(self, text: str) -> tuple[list[int], EncodeStats]:
        """Ids of a YAML or JSON document and how many of them went to fallback (generic JSON) tokens."""
        return self.codec.encode_value(parse_document(text))

    def encode(self, text: str) -> list[int]:
        """Ids of a YAML or JSON document (raises DocumentError, a ValueError, for text that is neither)."""
        return self.encode_with_stats(text)[0]

    def decode_value(self, ids) -> object:
        return self.codec.decode_value(ids)

    def decode(self, ids) -> str:
        """Canonical JSON of a complete document's ids (a trailing EOS is allowed); TokenDecodeError otherwise."""
        return canonical_json(self.codec.decode_value(ids))

    def decode_prefix(self, ids) -> DecodeState:
        """What a prefix means so far: `.partial_value()`, `.complete`, and `allowed_next(state)` for what may
        follow. The state is incremental: `state.feed(id)` advances it by one token."""
        state = self.codec.new_state()
        for token in ids:
            state.feed(token)
        return state

    def new_state(self) -> DecodeState:
        return self.codec.new_state()

    def allowed_next(self, state: DecodeState) -> np.ndarray:
        """Boolean mask over the vocabulary: the tokens after which the document can still end schema-valid.
        EOS is allowed exactly when the document is complete."""
        from nanoforge.workflows.constrain import allowed_mask

        return allowed_mask(state)

    def finishing_next(self, state: DecodeState) -> np.ndarray:
        """The allowed tokens that head for the end of the document (for a sampler out of length budget)."""
        from nanoforge.workflows.constrain import finishing_mask

        return finishing_mask(state)

    def token_name(self, token: int) -> str:
        return self.codec.token_name(token)

    # ----- persistence -----
    def to_json(self) -> dict:
        ranks = sorted(self.bpe_ranks.items(), key=lambda pair: pair[1])
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "schema_file": SCHEMA_FILE,
            "literals": self.literals,
            "bpe": {"pattern": self.pattern, "mergeable_ranks": [base64.b64encode(t).decode("ascii") for t, _ in ranks]},
        }

    def save(self, directory: str | os.PathLike) -> None:
        """Write `schema_tokenizer.json` and `schema.json` into `directory`, all or nothing."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / TOKENIZER_FILE).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")
        (tmp / SCHEMA_FILE).write_text(json.dumps(self.schema, ensure_ascii=False, indent=1), encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SchemaTokenizer":
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT_NAME or document.get("version") != FORMAT_VERSION:
                raise ValueError(f"not a {FORMAT_NAME} v{FORMAT_VERSION} file")
            schema = json.loads((directory / document["schema_file"]).read_text(encoding="utf-8"))
            ranks = {base64.b64decode(t): i for i, t in enumerate(document["bpe"]["mergeable_ranks"])}
            tokenizer = cls(schema, list(document["literals"]), ranks, document["bpe"]["pattern"])
        except FileNotFoundError as exc:
            raise UserError(f"no schema tokenizer in {directory} ({exc.filename} is missing); train one with "
                            f"`nanoforge workflows prepare --input DIR --output DIR`") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"schema tokenizer file {path} is damaged ({exc}); delete {directory} and train again"
                            ) from None
        if tokenizer.vocab_size != document["vocab_size"]:
            raise UserError(f"schema tokenizer file {path} is damaged (vocabulary size does not match)")
        return tokenizer

    def content_hash(self) -> str:
        """sha256 of the tokenizer's definition (schema included): equal hashes, identical token ids."""
        blob = json.dumps({"tok": self.to_json(), "schema": self.schema}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()
