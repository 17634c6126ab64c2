"""Everything the report says, read from the run directory and nowhere else: config.yaml, provenance.json, each
stage's DONE summary (or newest checkpoint when unfinished), metrics/<stage>.jsonl and eval/<stage>.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nanoforge.errors import UserError
from nanoforge.train import checkpoint as ckpt

STAGES = ("base", "mid", "sft")


@dataclass
class StageRecord:
    name: str
    finished: bool
    summary: dict  # steps, tokens, elapsed_seconds (DONE summary, or the newest checkpoint's meta)
    world_size: int
    attempts: list[dict]
    config: dict  # the config the stage ran with
    train: list[dict] = field(default_factory=list)  # metrics events of kind train
    evals: list[dict] = field(default_factory=list)
    texts: list[dict] = field(default_factory=list)
    results: dict | None = None  # eval/<stage>.json
    skipped_metric_lines: int = 0

    @property
    def elapsed_seconds(self) -> float:
        return float(self.summary.get("elapsed_seconds") or 0.0)

    @property
    def gpu_seconds(self) -> float:
        return self.elapsed_seconds * self.world_size


@dataclass
class RunRecord:
    run_dir: Path
    config: dict
    provenance: dict
    stages: list[StageRecord]

    @property
    def eval_seconds(self) -> float:
        return sum(float(s.results.get("elapsed_seconds") or 0) for s in self.stages if s.results)

    @property
    def eval_gpu_seconds(self) -> float:
        return sum(float(s.results.get("elapsed_seconds") or 0) * int(s.results.get("world_size") or 1)
                   for s in self.stages if s.results)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); it may be damaged") from None


def _events(path: Path) -> tuple[list[dict], int]:
    """The events of a metrics file and how many incomplete lines were skipped: a process killed mid-write can
    leave a partial last line, which must not make the run unreportable; damage anywhere else is an error."""
    if not path.exists():
        return [], 0
    lines = path.read_text(encoding="utf-8").splitlines()
    events, skipped = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise UserError(f"{path}: line {number} is not valid JSON; the metrics file is damaged") from None
            skipped += 1
    return events, skipped


def collect(run_dir: Path) -> RunRecord:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); "
                        f"run: nanoforge pipeline --preset demo --run-dir {run_dir}")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    provenance = _read_json(run_dir / "provenance.json") if (run_dir / "provenance.json").exists() else {}
    stages = []
    for name in STAGES:
        done_path = ckpt.stage_dir(run_dir, name) / ckpt.DONE
        newest = ckpt.latest_valid(run_dir, name, log=lambda *a, **k: None)
        if not done_path.exists() and newest is None:
            continue
        meta = newest[1] if newest else {}
        summary = _read_json(done_path) if done_path.exists() else {
            "steps": meta.get("step"), "tokens": meta.get("tokens_total"),
            "elapsed_seconds": meta.get("elapsed_seconds", 0.0)}
        attempts = provenance.get("stages", {}).get(name, {}).get("attempts", [])
        world = meta.get("world_size") or (attempts[-1].get("world_size") if attempts else 1) or 1
        events, skipped = _events(run_dir / "metrics" / f"{name}.jsonl")
        results_path = run_dir / "eval" / f"{name}.json"
        stages.append(StageRecord(
            name=name,
            finished=done_path.exists(),
            summary=summary,
            world_size=int(world),
            attempts=attempts,
            config=meta.get("config") or config,
            train=[e for e in events if e.get("kind") == "train"],
            evals=[e for e in events if e.get("kind") == "eval"],
            texts=[e for e in events if e.get("kind") == "text"],
            results=_read_json(results_path) if results_path.exists() else None,
            skipped_metric_lines=skipped,
        ))
    return RunRecord(run_dir, config, provenance, stages)


def series(events: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, times, values) of one metric, in time order, skipping missing and non-finite (null) values. After a
    resume the steps since the last checkpoint are logged again; the newer values win in the step view."""
    points = sorted((e["time"], e["step"], e["values"][key]) for e in events
                    if e.get("values", {}).get(key) is not None)
    steps = [p[1] for p in points]
    times = [p[0] for p in points]
    values = [float(p[2]) for p in points]
    return steps, times, values
