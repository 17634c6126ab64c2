"""The packing dataloader: full BOS-aligned rows made only of real documents, slots that make world sizes
agree, and a state dict that resumes exactly."""

from __future__ import annotations

import random
import pytest
import torch

from nanoforge.data.loader import PackedBatches
from nanoforge.data.shards import write_shards
from nanoforge.tokenizer.bpe import train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "pi", "rho", "sigma", "tau", "zeta"]
    # Documents from a few tokens to several rows long, so both best-fit and cropping are exercised.
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 120))) + f" #{i}" for i in range(400)]
    out = tmp_path_factory.mktemp("corpus")
    write_shards(iter(docs), out, docs_per_shard=100)
    tok = train_tokenizer(iter(docs), 300)
    return sorted(out.glob("shard_*.parquet")), tok, docs


def make(paths, tok, rank=0, grad_accum=1, slots=1, state=None, batch=4, seq=32):
    return PackedBatches(paths, tok, batch, seq, rank, grad_accum, slots, torch.device("cpu"), state=state,
                         threads=1, buffer_docs=16)


def test_rows_are_full_bos_aligned_and_made_of_real_documents(corpus):
    paths, tok, docs = corpus
    encoded = {tuple([tok.bos_id] + tok.encode(d)) for d in docs}
    loader = make(paths, tok)
    try:
        for _ in range(30):
            x, y = loader.next_batch(0)
            assert x.shape == y.shape == (4, 32)
            assert torch.equal(x[:, 1:], y[:, :-1])
            for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
                assert len(row) == 33 and row[0] == tok.bos_id
                starts = [i for i, t in enumerate(row) if t == tok.bos_id] + [len(row)]
                for a, b in zip(starts, starts[1:]):
                    segment = tuple(row[a:b])
                    last = b == len(row)
                    # Whole documents inside the row; only the row's last one may be cropped to fill it.
                    assert segment in encoded or (last and any(d[: len(segment)] == segment for d in encoded))
    finally:
        loader.close()


def test_slots_make_one_process_with_accumulation_equal_two_ranks(corpus):
    paths, tok, _ = corpus
    single = make(paths, tok, rank=0, grad_accum=2, slots=2)
    rank0 = make(paths, tok, rank=0, grad_accum=1, slots=2)
    rank1 = make(paths, tok, rank=1, grad_accum=1, slots=2)
    try:
        for _ in range(5):
            assert torch.equal(single.next_batch(0)[0], rank0.next_batch(0)[0])
            assert torch.equal(single.next_batch(1)[0], rank1.next_batch(0)[0])
    finally:
        for loader in (single, rank0, rank1):
            loader.close()


def test_state_dict_resumes_exactly_across_epochs(corpus):
    paths, tok, _ = corpus
    reference = make(paths, tok, batch=8)
    first = make(paths, tok, batch=8)
    try:
        for _ in range(200):  # past one epoch of this corpus, so the epoch counter is exercised
            first.next_batch(0)
            reference.next_batch(0)
        state = first.state_dict()
        assert state["slots"]["0"]["position"]["epoch"] >= 1
        first.close()
        resumed = make(paths, tok, batch=8, state=state)
        try:
            for _ in range(10):
                assert torch.equal(resumed.next_batch(0)[0], reference.next_batch(0)[0])
        finally:
            resumed.close()
    finally:
        reference.close()


def test_tokenizer_errors_surface_in_the_consumer(corpus):
    paths, _, _ = corpus

    class Broken:
        bos_id = 0

        def encode_batch(self, texts, num_threads):
            raise RuntimeError("tokenizer exploded")

    loader = make(paths, Broken())
    try:
        with pytest.raises(RuntimeError, match="tokenizer exploded"):
            loader.next_batch(0)
    finally:
        loader.close()
