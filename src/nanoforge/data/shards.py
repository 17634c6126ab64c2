"""A corpus is a folder of parquet shards with one `text` column: shard_00000.parquet, shard_00001.parquet, ...

The last shard (in name order) is the validation split; all earlier ones are training data. Shards are
written to a temporary name and renamed, so a reader never sees half a shard. Everything here streams:
documents go in and come out one row group (~1024 documents) at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from nanoforge.errors import UserError

ROW_GROUP_DOCS = 1024
SHARD_GLOB = "shard_*.parquet"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def write_shards(
    docs: Iterable[str],
    out_dir: str | os.PathLike,
    docs_per_shard: int | None = None,
    chars_per_shard: int | None = None,
    row_group_docs: int = ROW_GROUP_DOCS,
    first_index: int = 0,
) -> list[Path]:
    """Write `docs` into shards of `docs_per_shard` documents or about `chars_per_shard` characters each
    (a shard closes after the document that reaches the limit). Returns the shard paths in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (docs_per_shard is None) == (chars_per_shard is None):
        raise ValueError("give exactly one of docs_per_shard or chars_per_shard")
    limit = docs_per_shard if docs_per_shard is not None else chars_per_shard
    if limit <= 0 or row_group_docs <= 0:
        raise ValueError("shard and row group sizes must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("text", pa.string())])
    written: list[Path] = []
    writer = None
    tmp_path = final_path = None
    pending: list[str] = []
    shard_docs = shard_chars = 0

    def flush_row_group():
        if pending:
            writer.write_table(pa.table({"text": pending}, schema=schema), row_group_size=row_group_docs)
            pending.clear()

    try:
        for doc in docs:
            if not isinstance(doc, str):
                raise TypeError(f"documents must be str, got {type(doc).__name__}")
            if writer is None:
                final_path = out_dir / shard_name(first_index + len(written))
                tmp_path = final_path.with_name(final_path.name + ".tmp")
                writer = pq.ParquetWriter(tmp_path, schema, compression="zstd")
                shard_docs = shard_chars = 0
            pending.append(doc)
            shard_docs += 1
            shard_chars += len(doc)
            if len(pending) >= row_group_docs:
                flush_row_group()
            full = shard_docs >= limit if docs_per_shard is not None else shard_chars >= limit
            if full:
                flush_row_group()
                writer.close()
                writer = None
                os.replace(tmp_path, final_path)
                written.append(final_path)
        if writer is not None:
            flush_row_group()
            writer.close()
            writer = None
            os.replace(tmp_path, final_path)
            written.append(final_path)
    finally:
        if writer is not None:  # an exception mid-shard: leave no partial file behind
            writer.close()
            tmp_path.unlink(missing_ok=True)
    return written


def _create_hint(corpus_dir: Path) -> str:
    if corpus_dir.name == "demo":
        return "build it with `nanoforge data build-demo`"
    return "download it with `nanoforge stage --run-dir <run dir>` (on a node with internet)"


def list_shards(corpus_dir: str | os.PathLike) -> tuple[list[Path], Path]:
    """(training shards, validation shard) of a corpus folder; the last shard is validation."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise UserError(f"corpus folder {corpus_dir} does not exist; {_create_hint(corpus_dir)}")
    paths = sorted(corpus_dir.glob(SHARD_GLOB))
    if len(paths) < 2:
        raise UserError(
            f"corpus folder {corpus_dir} has {len(paths)} shard(s), needs at least 2 (training + validation); "
            f"{_create_hint(corpus_dir)}"
        )
    return paths[:-1], paths[-1]


def _open(path: Path):
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise UserError(f"shard {path} does not exist; rebuild or re-stage its corpus") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for damaged files
        raise UserError(f"shard {path} is not a readable parquet file ({exc}); re-stage its corpus") from None
    if "text" not in parquet.schema_arrow.names:
        raise UserError(f"shard {path} has no 'text' column (columns: {parquet.schema_arrow.names})")
    return parquet


def _texts(table) -> list[str]:
    return [text for text in table.column("text").to_pylist() if text is not None]


def num_row_groups(path: str | os.PathLike) -> int:
    return _open(Path(path)).num_row_groups


def read_row_group(path: str | os.PathLike, index: int) -> list[str]:
    """The documents of one row group: the unit a resumable dataloader reads and records."""
    return _texts(_open(Path(path)).read_row_group(index, columns=["text"]))


def iter_row_groups(paths: Sequence[str | os.PathLike]) -> Iterator[list[str]]:
    for path in paths:
        parquet = _open(Path(path))
        for index in range(parquet.num_row_groups):
            yield _texts(parquet.read_row_group(index, columns=["text"]))


def iter_texts(paths: Sequence[str | os.PathLike]) -> Iterator[str]:
    """Every document of `paths` in order, one row group in memory at a time."""
    for group in iter_row_groups(paths):
        yield from group
