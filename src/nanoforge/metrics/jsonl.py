"""<run_dir>/metrics/<stage>.jsonl: every event as one JSON object per line, the record the report is drawn from.

The file is appended to, so a resumed stage continues the same history (its events carry the new restart
label). Non-finite numbers (a NaN loss) are written as null to keep every line valid JSON for any reader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    out = {}
    for name, value in values.items():
        value = float(value)
        out[name] = value if math.isfinite(value) else None
    return out


class JsonlWriter:
    def __init__(self, path: Path, labels: dict[str, str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.labels = labels
        # line-buffered: each event reaches the file as one whole line, readable while the run goes on
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")

    def _write(self, event: dict) -> None:
        self._file.write(json.dumps(event, allow_nan=False) + "\n")

    def train(self, step: int, values: dict[str, float], timestamp: float) -> None:
        self._write({"time": timestamp, "step": step, "kind": "train", "labels": self.labels,
                     "values": _finite_or_none(values)})

    def eval(self, step: int, values: dict[str, float], timestamp: float) -> None:
        self._write({"time": timestamp, "step": step, "kind": "eval", "labels": self.labels,
                     "values": _finite_or_none(values)})

    def text(self, step: int, name: str, text: str, timestamp: float) -> None:
        self._write({"time": timestamp, "step": step, "kind": "text", "labels": self.labels,
                     "name": name, "text": text})

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_events(path: Path) -> list[dict]:
    """All events of a JSONL metrics file (for reports and tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
