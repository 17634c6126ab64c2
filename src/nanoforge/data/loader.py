"""Packing dataloader for pretraining: shards -> background tokenization -> BOS-aligned best-fit rows.

Exact resume and world-size independence come from *slots*: the global batch of one optimizer step is made of
`slots = world_size x grad_accum` micro-batches, and slot s reads only documents whose index in their shard is
congruent to s modulo `slots`. Rank r, micro-step a uses slot r * grad_accum + a. One process with grad_accum 2
therefore sees exactly the rows two processes with grad_accum 1 see, and each slot's state (its read position
plus the documents waiting in its packing buffer) can be saved and restored on its own.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch


@dataclass(frozen=True)
class Position:
    """Where a slot's stream is: the next document to read is (epoch, shard, doc) or later."""

    epoch: int = 0
    shard: int = 0
    doc: int = 0


def iter_slot_documents(paths: list[Path], slot: int, num_slots: int, start: Position, loop: bool):
    """Yield (text, position after it) for the documents of one slot, from `start` on."""
    epoch, shard_idx, doc_idx = start.epoch, start.shard, start.doc
    while True:
        while shard_idx < len(paths):
            pf = pq.ParquetFile(paths[shard_idx])
            first = 0
            for rg in range(pf.num_row_groups):
                rows = pf.metadata.row_group(rg).num_rows
                if first + rows <= doc_idx:
                    first += rows
                    continue
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i, text in enumerate(texts):
                    k = first + i
                    if k >= doc_idx and k % num_slots == slot:
                        yield text, Position(epoch, shard_idx, k + 1)
                first += rows
            shard_idx, doc_idx = shard_idx + 1, 0
        if not loop:
            return
        epoch, shard_idx, doc_idx = epoch + 1, 0, 0


class SlotStream:
    """One slot: a background thread tokenizes its documents in batches; the consumer packs rows."""

    def __init__(self, paths, tokenizer, slot: int, num_slots: int, state: dict | None, loop: bool,
                 buffer_docs: int, threads: int, doc_batch: int = 64):
        self.buffer: list[list[int]] = [list(d) for d in state["buffer"]] if state else []
        self.position = Position(**state["position"]) if state else Position()
        self.buffer_docs = buffer_docs
        self._queue: queue.Queue = queue.Queue(maxsize=4 * doc_batch)
        self._stop = threading.Event()
        self._exhausted = False
        args = (paths, tokenizer, slot, num_slots, self.position, loop, threads, doc_batch)
        self._thread = threading.Thread(target=self._produce, args=args, daemon=True)
        self._thread.start()

    def _produce(self, paths, tokenizer, slot, num_slots, start, loop, threads, doc_batch):
        bos = tokenizer.bos_id
        try:
            batch: list[tuple[str, Position]] = []
            for item in iter_slot_documents(paths, slot, num_slots, start, loop):
                batch.append(item)
                if len(batch) == doc_batch:
                    self._put_batch(tokenizer, batch, bos, threads)
                    batch = []
                if self._stop.is_set():
                    return
            if batch:
                self._put_batch(tokenizer, batch, bos, threads)
            self._queue.put(None)
        except BaseException as exc:  # surfaced in the consumer, never lost in a thread
            self._queue.put(exc)

    def _put_batch(self, tokenizer, batch, bos, threads):
        ids = tokenizer.encode_batch([t for t, _ in batch], num_threads=threads)
        for tokens, (_, pos) in zip(ids, batch):
            while not self._stop.is_set():
                try:
                    self._queue.put(([bos] + tokens, pos), timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _refill(self) -> None:
        while len(self.buffer) < self.buffer_docs and not self._exhausted:
            item = self._queue.get()
            if item is None:
                self._exhausted = True
            elif isinstance(item, BaseException):
                raise item
            else:
                tokens, self.position = item
                self.buffer.append(tokens)

    def next_row(self, length: int) -> list[int] | None:
        """Best fit: repeatedly place the longest buffered document that fits the space left; when none fits,
        crop the shortest one to fill the row exactly. Every document starts with BOS, so rows stay aligned."""
        row: list[int] = []
        while len(row) < length:
            self._refill()
            if not self.buffer:
                return None
            space = length - len(row)
            best = -1
            for i, doc in enumerate(self.buffer):
                if len(doc) <= space and (best < 0 or len(doc) > len(self.buffer[best])):
                    best = i
            if best >= 0:
                row.extend(self.buffer.pop(best))
            else:
                shortest = min(range(len(self.buffer)), key=lambda i: len(self.buffer[i]))
                row.extend(self.buffer.pop(shortest)[:space])
        return row

    def state_dict(self) -> dict:
        return {"position": dataclasses.asdict(self.position), "buffer": [list(d) for d in self.buffer]}

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass


class PackedBatches:
    """Micro-batches of packed rows for one rank: `next_batch(micro_step)` -> (inputs, targets), each (B, T)."""

    def __init__(self, paths: list[Path], tokenizer, batch_size: int, seq_len: int, rank: int, grad_accum: int,
                 num_slots: int, device, state: dict | None = None, loop: bool = True, buffer_docs: int = 256,
                 threads: int = 4):
        self.batch_size, self.seq_len, self.device = batch_size, seq_len, device
        self.slot_ids = [rank * grad_accum + a for a in range(grad_accum)]
        slot_states = (state or {}).get("slots", {})
        self.streams = {
            s: SlotStream(paths, tokenizer, s, num_slots, slot_states.get(str(s)), loop, buffer_docs, threads)
            for s in self.slot_ids
        }

    def next_batch(self, micro_step: int):
        stream = self.streams[self.slot_ids[micro_step]]
        rows = []
        for _ in range(self.batch_size):
            row = stream.next_row(self.seq_len + 1)
            if row is None:
                raise StopIteration
            rows.append(row)
        data = torch.tensor(rows, dtype=torch.long)
        if self.device.type == "cuda":
            data = data.pin_memory().to(self.device, non_blocking=True)
        return data[:, :-1], data[:, 1:]

    def state_dict(self) -> dict:
        """This rank's slots; the checkpointer merges the dicts of all ranks."""
        return {"slots": {str(s): stream.state_dict() for s, stream in self.streams.items()}}

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()
