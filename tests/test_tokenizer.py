"""The BPE tokenizer (rustbpe training, tiktoken encoding) and the `nanoforge tokenizer` commands."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from nanoforge.cli import main
from nanoforge.errors import UserError
from nanoforge.tokenizer.bpe import (
    SPECIAL_NAMES,
    SPLIT_PATTERN,
    Tokenizer,
    special_text,
    train_tokenizer,
)

VOCAB = 700


def _training_texts() -> list[str]:
    from pydoc_data.topics import topics

    extra = [
        "Le café est très bon. Das Wetter ist schön. Мы идём домой. "
        "東京は大きい都市です。 서울에 갑니다. 🙂🚀",
        "numbers 12345 3.14159 2026-11-21 0xFF 1e-9",
    ] * 20
    return [topics[key] for key in sorted(topics)] + extra


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(_training_texts(), VOCAB)


# Code point ranges chosen to hit every byte length and the hard cases: combining marks, joiners, variation
# selectors, CJK, Hangul, right-to-left scripts, emoji, private use, astral planes. No surrogates.
_RANGES = [
    (0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x2FF), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0x97F),
    (0x200B, 0x200F), (0x2028, 0x2029), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF),
    (0xFE00, 0xFE0F), (0xFFF0, 0xFFFD), (0x1F300, 0x1FAFF), (0x1F3FB, 0x1F3FF), (0x10000, 0x10FFFF),
]
_FRAGMENTS = [" ", "\n", "\r\n", "\t", "  ", "'s", "'LL", "<|bos|>", "<|", "|>", "\u200d", "123", "e\u0301"]


def _random_text(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(0, 60)):
        if rng.random() < 0.2:
            pieces.append(rng.choice(_FRAGMENTS))
            continue
        low, high = rng.choice(_RANGES)
        code = rng.randint(low, high)
        if 0xD800 <= code <= 0xDFFF:
            code = 0xFFFD
        pieces.append(chr(code))
    return "".join(pieces)


def test_round_trip_on_arbitrary_unicode(tokenizer):
    rng = random.Random(1234)
    texts = [_random_text(rng) for _ in range(2000)]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert all(0 <= i < tokenizer.vocab_size - len(SPECIAL_NAMES) for i in ids)
    assert tokenizer.encode_batch(texts[:200], num_threads=2) == [tokenizer.encode(t) for t in texts[:200]]


def test_vocab_size_counts_the_specials_and_ids_are_dense(tokenizer):
    assert tokenizer.vocab_size == VOCAB
    specials = [tokenizer.special_id(name) for name in SPECIAL_NAMES]
    assert specials == list(range(VOCAB - len(SPECIAL_NAMES), VOCAB))
    assert tokenizer.bos_id == tokenizer.special_id("bos") == tokenizer.special_id("<|bos|>")
    with pytest.raises(KeyError, match="unknown special token"):
        tokenizer.special_id("eos")


def test_specials_are_single_ids_and_never_come_from_text(tokenizer):
    specials = {tokenizer.special_id(name) for name in SPECIAL_NAMES}
    for name in SPECIAL_NAMES:
        token_id = tokenizer.special_id(name)
        assert tokenizer.decode([token_id]) == special_text(name)
        typed = f"hi {special_text(name)} there{special_text(name)}"
        ids = tokenizer.encode(typed)
        assert not specials & set(ids)
        assert tokenizer.decode(ids) == typed
    ids = tokenizer.encode_batch(["<|assistant_start|>", "x<|bos|>"], num_threads=2)
    assert not specials & {i for row in ids for i in row}


def test_token_bytes_are_utf8_lengths_and_zero_for_specials(tokenizer):
    tb = tokenizer.token_bytes
    assert tb.shape == (VOCAB,) and np.issubdtype(tb.dtype, np.integer)
    for token_id in range(VOCAB - len(SPECIAL_NAMES)):
        assert tb[token_id] == len(tokenizer.id_to_bytes(token_id)) >= 1
    assert (tb[VOCAB - len(SPECIAL_NAMES):] == 0).all()
    text = "Bits per byte need byte counts: naïve café 東京 🙂"
    assert int(tb[tokenizer.encode(text)].sum()) == len(text.encode("utf-8"))


def test_save_and_load_give_an_equal_tokenizer_in_a_plain_format(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    document = json.loads((tmp_path / "tokenizer.json").read_text())  # plain JSON, not pickle
    assert document["format"] == "nanoforge-bpe" and document["version"] == 1
    assert document["pattern"] == SPLIT_PATTERN and document["special_tokens"] == list(SPECIAL_NAMES)
    assert len(document["mergeable_ranks"]) == VOCAB - len(SPECIAL_NAMES)
    loaded = Tokenizer.load(tmp_path)
    assert loaded == tokenizer and loaded.vocab_size == VOCAB
    assert (np.load(tmp_path / "token_bytes.npy") == tokenizer.token_bytes).all()
    sample = "def f(x):\n    return x ** 2  # 東京 <|bos|>"
    assert loaded.encode(sample) == tokenizer.encode(sample)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_tiktoken_encoding_matches_what_rustbpe_learned():
    import rustbpe

    texts = _training_texts()
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), VOCAB - len(SPECIAL_NAMES), pattern=SPLIT_PATTERN)
    ours = train_tokenizer(texts, VOCAB)
    assert ours == train_tokenizer(texts, VOCAB)  # training is deterministic
    for text in texts[:30] + ["Numbers like 2026 split in twos; 東京 🙂 naïve"]:
        assert ours.encode(text) == trainer.encode(text)


def test_bad_vocab_sizes_and_too_little_text_are_user_errors():
    with pytest.raises(UserError, match="vocab_size must be an integer >= 266"):
        train_tokenizer(["abc"], 100)
    with pytest.raises(UserError, match="lower tokenizer.vocab_size or train on more text"):
        train_tokenizer(["ab ab ab"], 1000)


def test_decode_rejects_ids_outside_the_vocabulary(tokenizer):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([1, VOCAB])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([-1])


def test_missing_or_damaged_tokenizer_files_are_user_errors(tokenizer, tmp_path):
    with pytest.raises(UserError, match="nanoforge tokenizer train"):
        Tokenizer.load(tmp_path / "nowhere")
    tokenizer.save(tmp_path)
    path = tmp_path / "tokenizer.json"
    document = json.loads(path.read_text())
    document["version"] = 99
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match="damaged"):
        Tokenizer.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        Tokenizer.load(tmp_path)


# -- commands -----------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOFORGE_HOME", str(tmp_path / "home"))
    return tmp_path


def test_train_then_eval_on_the_demo_corpus(home, capsys):
    assert main(["data", "build-demo", "--size-mb", "1"]) == 0
    run_dir = home / "run"
    args = ["tokenizer", "train", "--run-dir", str(run_dir), "--preset", "demo", "--set", "tokenizer.vocab_size=512"]
    assert main(args) == 0
    assert "chars/s" in capsys.readouterr().out
    tokenizer_dir = run_dir / "tokenizer"
    assert (tokenizer_dir / "DONE").is_file() and (run_dir / "config.yaml").is_file()
    assert Tokenizer.load(tokenizer_dir).vocab_size == 512
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "tokenizer"]  # no temp folders left

    assert main(["tokenizer", "train", "--run-dir", str(run_dir)]) == 0
    assert "skipping" in capsys.readouterr().out

    assert main(["tokenizer", "eval", "--run-dir", str(run_dir), "--val-docs", "20"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tokenizer_dir / "eval.json").read_text())
    assert report["encoders"][0] == "ours-512" and "o200k_base" in report["encoders"]
    assert 0 < report["validation_documents"] <= 20
    for name in ("news", "code", "math", "multilingual", "validation"):
        row = report["results"][name]
        assert row["ours-512"]["bytes_per_token"] == pytest.approx(row["bytes"] / row["ours-512"]["tokens"], 1e-3)
        assert name in out
    # GPT-4o's 200k vocabulary compresses multilingual text far better than 512 tokens learned from English.
    multilingual = report["results"]["multilingual"]
    assert multilingual["o200k_base"]["bytes_per_token"] > 2 * multilingual["ours-512"]["bytes_per_token"]


def test_train_refuses_a_vocab_size_that_disagrees_with_the_trained_one(home, capsys):
    assert main(["data", "build-demo", "--size-mb", "0.3"]) == 0
    too_big = home / "too-big"
    assert main(["tokenizer", "train", "--run-dir", str(too_big), "--set", "tokenizer.vocab_size=200000"]) == 2
    assert "train on more text" in capsys.readouterr().err
    assert not too_big.exists()  # a failed training leaves no run folder behind
    run_dir = home / "run"
    assert main(["tokenizer", "train", "--run-dir", str(run_dir), "--set", "tokenizer.vocab_size=300"]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "train", "--run-dir", str(run_dir), "--set", "tokenizer.vocab_size=400"]) == 2
    assert "300-token tokenizer" in capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(home, capsys):
    run_dir = home / "run"
    assert main(["tokenizer", "train", "--run-dir", str(run_dir), "--preset", "demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "nanoforge data build-demo" in err[0]
    assert not run_dir.exists()  # nothing written for a failed start

    assert main(["tokenizer", "eval", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.yaml" in err[0]

    assert main(["data", "build-demo", "--size-mb", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size-mb" in err[0]


def test_console_script_reports_bad_input_without_a_traceback(home):
    result = subprocess.run(
        [sys.executable, "-m", "nanoforge", "tokenizer", "train", "--run-dir", str(home / "r"),
         "--set", "tokenizer.vocab_size=10"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
