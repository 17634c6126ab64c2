"""The chat format: conversations -> token ids + loss mask. Only what the assistant produces is trained: its
text, its tool calls and the end of its turn; never the user's text, the tool's output, or the special tokens
that open a turn (those are given at chat time)."""

from __future__ import annotations

import pytest

from nanoforge.tokenizer.bpe import train_tokenizer
from nanoforge.tokenizer.chat import ConversationError, render_conversation, render_for_completion


@pytest.fixture(scope="module")
def tok():
    from pydoc_data.topics import topics

    return train_tokenizer([topics[k] for k in sorted(topics)], 400)


def spans(tok, ids, mask):
    """[(decoded text or special name, trained)] runs, so assertions read like the conversation."""
    names = {tok.special_id(n): n for n in ("bos", "user_start", "user_end", "assistant_start", "assistant_end",
                                             "python_start", "python_end", "output_start", "output_end")}
    out: list[tuple[str, int]] = []
    text: list[int] = []
    for i, (t, m) in enumerate(zip(ids, mask)):
        if t in names:
            out.append((f"<{names[t]}>", m))
            continue
        text.append(t)
        if i + 1 == len(ids) or ids[i + 1] in names or mask[i + 1] != m:
            out.append((tok.decode(text), m))
            text = []
    return out


def test_loss_mask_of_each_part(tok):
    conversation = {"messages": [
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute: "},
            {"type": "python", "text": "6*7"},
            {"type": "python_output", "text": "42"},
            {"type": "text", "text": "It is 42."},
        ]},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
    ]}
    ids, mask = render_conversation(tok, conversation)
    assert len(ids) == len(mask)
    assert spans(tok, ids, mask) == [
        ("<bos>", 0),
        ("<user_start>", 0), ("What is 6 times 7?", 0), ("<user_end>", 0),
        ("<assistant_start>", 0),
        ("Let me compute: ", 1),                                   # assistant text: trained
        ("<python_start>", 1), ("6*7", 1), ("<python_end>", 1),    # the tool call: trained
        ("<output_start>", 0), ("42", 0), ("<output_end>", 0),     # the tool's output: given, not trained
        ("It is 42.", 1),
        ("<assistant_end>", 1),                                    # ending the turn is learned
        ("<user_start>", 0), ("Thanks", 0), ("<user_end>", 0),
        ("<assistant_start>", 0), ("You're welcome.", 1), ("<assistant_end>", 1),
    ]


def test_system_message_is_folded_into_the_first_user_turn(tok):
    ids, mask = render_conversation(tok, {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]})
    assert ("Be brief.\n\nHi", 0) in spans(tok, ids, mask)


def test_truncation_keeps_ids_and_mask_aligned(tok):
    conversation = {"messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]}
    full_ids, full_mask = render_conversation(tok, conversation)
    ids, mask = render_conversation(tok, conversation, max_tokens=10)
    assert ids == full_ids[:10] and mask == full_mask[:10]


def test_completion_prompt_ends_with_assistant_start(tok):
    conversation = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    prompt = render_for_completion(tok, conversation)
    ids, _ = render_conversation(tok, {"messages": conversation["messages"][:1]})
    assert prompt == ids + [tok.special_id("assistant_start")]


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty"),
    ([{"role": "assistant", "content": "hi"}], "user first"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
     "unknown assistant part"),
])
def test_malformed_conversations_are_rejected(tok, messages, message):
    with pytest.raises(ConversationError, match=message):
        render_conversation(tok, {"messages": messages})
