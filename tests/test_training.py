"""Base training end to end through the real CLI: exact resume after a stop signal, checkpoint fallback,
multi-process equivalence under torchrun (gloo), DONE idempotence."""

from __future__ import annotations

import json
import os
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


def final_weights(run_dir: Path) -> dict:
    found = ckpt.latest_valid(run_dir, "base")
    assert found is not None, f"no checkpoint in {run_dir}"
    return torch.load(found[0] / "model.pt", map_location="cpu")


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics" / "base.jsonl").read_text().splitlines()]
    return {r["step"]: r["values"]["loss"] if "values" in r else r["loss"] for r in rows if r["kind"] == "train"}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def test_base_trains_resumes_exactly_after_stop_signal(tiny_run, tiny_data_dir):
    overrides = tiny_overrides(tiny_data_dir)
    straight = tiny_run("straight")
    nanoforge("base", "--run-dir", str(straight), *overrides)
    assert (straight / "checkpoints" / "base" / "DONE").exists()
    losses = train_losses(straight)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1]

    stopped = tiny_run("stopped")
    proc = subprocess.Popen([sys.executable, "-m", "nanoforge", "base", "--run-dir", str(stopped), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jsonl = stopped / "metrics" / "base.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (jsonl.exists() and '"step": 3' in jsonl.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out
    assert (stopped / "checkpoints" / "base" / "STOPPED").exists()
    stopped_at = int((stopped / "checkpoints" / "base" / "STOPPED").read_text())
    assert 3 <= stopped_at < 8, f"stopped at {stopped_at}: the signal must stop the run early"

    nanoforge("base", "--run-dir", str(stopped), *overrides)
    assert_bitwise_equal(final_weights(straight), final_weights(stopped))
    assert not (stopped / "checkpoints" / "base" / "STOPPED").exists()

    again = nanoforge("base", "--run-dir", str(stopped), *overrides)
    assert "already done" in again.stdout


def test_damaged_newest_checkpoint_falls_back_to_previous(tiny_run, tiny_data_dir):
    overrides = tiny_overrides(tiny_data_dir, "train.num_iterations=4", "train.keep_checkpoints=5")
    run = tiny_run()
    nanoforge("base", "--run-dir", str(run), *overrides)
    stage = run / "checkpoints" / "base"
    (stage / "DONE").unlink()
    newest = stage / "step-000004" / "model.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, as after a crash

    found = ckpt.latest_valid(run, "base", log=lambda *a, **k: None)
    assert found is not None and found[0].name == "step-000002"

    # Training resumes from step 2, re-does steps 3-4 and ends with a valid step-4 checkpoint.
    out = nanoforge("base", "--run-dir", str(run), *overrides)
    assert "damaged" in out.stderr + out.stdout and "step 2/4" in out.stdout
    assert ckpt.verify(stage / "step-000004")["step"] == 4


def test_checkpoint_is_written_atomically(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, "base", 1, {"model.pt": {"w": torch.ones(3)}}, {"tokens_total": 0}, 2)
    assert path.name == "step-000001" and ckpt.verify(path)["files"]
    for step in (2, 3):
        ckpt.save_checkpoint(tmp_path, "base", step, {"model.pt": {"w": torch.ones(3)}}, {"tokens_total": 0}, 2)
    names = sorted(p.name for p in (tmp_path / "checkpoints" / "base").iterdir())
    assert names == ["step-000002", "step-000003"], "keeps the last K and leaves no temp folders"


@pytest.mark.timeout(600)
def test_torchrun_two_processes_match_one_process_with_accumulation(tiny_run, tiny_data_dir):
    """Same global batch: 1 process x 2 micro-steps == 2 processes x 1 micro-step (gloo), to float tolerance."""
    overrides = tiny_overrides(tiny_data_dir, "train.num_iterations=6", "train.eval_every=3")
    single = tiny_run("single")
    nanoforge("base", "--run-dir", str(single), *overrides)

    double = tiny_run("double")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "nanoforge", "base", "--run-dir", str(double), *overrides],
        capture_output=True, text=True, env=env, timeout=500,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((double / "checkpoints" / "base" / "step-000006" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["replicas_identical"] == 2

    one, two = train_losses(single), train_losses(double)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), f"loss differs at step {step}"
    a, b = final_weights(single), final_weights(double)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
        (["--set", "train.device_batch_size=two"], "must be int"),
        (["--set", "train.total_batch_size=1000"], "impossible batch split"),
        (["--set", "data.data_dir=/nonexistent/data"], "nanoforge data build-demo"),
        (["--preset", "d99"], "unknown preset 'd99'"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, tiny_tokenizer_run, args, message):
    run = tmp_path / "run"
    shutil.copytree(tiny_tokenizer_run, run)
    if "--preset" in args:
        shutil.rmtree(run)
    proc = nanoforge("base", "--run-dir", str(run), *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run / "checkpoints").exists(), "bad input must not leave half-written state"
