"""Parquet shards (write, list, read) and the deterministic demo corpus."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanoforge.data.demo_corpus import build_demo_corpus, split_long
from nanoforge.data.shards import (
    iter_row_groups,
    iter_texts,
    list_shards,
    num_row_groups,
    read_row_group,
    write_shards,
)
from nanoforge.errors import UserError


def _docs(n: int) -> list[str]:
    return [f"document {i}: " + "word " * (i % 7) + "東京 🙂" for i in range(n)]


def test_shards_hold_every_document_in_order_with_row_groups(tmp_path):
    docs = _docs(2500)
    paths = write_shards(iter(docs), tmp_path, docs_per_shard=1000, row_group_docs=256)
    assert [p.name for p in paths] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert list(iter_texts(paths)) == docs
    first = pq.ParquetFile(paths[0])
    assert first.schema_arrow.names == ["text"]
    assert first.metadata.row_group(0).column(0).compression == "ZSTD"
    assert num_row_groups(paths[0]) == 4  # 256 + 256 + 256 + 232
    assert read_row_group(paths[0], 1) == docs[256:512]
    assert [len(g) for g in iter_row_groups(paths[2:])] == [256, 244]


def test_chars_per_shard_closes_a_shard_after_the_document_that_reaches_it(tmp_path):
    docs = ["a" * 40, "b" * 40, "c" * 40, "d" * 10]
    paths = write_shards(docs, tmp_path, chars_per_shard=70)
    assert [list(iter_texts([p])) for p in paths] == [docs[:2], docs[2:]]
    with pytest.raises(ValueError, match="exactly one"):
        write_shards(docs, tmp_path / "x", docs_per_shard=1, chars_per_shard=1)


def test_an_interrupted_write_leaves_only_complete_shards(tmp_path):
    def docs_then_failure():
        yield from _docs(25)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        write_shards(docs_then_failure(), tmp_path, docs_per_shard=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert list(iter_texts(sorted(tmp_path.iterdir()))) == _docs(20)


def test_list_shards_splits_off_the_last_shard_for_validation(tmp_path):
    write_shards(_docs(30), tmp_path, docs_per_shard=10)
    (tmp_path / "notes.txt").write_text("not a shard")
    train, val = list_shards(tmp_path)
    assert [p.name for p in train] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert val.name == "shard_00002.parquet"


def test_list_shards_names_the_command_that_creates_a_missing_corpus(tmp_path):
    with pytest.raises(UserError, match="does not exist; build it with `nanoforge data build-demo`"):
        list_shards(tmp_path / "corpora" / "demo")
    with pytest.raises(UserError, match="nanoforge stage --run-dir"):
        list_shards(tmp_path / "corpora" / "fineweb-edu")
    one = tmp_path / "demo"
    write_shards(_docs(5), one, docs_per_shard=10)
    with pytest.raises(UserError, match="has 1 shard.*at least 2"):
        list_shards(one)


def test_unreadable_shards_are_user_errors(tmp_path):
    bad = tmp_path / "shard_00000.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match="not a readable parquet file"):
        list(iter_texts([bad]))
    other = tmp_path / "shard_00001.parquet"
    pq.write_table(pa.table({"body": ["x"]}), other)
    with pytest.raises(UserError, match="no 'text' column"):
        read_row_group(other, 0)


def test_split_long_keeps_all_text_in_bounded_pieces():
    text = "\n\n".join(f"paragraph {i} " + "x" * (i * 37 % 900) for i in range(200)) + "\n" + "y" * 5000
    pieces = split_long(text, max_chars=1000)
    assert all(len(p) <= 1000 for p in pieces) and len(pieces) > 10
    assert "".join("".join(pieces).split()) == "".join(text.split())


def test_demo_corpus_is_byte_identical_across_builds(tmp_path):
    first = build_demo_corpus(tmp_path / "a", size_mb=0.4, progress=False)
    second = build_demo_corpus(tmp_path / "b", size_mb=0.4, progress=False)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert "corpus.json" in files_a and len(files_a) == first.shards + 1
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert first.documents == second.documents and first.complete
    train, val = list_shards(tmp_path / "a")
    texts = list(iter_texts(train + [val]))
    assert len(texts) == first.documents and first.bytes >= 400_000
    assert sum(len(t.encode()) for t in texts) == first.bytes
    assert any("Module " in t for t in texts) and all(t.strip() for t in texts)


def test_rebuilding_the_demo_corpus_replaces_it_in_place(tmp_path):
    out = tmp_path / "demo"
    build_demo_corpus(out, size_mb=0.3, progress=False)
    (out / "shard_00042.parquet").write_text("stale")
    build_demo_corpus(out, size_mb=0.2, progress=False)
    assert not (out / "shard_00042.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temp or old folders left
