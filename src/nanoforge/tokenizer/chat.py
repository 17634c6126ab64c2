"""The chat format: conversations -> token ids + a loss mask (1 = the model is trained to produce this token).

A conversation is `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}`. User and system content
is a string; assistant content is a string or a list of parts:
    {"type": "text", "text": ...}            what the assistant says
    {"type": "python", "text": ...}          a tool call (calculator expression or Python code)
    {"type": "python_output", "text": ...}   the tool's result, inserted by the engine, never trained on

Rendered:
    <|bos|> <|user_start|> ... <|user_end|> <|assistant_start|> ... <|assistant_end|> <|user_start|> ...
with tool calls as <|python_start|> code <|python_end|> <|output_start|> result <|output_end|>.
A system message is folded into the first user message (the model has no separate system role).
"""

from __future__ import annotations

from typing import Any

Conversation = dict[str, Any]


class ConversationError(ValueError):
    """A conversation that does not follow the format above."""


def _parts(content) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return content
    raise ConversationError("message content must be a string or a list of {type, text} parts")


def normalize(conversation: Conversation) -> list[dict]:
    messages = conversation.get("messages") if isinstance(conversation, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ConversationError("a conversation needs a non-empty 'messages' list")
    messages = [dict(m) for m in messages]
    if messages[0].get("role") == "system":
        if len(messages) < 2 or messages[1].get("role") != "user":
            raise ConversationError("a system message must be followed by a user message")
        system = messages.pop(0)
        messages[0]["content"] = f"{system['content']}\n\n{messages[0]['content']}"
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ConversationError(f"message {i} should be from the {expected} (turns alternate, user first)")
        if message["role"] == "user" and not isinstance(message.get("content"), str):
            raise ConversationError(f"message {i}: user content must be a string")
        _parts(message.get("content"))
    return messages


def render_conversation(tok, conversation: Conversation, max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids and the loss mask, truncated to max_tokens."""
    ids: list[int] = []
    mask: list[int] = []

    def add(tokens, trained: int) -> None:
        if isinstance(tokens, int):
            tokens = [tokens]
        ids.extend(tokens)
        mask.extend([trained] * len(tokens))

    sp = tok.special_id
    add(tok.bos_id, 0)
    for message in normalize(conversation):
        if message["role"] == "user":
            add(sp("user_start"), 0)
            add(tok.encode(message["content"]), 0)
            add(sp("user_end"), 0)
            continue
        add(sp("assistant_start"), 0)
        for part in _parts(message["content"]):
            kind, text = part.get("type", "text"), part["text"]
            if kind == "text":
                add(tok.encode(text), 1)
            elif kind == "python":
                add(sp("python_start"), 1)
                add(tok.encode(text), 1)
                add(sp("python_end"), 1)
            elif kind == "python_output":
                add(sp("output_start"), 0)
                add(tok.encode(text), 0)
                add(sp("output_end"), 0)
            else:
                raise ConversationError(f"unknown assistant part type '{kind}'")
        add(sp("assistant_end"), 1)
    if max_tokens is not None:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return ids, mask


def render_for_completion(tok, conversation: Conversation) -> list[int]:
    """The prompt for the assistant's next turn: the conversation (minus a trailing assistant message, whose
    answer is what we want) followed by <|assistant_start|>."""
    messages = list(conversation["messages"])
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    ids, _ = render_conversation(tok, {"messages": messages})
    return ids + [tok.special_id("assistant_start")]
