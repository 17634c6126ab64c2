"""A mixture of tasks: every (task, example) pair it holds, in an order shuffled by seed and epoch.

Counts are how task weights are expressed: `gsm8k:16000` takes GSM8K's 7473 examples about twice over (the
examples cycle), `identity:2000` generates 2000 identity conversations. The order of epoch e is a permutation
drawn from numpy's PCG64 seeded with (seed, e): the same on every machine and every rank, which the slot-based
loader relies on.
"""

from __future__ import annotations

import numpy as np

from nanoforge.errors import UserError


def parse_mixture_spec(spec: str, key: str) -> list[tuple[str, int | None]]:
    """'smoltalk, identity:2000' -> [('smoltalk', None), ('identity', 2000)]."""
    entries = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, count = item.partition(":")
        if count:
            try:
                n = int(count)
            except ValueError:
                n = 0
            if n <= 0:
                raise UserError(f"{key}: '{item}' needs a positive whole count after ':' (e.g. {name}:1000)")
            entries.append((name.strip(), n))
        else:
            entries.append((name.strip(), None))
    if not entries:
        raise UserError(f"{key} is empty; list tasks like identity:1000,spelling:2000")
    return entries


class TaskMixture:
    def __init__(self, entries: list[tuple[object, int]], seed: int):
        self.tasks = [task for task, _ in entries]
        self.counts = [count for _, count in entries]
        for task, count in entries:
            if len(task) == 0:
                raise UserError(f"chat task '{task.name}' has no examples")
        self.task_of = np.repeat(np.arange(len(entries), dtype=np.int32), self.counts)
        self.item_of = np.concatenate([np.arange(c, dtype=np.int64) % len(t) for t, c in entries])
        self.seed = seed
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.task_of)

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._order = (epoch, rng.permutation(len(self)))
        return self._order[1]

    def get(self, epoch: int, position: int) -> dict:
        """The conversation at `position` of epoch `epoch`'s order."""
        k = int(self.order(epoch)[position])
        return self.tasks[self.task_of[k]][int(self.item_of[k])]

    def describe(self) -> str:
        return ", ".join(f"{t.name}:{c}" for t, c in zip(self.tasks, self.counts))
