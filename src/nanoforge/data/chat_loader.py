"""Batches of rendered conversations for midtraining and SFT: `next_batch(micro_step)` -> (inputs, targets),
targets -1 wherever the loss mask is 0 (user turns, tool output, padding) so only assistant tokens are trained.

Two ways to fill a row of sequence_len + 1 tokens (`packing`):
- dense (midtraining): best-fit packing like pretraining. Each conversation starts with BOS; the longest
  buffered conversation that fits goes in next, and when none fits the shortest is cropped to fill the row.
- pad (SFT): one conversation per row, cut to the row, the rest padded with BOS as input and -1 as target, so
  each optimizer step sees a fixed number of whole examples.

Exact, world-size-independent resume uses the pretraining loader's slot design (nanoforge.data.loader): slot s
reads the mixture positions congruent to s modulo `slots`; its state is (epoch, next position) plus the rendered
conversations waiting in its buffer. A conversation whose rendered, cut form trains no token is skipped, and so
is a packed row with no trained target, so no micro-batch can have an empty loss.
"""

from __future__ import annotations

import torch

from nanoforge.errors import UserError
from nanoforge.tokenizer.chat import ConversationError, render_conversation


class ChatSlot:
    def __init__(self, mixture, tok, slot: int, num_slots: int, state: dict | None, loop: bool, max_tokens: int,
                 buffer_size: int):
        self.mixture, self.tok, self.slot, self.num_slots = mixture, tok, slot, num_slots
        self.loop, self.max_tokens, self.buffer_size = loop, max_tokens, buffer_size
        position = (state or {}).get("position", {"epoch": 0, "index": slot})
        self.epoch, self.index = position["epoch"], position["index"]
        saved = (state or {}).get("buffer", [])
        self.buffer: list[tuple[list[int], list[int]]] = [(list(i), list(m)) for i, m in saved]
        self.skipped = 0

    def next_conversation(self) -> tuple[list[int], list[int]] | None:
        while True:
            if self.index >= len(self.mixture):
                if not self.loop or self.slot >= len(self.mixture):
                    return None
                self.epoch, self.index = self.epoch + 1, self.slot
            conversation = self.mixture.get(self.epoch, self.index)
            self.index += self.num_slots
            try:
                ids, mask = render_conversation(self.tok, conversation, max_tokens=self.max_tokens)
            except ConversationError:
                self.skipped += 1
                continue
            if not any(mask[1:]):
                self.skipped += 1
                continue
            return ids, mask

    def _refill(self) -> None:
        while len(self.buffer) < self.buffer_size:
            item = self.next_conversation()
            if item is None:
                return
            self.buffer.append(item)

    def dense_row(self, length: int) -> tuple[list[int], list[int]] | None:
        while True:
            ids: list[int] = []
            mask: list[int] = []
            while len(ids) < length:
                self._refill()
                if not self.buffer:
                    return None
                space = length - len(ids)
                fitting = [i for i, (conv, _) in enumerate(self.buffer) if len(conv) <= space]
                if fitting:
                    pick = max(fitting, key=lambda i: (len(self.buffer[i][0]), -i))
                    conv, conv_mask = self.buffer.pop(pick)
                else:
                    pick = min(range(len(self.buffer)), key=lambda i: (len(self.buffer[i][0]), i))
                    conv, conv_mask = self.buffer.pop(pick)
                    conv, conv_mask = conv[:space], conv_mask[:space]
                ids.extend(conv)
                mask.extend(conv_mask)
            if any(mask[1:]):
                return ids, mask

    def padded_row(self, length: int) -> tuple[list[int], list[int]] | None:
        item = self.next_conversation()
        if item is None:
            return None
        ids, mask = item
        pad = length - len(ids)
        return ids + [self.tok.bos_id] * pad, mask + [0] * pad

    def state_dict(self) -> dict:
        return {"position": {"epoch": self.epoch, "index": self.index},
                "buffer": [[list(i), list(m)] for i, m in self.buffer]}


def rows_to_batch(rows: list[tuple[list[int], list[int]]], device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
    mask = torch.tensor([r[1] for r in rows], dtype=torch.bool)
    inputs = ids[:, :-1]
    targets = torch.where(mask[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], -1))
    if device.type == "cuda":
        inputs = inputs.pin_memory().to(device, non_blocking=True)
        targets = targets.pin_memory().to(device, non_blocking=True)
    return inputs, targets


class ChatBatches:
    """Micro-batches for one rank, same interface as nanoforge.data.loader.PackedBatches."""

    def __init__(self, mixture, tok, batch_size: int, seq_len: int, rank: int, grad_accum: int, num_slots: int,
                 device, packing: str = "dense", state: dict | None = None, loop: bool = True,
                 buffer_size: int = 64):
        if loop and len(mixture) < num_slots:
            raise UserError(f"the task mixture has {len(mixture)} examples, fewer than the {num_slots} data slots "
                            "of one step; add examples (task:count) or lower the batch size")
        self.batch_size, self.seq_len, self.device, self.packing = batch_size, seq_len, device, packing
        self.slot_ids = [rank * grad_accum + a for a in range(grad_accum)]
        states = (state or {}).get("slots", {})
        self.slots = {s: ChatSlot(mixture, tok, s, num_slots, states.get(str(s)), loop, seq_len + 1,
                                  buffer_size if packing == "dense" else 0)
                      for s in self.slot_ids}

    def next_batch(self, micro_step: int):
        slot = self.slots[self.slot_ids[micro_step]]
        make_row = slot.dense_row if self.packing == "dense" else slot.padded_row
        rows = []
        for _ in range(self.batch_size):
            row = make_row(self.seq_len + 1)
            if row is None:
                break
            rows.append(row)
        if not rows:
            raise StopIteration
        return rows_to_batch(rows, self.device)

    def state_dict(self) -> dict:
        return {"slots": {str(s): slot.state_dict() for s, slot in self.slots.items()}}

    def close(self) -> None:
        pass
