"""`nanoforge workflows prepare` and `compare` on starter workflows: windows, splits, formats, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from nanoforge.cli import main
from nanoforge.tokenizer.schema import SchemaTokenizer
from nanoforge.workflows.canonical import parse_document
from nanoforge.workflows.prepare import load_windows, split_documents, windows_of


@pytest.fixture(scope="module")
def corpus_dir(shared_data, tmp_path_factory):
    """24 starter workflows in two folders (the search is recursive), one as JSON, plus one broken file."""
    root = tmp_path_factory.mktemp("workflows")
    files = sorted((shared_data / "workflows" / "starter").glob("*.yml"))[:24]
    (root / "nested").mkdir()
    for i, path in enumerate(files):
        target = root / ("nested" if i % 3 == 0 else ".") / path.name
        if i == 5:
            value = parse_document(path.read_text(encoding="utf-8"))
            target.with_suffix(".json").write_text(json.dumps(value), encoding="utf-8")
        else:
            shutil.copy(path, target)
    (root / "broken.yml").write_text("jobs: [unclosed\n", encoding="utf-8")
    (root / "notes.txt").write_text("not a workflow", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    code = main(["workflows", "prepare", "--input", str(corpus_dir), "--output", str(out), "--context-size", "64",
                 "--train-split", "0.75", "--vocab-size", "1024"])
    assert code == 0
    return out


def test_prepare_writes_windows_with_position_tokens(prepared, corpus_dir, capsys):
    meta = json.loads((prepared / "metadata.json").read_text())
    counts = meta["counts"]
    assert counts["files_found"] == 25 and counts["skipped"] == 1 and counts["documents"] == 24
    assert meta["skipped_files"] == ["broken.yml"]
    assert counts["train_documents"] == 18 and counts["val_documents"] == 6
    assert meta["stride"] == 63 and meta["context_size"] == 64

    tok = SchemaTokenizer.load(prepared / "tokenizer")
    assert meta["tokenizer_hash"] == tok.content_hash() and meta["vocab_size"] == tok.vocab_size
    for split in ("train", "val"):
        tensor = torch.load(prepared / f"{split}.pt")
        assert tensor.dtype == torch.int32 and list(tensor.shape) == meta["shapes"][split]
        assert tensor.shape[0] == counts[f"{split}_windows"]
        # rebuild every document's windows in order and compare them row by row
        row = 0
        for name in meta["documents"][split]:
            ids = tok.encode((corpus_dir / name).read_text(encoding="utf-8")) + [tok.eos_id]
            n = -(-len(ids) // 63)
            for k in range(n):
                window = tensor[row + k].tolist()
                assert window[0] == tok.position_token(k)
                chunk = ids[k * 63:(k + 1) * 63]
                assert window[1:1 + len(chunk)] == chunk
                assert all(t == tok.pad_id for t in window[1 + len(chunk):])
            assert tok.decode(ids) == tok.decode([t for r in range(n) for t in tensor[row + r].tolist()[1:]
                                                  if t != tok.pad_id])
            row += n
        assert row == tensor.shape[0]


def test_no_document_in_both_splits_and_the_split_is_seeded(prepared):
    meta = json.loads((prepared / "metadata.json").read_text())
    train, val = set(meta["documents"]["train"]), set(meta["documents"]["val"])
    assert train and val and not train & val
    names = sorted(train | val)
    assert split_documents(names, 0.75, 0) == (sorted(train), sorted(val))
    assert split_documents(names, 0.75, 1) != split_documents(names, 0.75, 0)


def test_summary_is_printed(corpus_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["workflows", "prepare", "--input", str(corpus_dir), "--output", str(out), "--context-size", "128",
                 "--vocab-size", "1024"]) == 0
    printed = capsys.readouterr().out
    for words in ("files found:", "windows extracted:", "train:", "val:", "shape (", "skipped"):
        assert words in printed


def test_memmap_format_matches_pt(prepared, corpus_dir, tmp_path):
    out = tmp_path / "mm"
    assert main(["workflows", "prepare", "--input", str(corpus_dir), "--output", str(out), "--context-size", "64",
                 "--train-split", "0.75", "--tokenizer", str(prepared / "tokenizer"), "--format", "memmap"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == "memmap" and meta["dtype"] == "uint16"
    assert not (out / "train.pt").exists()
    for split in ("train", "val"):
        mm = np.memmap(out / f"{split}.bin", dtype=meta["dtype"], mode="r", shape=tuple(meta["shapes"][split]))
        assert np.array_equal(np.asarray(mm, dtype=np.int64), torch.load(prepared / f"{split}.pt").numpy())
        assert np.array_equal(np.asarray(load_windows(out, split)), np.asarray(mm))


def test_windows_of_pads_and_caps_positions():
    rows = windows_of(list(range(100, 100 + 10)), 4, lambda k: 1000 + min(k, 63), 0)
    assert rows.tolist() == [[1000, 100, 101, 102], [1001, 103, 104, 105], [1002, 106, 107, 108],
                             [1003, 109, 0, 0]]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, corpus_dir):
    out = tmp_path / "never"
    assert main(["workflows", "prepare", "--input", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["workflows", "prepare", "--input", str(empty), "--output", str(out)]) == 2
    assert main(["workflows", "prepare", "--input", str(corpus_dir), "--output", str(out), "--train-split", "0"]) == 2
    assert main(["workflows", "prepare", "--input", str(corpus_dir), "--output", str(out), "--context-size", "1"]) == 2
    assert main(["workflows", "prepare", "--input", str(corpus_dir), "--output", str(out), "--tokenizer",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists()


def test_compare_prints_the_table(corpus_dir, tmp_path, capsys):
    out_json = tmp_path / "compare.json"
    assert main(["workflows", "compare", str(corpus_dir), "--vocab-size", "2048", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and "largest document" in printed and "held out" in printed
    result = json.loads(out_json.read_text())
    mean = result["all"]["mean"]
    assert mean["docs"] == 24 and mean["schema"] < mean["o200k_json"] < mean["o200k_yaml"]
