"""Midtraining, SFT and the local pipeline through the real CLI: mid starts from base and resumes exactly after
a stop signal, a missing previous stage is a one-line error, and `nanoforge pipeline` runs every stage, stops
at a failing one with its exit code and resumes past the finished ones."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import nanoforge, tiny_overrides
from nanoforge.train import checkpoint as ckpt

CHAT_TINY = []
for _stage, _steps in (("mid", 8), ("sft", 4)):
    CHAT_TINY += [f"chat.{_stage}.num_iterations={_steps}", f"chat.{_stage}.device_batch_size=4",
                  f"chat.{_stage}.total_batch_size=512", f"chat.{_stage}.eval_every=4",
                  f"chat.{_stage}.eval_tokens=1024", f"chat.{_stage}.save_every=2"]


def overrides(data_dir: Path, *extra: str) -> list[str]:
    return tiny_overrides(data_dir, "train.num_iterations=2", *CHAT_TINY, *extra)


@pytest.fixture(scope="module")
def base_run(tiny_tokenizer_run, tiny_data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("chat") / "base"
    shutil.copytree(tiny_tokenizer_run, run)
    nanoforge("base", "--run-dir", str(run), *overrides(tiny_data_dir))
    return run


def copy_run(base_run: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(base_run, dest)
    return dest


def final_weights(run_dir: Path, stage: str) -> dict:
    found = ckpt.latest_valid(run_dir, stage)
    assert found is not None, f"no {stage} checkpoint in {run_dir}"
    return torch.load(found[0] / "model.pt", map_location="cpu")


def test_mid_starts_from_base_and_resumes_exactly_after_stop_signal(base_run, tiny_data_dir, tmp_path):
    args = overrides(tiny_data_dir)
    straight = copy_run(base_run, tmp_path, "straight")
    out = nanoforge("mid", "--run-dir", str(straight), *args)
    assert "from " + str(straight / "checkpoints" / "base" / "step-000002") in out.stdout
    rows = [json.loads(line) for line in (straight / "metrics" / "mid.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert evals and all("val_loss" in str(r) and "val_bpb" in str(r) for r in evals)
    done = json.loads((straight / "checkpoints" / "mid" / "DONE").read_text())
    assert done["steps"] == 8 and done["started_from"].endswith("base/step-000002")
    meta = json.loads((straight / "checkpoints" / "mid" / "step-000008" / "meta.json").read_text())
    assert meta["config"]["train"]["total_batch_size"] == 512, "mid trains under its own batch settings"

    stopped = copy_run(base_run, tmp_path, "stopped")
    proc = subprocess.Popen([sys.executable, "-m", "nanoforge", "mid", "--run-dir", str(stopped), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jsonl = stopped / "metrics" / "mid.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (jsonl.exists() and '"step": 3' in jsonl.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 75, out
    stopped_at = int((stopped / "checkpoints" / "mid" / "STOPPED").read_text())
    assert 3 <= stopped_at < 8, f"stopped at {stopped_at}: the signal must stop the run early"

    nanoforge("mid", "--run-dir", str(stopped), *args)
    a, b = final_weights(straight, "mid"), final_weights(stopped, "mid")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    base = final_weights(base_run, "base")
    assert any(not torch.equal(base[n], a[n]) for n in a), "mid must change the base weights"


def test_stage_without_its_previous_stage_names_the_command(tiny_tokenizer_run, tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_tokenizer_run, run)
    for stage, previous in (("mid", "base"), ("sft", "mid")):
        proc = nanoforge(stage, "--run-dir", str(run), *overrides(tiny_data_dir), check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"nanoforge {previous} --run-dir {run}" in lines[0], proc.stderr
        assert not (run / "checkpoints" / stage).exists()


def test_bad_task_mixture_is_one_line(base_run, tiny_data_dir, tmp_path):
    run = copy_run(base_run, tmp_path, "bad")
    proc = nanoforge("mid", "--run-dir", str(run), *overrides(tiny_data_dir, "chat.mid.train_tasks=identity,nope:3"),
                     check=False)
    assert proc.returncode == 2 and "chat.mid.train_tasks: unknown task 'nope'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (run / "checkpoints" / "mid").exists()


def test_pipeline_stops_at_a_failing_stage_and_resumes(tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    broken = overrides(tiny_data_dir, "chat.sft.train_tasks=nope")
    proc = nanoforge("pipeline", "--preset", "demo", "--run-dir", str(run), *broken, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    record = json.loads((run / "pipeline.json").read_text())
    assert [(s["stage"], s["status"]) for s in record["stages"]] == [
        ("tokenizer", "ran"), ("base", "ran"), ("mid", "ran"), ("sft", "failed")]
    assert record["exit_code"] == 2 and not (run / "eval").exists()
    assert "stopped at 'sft'" in proc.stdout

    fixed = overrides(tiny_data_dir, "chat.sft.train_tasks=identity:20,arithmetic:20")
    proc = nanoforge("pipeline", "--preset", "demo", "--run-dir", str(run), *fixed)
    record = json.loads((run / "pipeline.json").read_text())
    status = {s["stage"]: s["status"] for s in record["stages"]}
    assert status["tokenizer"] == status["base"] == status["mid"] == "done earlier"
    assert status["sft"] == "ran"
    for stage in ("eval", "report"):  # run when this nanoforge has the command, else noted
        assert status[stage] in ("ran", "not available")
    assert all(s["seconds"] > 0 for s in record["stages"] if s["status"] in ("ran", "done earlier"))
    done = json.loads((run / "checkpoints" / "sft" / "DONE").read_text())
    assert done["started_from"].endswith("mid/step-000008")
    assert f"nanoforge chat --run-dir {run}" in proc.stdout and "wall time" in proc.stdout
