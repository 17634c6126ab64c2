"""Batches of rendered conversations: targets follow the loss mask, rows are BOS-aligned (dense) or one padded
conversation each (pad), and the slot state resumes exactly and independently of the world size."""

from __future__ import annotations

import pytest
import torch

from nanoforge.config import make_config
from nanoforge.data.chat_loader import ChatBatches
from nanoforge.data.chat_tasks import build_mixture
from nanoforge.tokenizer.bpe import train_tokenizer
from nanoforge.tokenizer.chat import render_conversation

CPU = torch.device("cpu")
SEQ = 160


@pytest.fixture(scope="module")
def tok():
    from pydoc_data.topics import topics

    return train_tokenizer([topics[k] for k in sorted(topics)], 400)


@pytest.fixture(scope="module")
def mixture():
    cfg = make_config("demo")
    return build_mixture("identity:40,spelling:60,arithmetic:60", "train", cfg)


def batches(mixture, tok, packing, rank=0, grad_accum=1, slots=1, state=None, loop=True, batch_size=3):
    return ChatBatches(mixture, tok, batch_size, SEQ, rank, grad_accum, slots, CPU, packing=packing, state=state,
                       loop=loop)


def test_pad_rows_hold_one_conversation_with_masked_targets(mixture, tok):
    x, y = batches(mixture, tok, "pad").next_batch(0)
    assert x.shape == y.shape == (3, SEQ)
    for row in range(3):
        ids, mask = render_conversation(tok, mixture.get(0, row), max_tokens=SEQ + 1)
        pad = SEQ + 1 - len(ids)
        full, full_mask = ids + [tok.bos_id] * pad, mask + [0] * pad
        assert x[row].tolist() == full[:-1]
        assert y[row].tolist() == [t if m else -1 for t, m in zip(full[1:], full_mask[1:])]
        if pad:
            assert (y[row, -pad:] == -1).all(), "padding is never a target"


def test_dense_rows_are_full_bos_aligned_and_masked(mixture, tok):
    x, y = batches(mixture, tok, "dense").next_batch(0)
    assert (x[:, 0] == tok.bos_id).all(), "every row starts at a conversation's BOS"
    assert (y >= 0).any(dim=1).all(), "no row without a trained target"
    # Targets are -1 exactly on the BOS/user/tool-output side: never the token after <|user_start|>.
    user_start = tok.special_id("user_start")
    following_user_start = y[x == user_start]
    assert (following_user_start == -1).all()
    trained_ends = (y == tok.special_id("assistant_end")).sum()
    assert trained_ends > 0, "ending the assistant turn is trained"


@pytest.mark.parametrize("packing", ["dense", "pad"])
def test_resume_from_state_continues_exactly(mixture, tok, packing):
    straight = batches(mixture, tok, packing, grad_accum=2, slots=2)
    expected = [straight.next_batch(m % 2) for m in range(12)]

    first = batches(mixture, tok, packing, grad_accum=2, slots=2)
    got = [first.next_batch(m % 2) for m in range(6)]
    state = first.state_dict()
    second = batches(mixture, tok, packing, grad_accum=2, slots=2, state=state)
    got += [second.next_batch(m % 2) for m in range(6, 12)]
    for (xa, ya), (xb, yb) in zip(expected, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_two_ranks_see_what_one_rank_with_accumulation_sees(mixture, tok):
    one = batches(mixture, tok, "dense", grad_accum=2, slots=2)
    rank0 = batches(mixture, tok, "dense", rank=0, grad_accum=1, slots=2)
    rank1 = batches(mixture, tok, "dense", rank=1, grad_accum=1, slots=2)
    for _ in range(4):
        assert torch.equal(one.next_batch(0)[0], rank0.next_batch(0)[0])
        assert torch.equal(one.next_batch(1)[0], rank1.next_batch(0)[0])
    merged = {**rank0.state_dict()["slots"], **rank1.state_dict()["slots"]}
    assert merged == one.state_dict()["slots"]


def test_validation_pass_ends(mixture, tok):
    val = batches(mixture, tok, "pad", loop=False, batch_size=64)
    seen = 0
    with pytest.raises(StopIteration):
        while True:
            seen += val.next_batch(0)[0].shape[0]
    assert seen == len(mixture)
