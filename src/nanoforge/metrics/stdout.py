"""One human line per logged step, for terminals and SLURM log files.

    step 120/400 | loss 4.1234 | lr 2.0e-02 | grad 0.812 | 12,345 tok/s | MFU 12.3% | 210 ms/step | ...

Fields keep a fixed width so consecutive lines line up; missing values are left out rather than faked.
"""

from __future__ import annotations

import math
import sys


def format_duration(seconds: float) -> str:
    """Compact ETA: 45s, 2m10s, 3h05m, 1d02h."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_bytes(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB"


def format_step(step: int, total_steps: int | None) -> str:
    if total_steps:
        return f"step {step:>{len(str(total_steps))}d}/{total_steps}"
    return f"step {step}"


# (value key, how it reads in the line), in line order; absent values are left out.
TRAIN_FIELDS = [
    ("loss", lambda x: f"loss {x:.4f}"),
    ("lr", lambda x: f"lr {x:.1e}"),
    ("grad_norm", lambda x: f"grad {x:.3f}"),
    ("tokens_per_second", lambda x: f"{x:>7,.0f} tok/s"),
    ("mfu", lambda x: f"MFU {100 * x:4.1f}%"),
    ("step_seconds", lambda x: f"{1000 * x:>4.0f} ms/step"),
    ("data_wait_seconds", lambda x: f"data {1000 * x:4.1f} ms"),
    ("memory_bytes", lambda x: f"mem {format_bytes(x)}"),
    ("eta_seconds", lambda x: f"ETA {format_duration(x)}"),
    ("cost_usd", lambda x: f"${x:.2f}"),
]


def format_train_line(step: int, total_steps: int | None, values: dict[str, float]) -> str:
    parts = [format_step(step, total_steps)]
    parts += [render(values[key]) for key, render in TRAIN_FIELDS if key in values]
    return " | ".join(parts)


def format_eval_line(step: int, total_steps: int | None, values: dict[str, float]) -> str:
    shown = " | ".join(f"{name} {value:.4f}" for name, value in values.items())
    return f"{format_step(step, total_steps)} | eval | {shown}"


class StdoutWriter:
    def __init__(self, total_steps: int | None, stream=None):
        self.total_steps = total_steps
        self.stream = stream if stream is not None else sys.stdout

    def _print(self, line: str) -> None:
        # flush: SLURM redirects stdout to a file, where Python would otherwise buffer for minutes
        print(line, file=self.stream, flush=True)

    def train(self, step: int, values: dict[str, float], timestamp: float) -> None:
        if values.get("total_steps"):  # the loop knows the stage's real length better than the config does
            self.total_steps = int(values["total_steps"])
        self._print(format_train_line(step, self.total_steps, values))

    def eval(self, step: int, values: dict[str, float], timestamp: float) -> None:
        self._print(format_eval_line(step, self.total_steps, values))

    def text(self, step: int, name: str, text: str, timestamp: float) -> None:
        self._print(f"{format_step(step, self.total_steps)} | {name}:\n{text}")

    def close(self) -> None:
        pass
