"""Batches of prepared workflow windows for the one training loop, and the validation documents behind them.

Exact, world-size independent resume uses the loop's slot design (docs/training.md): an optimizer step is made of
`slots = world_size x grad_accum` micro-batches, rank r at micro-step a reads slot r * grad_accum + a, and each
slot draws window indices from its own seeded permutation of the windows, a new one every epoch. A slot's whole
state is (epoch, cursor), so one process with 4 micro-steps sees exactly the rows 4 processes with 1 see, and a
resumed run continues every stream where it stopped.

A row of `context` tokens becomes x = row[:-1] and y = row[1:], with y = -1 (not trained) on PAD.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanoforge.errors import UserError


def read_metadata(prepared_dir: Path) -> dict:
    path = Path(prepared_dir) / "metadata.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; prepare the data first: nanoforge workflows prepare --input DIR "
                        f"--output {prepared_dir} --context-size 256") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); run `nanoforge workflows prepare` again") from None


def slot_permutation(n: int, seed: int, slot: int, epoch: int) -> np.ndarray:
    """The order in which `slot` visits the n windows in `epoch` (numpy's PCG64: the same on every machine)."""
    return np.random.default_rng([seed, slot, epoch]).permutation(n)


def rows_to_xy(rows: np.ndarray, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows_t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    x, y = rows_t[:, :-1], rows_t[:, 1:].clone()
    y[y == pad_id] = -1
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.to(device)


class WindowBatches:
    """Training batches: `next_batch(micro_step) -> (x, y)`, `state_dict()`, `close()` (see the module docstring)."""

    def __init__(self, windows: np.ndarray, batch_size: int, rank: int, grad_accum: int, num_slots: int,
                 device, pad_id: int, seed: int, state: dict | None = None):
        if len(windows) == 0:
            raise UserError("the prepared train split has no windows; prepare with more documents or a larger "
                            "--train-split")
        self.windows = windows
        self.batch_size = batch_size
        self.rank = rank
        self.grad_accum = grad_accum
        self.num_slots = num_slots
        self.device = device
        self.pad_id = pad_id
        self.seed = seed
        saved = (state or {}).get("slots", {})
        self.positions: dict[int, tuple[int, int]] = {}
        for a in range(grad_accum):
            slot = rank * grad_accum + a
            s = saved.get(str(slot))
            self.positions[slot] = (int(s["epoch"]), int(s["cursor"])) if s else (0, 0)
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def _order(self, slot: int, epoch: int) -> np.ndarray:
        cached = self._orders.get(slot)
        if cached is None or cached[0] != epoch:
            cached = (epoch, slot_permutation(len(self.windows), self.seed, slot, epoch))
            self._orders[slot] = cached
        return cached[1]

    def next_indices(self, slot: int) -> np.ndarray:
        epoch, cursor = self.positions[slot]
        n = len(self.windows)
        taken: list[np.ndarray] = []
        need = self.batch_size
        while need:
            order = self._order(slot, epoch)
            part = order[cursor:cursor + need]
            taken.append(part)
            need -= len(part)
            cursor += len(part)
            if cursor >= n:
                epoch, cursor = epoch + 1, 0
        self.positions[slot] = (epoch, cursor)
        return np.concatenate(taken)

    def next_batch(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        slot = self.rank * self.grad_accum + micro_step
        indices = self.next_indices(slot)
        return rows_to_xy(np.asarray(self.windows[indices]), self.pad_id, self.device)

    def state_dict(self) -> dict:
        return {"slots": {str(slot): {"epoch": e, "cursor": c} for slot, (e, c) in self.positions.items()}}

    def close(self) -> None:
        self._orders.clear()


@dataclass
class Document:
    """One validation document: its rows in the windows array, its ids (EOS included), canonical JSON bytes."""

    first_row: int
    n_rows: int
    ids: list[int]
    canonical_bytes: int


def split_documents(windows: np.ndarray, tokenizer) -> list[Document]:
    """Rebuild the documents of a split from its windows: prepare writes each document's windows in order, the
    first one led by position_token(0), and its ids end with EOS then PAD. Each document is decoded once to its
    canonical JSON to count the bytes that bits-per-byte divides by (the same for every tokenizer)."""
    start, eos, pad = tokenizer.position_token(0), tokenizer.eos_id, tokenizer.pad_id
    heads = np.flatnonzero(np.asarray(windows[:, 0]) == start)
    if len(windows) and (len(heads) == 0 or heads[0] != 0):
        raise UserError("the prepared windows do not start with a document's first window; run "
                        "`nanoforge workflows prepare` again")
    bounds = list(heads) + [len(windows)]
    docs = []
    for first, end in zip(bounds[:-1], bounds[1:]):
        body = np.asarray(windows[first:end, 1:]).reshape(-1)
        stop = np.flatnonzero(body == eos)
        ids = body[: stop[0] + 1] if len(stop) else body[body != pad]
        text = tokenizer.decode(ids.tolist())
        docs.append(Document(int(first), int(end - first), ids.tolist(), len(text.encode("utf-8"))))
    return docs


def documents_within(docs: list[Document], max_tokens: int, context: int) -> list[Document]:
    """The leading whole documents whose windows hold at most max_tokens tokens (at least one; 0: all)."""
    if max_tokens <= 0:
        return docs
    out, tokens = [], 0
    for doc in docs:
        tokens += doc.n_rows * context
        if out and tokens > max_tokens:
            break
        out.append(doc)
    return out
