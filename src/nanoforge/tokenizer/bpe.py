"""Byte-level BPE: trained with rustbpe (fast, parallel), encoded with tiktoken (fast, no network).

The vocabulary is the 256 single bytes, then the learned merges in rank order, then the chat special tokens.
Special tokens are only ever produced by code (`special_id`), never by encoding text: a user typing
"<|assistant_start|>" gets ordinary tokens, so they cannot forge the chat structure.

On disk (`<run_dir>/tokenizer/`):
- tokenizer.json: {"format": "nanoforge-bpe", "version": 1, "pattern", "mergeable_ranks": [base64 of each
  token's bytes, in rank order], "special_tokens": [names in id order, ids following the merges]}
- token_bytes.npy: UTF-8 byte length per token id (0 for specials), for bits-per-byte without tiktoken.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from nanoforge.errors import UserError

# The GPT-4 split pattern, except digits group by at most two (as in nanochat): with a small vocabulary,
# three-digit number tokens waste merges that letters need more.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

SPECIAL_NAMES = (
    "bos",
    "user_start",
    "user_end",
    "assistant_start",
    "assistant_end",
    "python_start",
    "python_end",
    "output_start",
    "output_end",
)

FORMAT_NAME = "nanoforge-bpe"
FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.npy"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_NAMES) + 1  # every byte, the specials, and at least one merge


def special_text(name: str) -> str:
    return f"<|{name}|>"


class Tokenizer:
    """A trained vocabulary: `mergeable_ranks` maps token bytes to ids 0..n-1 (the bytes first, then merges)."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN):
        import tiktoken

        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise ValueError("mergeable ranks must be exactly the ids 0..n-1")
        self.mergeable_ranks = mergeable_ranks
        self.pattern = pattern
        self.special_ids = {name: n + i for i, name in enumerate(SPECIAL_NAMES)}
        self._encoding = tiktoken.Encoding(
            "nanoforge-bpe",
            pat_str=pattern,
            mergeable_ranks=mergeable_ranks,
            special_tokens={special_text(name): i for name, i in self.special_ids.items()},
        )
        lengths = np.zeros(n + len(SPECIAL_NAMES), dtype=np.int32)
        for token, rank in mergeable_ranks.items():
            lengths[rank] = len(token)
        self.token_bytes = lengths

    @property
    def vocab_size(self) -> int:
        return len(self.mergeable_ranks) + len(SPECIAL_NAMES)

    @property
    def bos_id(self) -> int:
        return self.special_ids["bos"]

    def special_id(self, name: str) -> int:
        """Id of a special token by name ('bos', 'user_start', ...; '<|bos|>' is accepted too)."""
        key = name[2:-2] if name.startswith("<|") and name.endswith("|>") else name
        try:
            return self.special_ids[key]
        except KeyError:
            raise KeyError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_NAMES)}") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text in it is encoded as ordinary text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._encoding.decode(ids)

    def id_to_bytes(self, token_id: int) -> bytes:
        return self._encoding.decode_single_token_bytes(token_id)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Tokenizer)
            and self.pattern == other.pattern
            and self.mergeable_ranks == other.mergeable_ranks
        )

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"

    # -- files -------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json and token_bytes.npy into `directory`, each file atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        by_rank = sorted(self.mergeable_ranks.items(), key=lambda item: item[1])
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": list(SPECIAL_NAMES),
            "mergeable_ranks": [base64.b64encode(token).decode("ascii") for token, _ in by_rank],
        }
        write_file_atomic(directory / TOKENIZER_FILE, json.dumps(document, indent=1).encode("utf-8"))
        tmp = directory / (TOKEN_BYTES_FILE + ".tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, self.token_bytes)
        os.replace(tmp, directory / TOKEN_BYTES_FILE)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise UserError(
                f"no tokenizer at {path}; train one with `nanoforge tokenizer train --run-dir <run dir>`"
            )
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT_NAME:
                raise ValueError(f"format is {document.get('format')!r}, expected {FORMAT_NAME!r}")
            if document.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {document.get('version')!r}; this nanoforge reads {FORMAT_VERSION}")
            if tuple(document["special_tokens"]) != SPECIAL_NAMES:
                raise ValueError("special tokens differ from the ones this nanoforge uses")
            tokens = [base64.b64decode(item, validate=True) for item in document["mergeable_ranks"]]
            ranks = {token: rank for rank, token in enumerate(tokens)}
            if len(ranks) != len(tokens):
                raise ValueError("a token appears twice")
            return cls(ranks, document["pattern"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"tokenizer file {path} is damaged ({exc}); retrain it with `nanoforge tokenizer "
                            f"train --run-dir <run dir>` after removing {path.parent}") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN) -> Tokenizer:
    """Learn `vocab_size - 9` byte-level tokens (the 9 specials complete the vocabulary) from `texts`."""
    import rustbpe

    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"tokenizer.vocab_size must be an integer >= {MIN_VOCAB_SIZE}, got {vocab_size!r}")
    wanted = vocab_size - len(SPECIAL_NAMES)
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), wanted, pattern=pattern)
    ranks = dict(trainer.get_mergeable_ranks())
    if len(ranks) < wanted:
        raise UserError(
            f"the training text only supports {len(ranks)} tokens, fewer than the {wanted} asked for; "
            f"lower tokenizer.vocab_size or train on more text"
        )
    return Tokenizer(ranks, pattern)


def write_file_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_directory_atomic(tokenizer: Tokenizer, directory: Path, extra_files: dict[str, bytes] | None = None) -> None:
    """Write a whole tokenizer folder so that it either exists complete or not at all."""
    directory = Path(directory)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(tmp)
    for name, data in (extra_files or {}).items():
        write_file_atomic(tmp / name, data)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
