"""The run report: on a constructed run directory whose numbers are known (cost, summary table, resumed metrics)
and on a really trained and evaluated tiny run (sections present, PNGs valid and linked, atomic replacement)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import matplotlib.image
import yaml

from conftest import nanoforge
from nanoforge.config import make_config
from nanoforge.report.build import write_report
from nanoforge.report.collect import collect, series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0.01, f"{path} is blank"


def event(t: float, step: int, kind: str, stage: str, **values) -> dict:
    return {"time": t, "step": step, "kind": kind, "labels": {"run_id": "r", "stage": stage}, "values": values}


def constructed_run(root: Path) -> Path:
    """A run as a cluster would leave it: base on 8 GPUs (resumed once), sft on 8 GPUs, evaluated."""
    run = root / "run"
    cfg = make_config("d20", ["hardware.price_per_gpu_hour=2.5"])
    (run / "checkpoints" / "base").mkdir(parents=True)
    (run / "checkpoints" / "sft").mkdir(parents=True)
    (run / "metrics").mkdir()
    (run / "eval").mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    t0 = 1_700_000_000.0
    attempt = {"host": "gpu01", "world_size": 8, "device": "cuda:0", "slurm_job_id": "101",
               "versions": {"nanoforge": "0.1.0", "torch": "2.13.0+cu128", "python": "3.11.7", "cuda": "12.8"}}
    (run / "provenance.json").write_text(json.dumps({
        "git_sha": "0123456789abcdef0123456789abcdef01234567", "image_sha256": "ab" * 32,
        "stages": {"base": {"attempts": [{**attempt, "started_at": t0},
                                         {**attempt, "started_at": t0 + 2000, "slurm_job_id": "102"}]},
                   "sft": {"attempts": [{**attempt, "started_at": t0 + 4000, "slurm_job_id": "103"}]}}}))
    # base: 3600 s x 8 GPUs = 8 GPU-hours; sft 450 s x 8 = 1 GPU-hour
    (run / "checkpoints" / "base" / "DONE").write_text(json.dumps(
        {"stage": "base", "steps": 4, "tokens": 4096, "elapsed_seconds": 3600.0}))
    (run / "checkpoints" / "sft" / "DONE").write_text(json.dumps(
        {"stage": "sft", "steps": 2, "tokens": 512, "elapsed_seconds": 450.0}))
    base_events = [event(t0 + 10, 0, "eval", "base", val_bpb=2.0),
                   event(t0 + 100, 1, "train", "base", loss=5.0), event(t0 + 200, 2, "train", "base", loss=4.0),
                   event(t0 + 300, 3, "train", "base", loss=3.5),
                   # resumed from the step-2 checkpoint: step 3 again, then 4
                   event(t0 + 2100, 3, "train", "base", loss=3.4), event(t0 + 2200, 4, "train", "base", loss=3.0),
                   event(t0 + 2210, 4, "eval", "base", val_bpb=1.5)]
    sft_events = [event(t0 + 4100, 1, "train", "sft", loss=2.0), event(t0 + 4200, 2, "train", "sft", loss=1.8),
                  {"time": t0 + 4200, "step": 2, "kind": "text", "labels": {}, "name": "sample_0",
                   "text": "Hello! I'm nanoforge."}]
    for name, events in (("base", base_events), ("sft", sft_events)):
        (run / "metrics" / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    # evaluation: 900 s x 8 GPUs = 2 GPU-hours (base), 450 s x 8 = 1 (sft) -> 12 GPU-hours in all, $30
    (run / "eval" / "base.json").write_text(json.dumps({
        "stage": "base", "step": 4, "world_size": 8, "elapsed_seconds": 900.0, "finished_at": t0 + 5000,
        "val_bpb": 1.4567, "core": {"core": 0.1234, "tasks": {"copa": {
            "kind": "multiple_choice", "shots": 0, "items": 100, "accuracy": 0.5617, "centered": 0.1234}},
            "present": ["copa"], "missing": ["hellaswag"], "note": "CORE over 1 of 22 tasks; not comparable"}}))
    (run / "eval" / "sft.json").write_text(json.dumps({
        "stage": "sft", "step": 2, "world_size": 8, "elapsed_seconds": 450.0, "finished_at": t0 + 5500,
        "tasks": {"arc-easy": {"items": 10, "accuracy": 0.4, "centered": 0.2},
                  "gsm8k": {"items": 10, "accuracy": 0.1, "centered": 0.1}},
        "chatcore": 0.15, "measured": ["arc-easy", "gsm8k"], "missing": ["arc-challenge", "mmlu", "humaneval"],
        "not_staged": ["arc-challenge", "mmlu", "humaneval"],
        "not_staged_note": "not staged (not measured): arc-challenge, mmlu, humaneval"}))
    return run


def table_row(markdown: str, label: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_report_numbers_from_a_constructed_run(tmp_path):
    run = constructed_run(tmp_path)
    report = write_report(run)
    md = report.read_text()
    assert "`0123456789abcdef0123456789abcdef01234567`" in md
    assert f"`sha256:{'ab' * 32}`" in md
    assert "12.000 GPU-hours" in md and "$30.00 (at $2.50 per GPU-hour" in md
    assert "1h 31m 40s" in md  # first attempt start to the sft eval finishing (5500 s)
    assert table_row(md, "metric") == ["base", "sft"]
    assert table_row(md, "CORE") == ["0.1234", "—"]
    assert table_row(md, "val bpb") == ["1.4567", "—"]
    assert table_row(md, "ARC-Easy") == ["—", "0.4000"]
    assert table_row(md, "MMLU") == ["—", "—"]
    assert table_row(md, "GSM8K") == ["—", "0.1000"]
    assert table_row(md, "ChatCORE") == ["—", "0.1500"]
    assert "## Stage: base" in md and "## Stage: sft" in md and "## Stage: mid" not in md
    assert "attempts: 2 (SLURM jobs 101, 102)" in md
    assert "not comparable" in md and "not staged (not measured): arc-challenge" in md
    assert "Hello! I'm nanoforge." in md
    for name in ("base_loss.png", "base_val_bpb.png", "sft_loss.png"):
        assert f"]({name})" in md
        assert_valid_png(report.parent / name)


def test_resumed_steps_keep_the_newest_values(tmp_path):
    record = collect(constructed_run(tmp_path))
    base = next(s for s in record.stages if s.name == "base")
    steps, times, values = series(base.train, "loss")
    assert steps == [1, 2, 3, 3, 4] and times == sorted(times)
    assert dict(zip(steps, values))[3] == 3.4


def test_report_on_a_trained_and_evaluated_run(trained_tiny_run, shared_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_tiny_run, run)
    nanoforge("eval", "--run-dir", str(run), "--eval-bundle", str(shared_data / "eval_bundle"),
              "--max-items", "2", "--tasks", "bpb", "copa", "winograd")
    core = json.loads((run / "eval" / "base.json").read_text())["core"]["core"]
    proc = nanoforge("report", "--run-dir", str(run))
    report = run / "report" / "report.md"
    assert str(report) in proc.stdout
    md = report.read_text()
    for heading in ("# Run report", "## Summary", "## Stage: base", "## Run config"):
        assert heading in md
    assert table_row(md, "CORE") == [f"{core:.4f}"]
    assert table_row(md, "HumanEval") == ["—"]
    pngs = sorted(p.name for p in report.parent.glob("*.png"))
    assert pngs == ["base_loss.png", "base_val_bpb.png", "base_val_loss.png"]  # base evaluates loss and bpb
    for name in pngs:
        assert f"]({name})" in md
        assert_valid_png(report.parent / name)

    first = report.stat().st_mtime_ns
    time.sleep(0.01)
    nanoforge("report", "--run-dir", str(run))
    assert report.stat().st_mtime_ns != first
    assert not [p for p in run.iterdir() if p.name.startswith(".report")]  # no temporary folders left


def test_report_bad_input(tmp_path):
    proc = nanoforge("report", "--run-dir", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = nanoforge("report", "--run-dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "config.yaml" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "report").exists()


def test_damaged_files_are_named_and_a_cut_last_line_is_tolerated(tmp_path):
    run = constructed_run(tmp_path)
    metrics = run / "metrics" / "base.jsonl"
    intact = metrics.read_text()
    metrics.write_text(intact[:-20])  # killed while writing the last line: still reportable
    md = write_report(run).read_text()
    assert "skipped an incomplete last line of metrics/base.jsonl" in md
    shutil.rmtree(run / "report")

    lines = intact.splitlines(keepends=True)
    metrics.write_text("".join(lines[:2]) + lines[2][:15] + "\n" + "".join(lines[3:]))
    proc = nanoforge("report", "--run-dir", str(run), check=False)
    assert proc.returncode == 2 and "base.jsonl: line 3" in proc.stderr
    assert not (run / "report").exists()

    metrics.write_text(intact)
    done = run / "checkpoints" / "base" / "DONE"
    done.write_text(done.read_text()[:-5])
    proc = nanoforge("report", "--run-dir", str(run), check=False)
    assert proc.returncode == 2 and "DONE" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "report").exists()
