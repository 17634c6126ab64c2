"""The pipeline on the REAL local cluster (scripts/local-cluster up): slurmctld + slurmd with 2 fake GPUs, sshd
on 127.0.0.1:2222. Jobs run the real stages with a 2-process torchrun (gloo) on the CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY
from local_cluster import fab, nanoforge_cli, scontrol_job, unique_run, wait_job

# The tiny model of conftest.TINY, without its data_dir: jobs read <scratch>/data like a real run does.
TINY_SETS = [item for item in TINY]


def set_args(*extra: str) -> list[str]:
    out = []
    for item in [*TINY_SETS, *extra]:
        out += ["--set", item]
    return out


def job_ids(run_dir: Path) -> dict[str, str]:
    record = json.loads((run_dir / "slurm_jobs.json").read_text())
    return {stage: entry["job_id"] for stage, entry in record["stages"].items()}


def first_train_event_time(run_dir: Path) -> float | None:
    path = run_dir / "metrics" / "base.jsonl"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line being written
        if event.get("kind") == "train":
            return event["time"]
    return None


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics" / "base.jsonl"
    steps = [0]
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("kind") == "train":
                steps.append(event["step"])
    return max(steps)


def final_weights(run_dir: Path) -> dict:
    import torch

    newest = sorted((run_dir / "checkpoints" / "base").glob("step-*"))[-1]
    return newest.name, torch.load(newest / "model.pt", map_location="cpu", weights_only=True)


def status_json(profile: str, run: str) -> dict[str, dict]:
    proc = nanoforge_cli("runs", "status", "--profile", profile, "--run-name", run, "--json")
    assert proc.returncode == 0, proc.stderr
    return {row["stage"]: row for row in json.loads(proc.stdout)["stages"]}


CHAT_TINY = [f"chat.{stage}.{key}" for stage in ("mid", "sft") for key in (
    "num_iterations=4", "device_batch_size=4", "total_batch_size=512", "eval_every=4", "eval_tokens=1024",
    "save_every=2")]


def test_fab_stage_data_submit_run_runs_the_demo_pipeline_end_to_end(local_cluster, tmp_path):
    """`fab stage-data submit-run` over the real sshd runs every stage of the (tiny) demo pipeline as chained
    SLURM jobs, the training stages as 2-process torchrun (gloo) on the 2 fake GPUs; `fab status` (through
    `fab -H`) reports them, `fab fetch-report` brings the report back and `fab chat` answers."""
    run = unique_run("e2e")
    overrides = ",".join(TINY_SETS + CHAT_TINY)
    staged = fab("stage-data", "--profile", "local", "--run", run, "--preset", "demo", "--overrides", overrides)
    assert staged.returncode == 0, staged.stdout + staged.stderr
    run_dir = local_cluster.run_dir(run)
    assert (run_dir / "config.yaml").exists()
    assert (local_cluster.scratch / "data" / "corpora" / "demo").is_dir()

    submitted_at = time.time()
    submitted = fab("submit-run", "--profile", "local", "--run", run, "--preset", "demo", "--overrides", overrides)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    ids = job_ids(run_dir)
    assert list(ids) == ["tokenizer", "base", "mid", "sft", "eval", "report"]
    assert scontrol_job(ids["base"])["Dependency"] in (f"afterok:{ids['tokenizer']}(unfulfilled)", "(null)")

    report = wait_job(ids["report"], timeout=600, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    states = {stage: scontrol_job(job)["JobState"] for stage, job in ids.items()}
    assert set(states.values()) == {"COMPLETED"}, (states, sorted((run_dir / "logs").glob("*")))
    assert report["JobState"] == "COMPLETED"
    for stage in ("base", "mid", "sft"):
        assert (run_dir / "checkpoints" / stage / "DONE").exists()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["slurm_jobs"] == ids
    for stage in ("base", "mid", "sft"):
        attempt = provenance["stages"][stage]["attempts"][-1]
        assert attempt["world_size"] == 2 and attempt["slurm_job_id"] == ids[stage]
    first_step = first_train_event_time(run_dir)
    print(f"\nsubmit -> first training step: {first_step - submitted_at:.1f} s (tokenizer job included); "
          f"whole pipeline: {time.time() - submitted_at:.0f} s")

    status = fab("-H", "root@127.0.0.1:2222", "-i", local_cluster.key, "status", "--profile", "local", "--run", run)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.startswith("  ")}
    for stage, job in ids.items():
        assert job in lines[stage] and "COMPLETED" in lines[stage], status.stdout
    assert "step 8/8" in lines["base"] and "val_bpb" in lines["base"]

    fetched = fab("fetch-report", "--profile", "local", "--run", run, "--dest", str(tmp_path / "got"))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    local_report = tmp_path / "got" / "report" / "report.md"
    assert local_report.read_bytes() == (run_dir / "report" / "report.md").read_bytes()
    assert f"# Run report: {run}" in local_report.read_text()
    assert {p.name for p in (run_dir / "report").glob("*.png")} == {p.name for p in local_report.parent.glob("*.png")}

    chat = fab("chat", "--profile", "local", "--run", run, "--prompt", "The capital of France is")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stdout + chat.stderr

    # Resubmitting skips the finished stages and queues nothing.
    again = nanoforge_cli("submit", "--profile", "local", "--run-name", run)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr


def test_missing_asset_stops_submit_run_at_preflight_with_nothing_queued(local_cluster):
    run = unique_run("noasset")
    start = time.monotonic()
    proc = fab("submit-run", "--profile", "local", "--run", run, "--preset", "demo",
               "--overrides", "data.corpus=fineweb-edu", "--stages", "tokenizer,base")
    seconds = time.monotonic() - start
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "fineweb-edu" in proc.stdout + proc.stderr and "nanoforge stage" in proc.stdout + proc.stderr
    assert seconds < 60
    assert not (local_cluster.run_dir(run) / "slurm_jobs.json").exists()
    queued = subprocess.run(["squeue", "-h", "-n", f"nf-{run}-tokenizer,nf-{run}-base", "-o", "%i"],
                            capture_output=True, text=True)
    assert queued.stdout.strip() == ""


def test_failing_stage_fails_its_job_with_its_exit_code_and_cancels_dependents(local_cluster):
    """No preflight in the job, a corpus that does not exist: the tokenizer exits 2 (bad input), its job is
    FAILED with exit code 2, base never runs (kill_invalid_depend), and `runs status` names stage and log."""
    run = unique_run("fail")
    proc = nanoforge_cli("submit", "--profile", "local", "--run-name", run, "--preset", "demo", "--stages",
                         "tokenizer,base", "--no-preflight", *set_args("data.corpus=no-such-corpus"))
    assert proc.returncode == 0, proc.stderr
    run_dir = local_cluster.run_dir(run)
    ids = job_ids(run_dir)
    tokenizer = wait_job(ids["tokenizer"], timeout=120)
    assert tokenizer["JobState"] == "FAILED" and tokenizer["ExitCode"] == "2:0"
    base = wait_job(ids["base"], timeout=60, until=("CANCELLED", "FAILED", "COMPLETED"))
    assert base["JobState"] == "CANCELLED" and "Dependency" in base["Reason"]
    assert not list((run_dir / "logs").glob(f"nf-{run}-base-*"))

    status = status_json("local", run)
    assert status["tokenizer"]["state"] == "FAILED" and status["tokenizer"]["exit_code"] == 2
    log = Path(status["tokenizer"]["log"])
    assert log == run_dir / "logs" / f"nf-{run}-tokenizer-{ids['tokenizer']}.out" and log.exists()
    assert "no-such-corpus" in log.read_text()
    text = nanoforge_cli("runs", "status", "--profile", "local", "--run-name", run).stdout
    assert f"stage tokenizer failed with exit code 2; log: {log}" in text


def _tokenized_run(local_cluster, name: str, steps: int, *extra: str) -> Path:
    """A run with a trained tokenizer (a real tokenizer job), ready for base."""
    proc = nanoforge_cli("submit", "--profile", "local", "--run-name", name, "--preset", "demo",
                         "--stages", "tokenizer", *set_args(f"train.num_iterations={steps}", "train.save_every=1000",
                                                            "train.eval_every=1000", *extra))
    assert proc.returncode == 0, proc.stderr
    run_dir = local_cluster.run_dir(name)
    assert wait_job(job_ids(run_dir)["tokenizer"], timeout=120)["JobState"] == "COMPLETED"
    return run_dir


@pytest.mark.slow  # ~50 s on an idle 2-core box, ~100 s under load: three jobs and a requeue
def test_usr1_checkpoints_requeues_and_resumes_to_the_same_weights(local_cluster):
    """The batch shell gets USR1 (what --signal=B:USR1@N delivers, here sent at once with scancel -b): the
    stage checkpoints and exits 75, the job requeues itself, resumes and finishes with the same weights as a run
    that was never stopped."""
    steps = 40
    reference = _tokenized_run(local_cluster, unique_run("ref"), steps)
    stopped = local_cluster.run_dir(unique_run("stop"))
    stopped.mkdir(parents=True)
    shutil.copy(reference / "config.yaml", stopped / "config.yaml")
    shutil.copytree(reference / "tokenizer", stopped / "tokenizer")

    for run_dir in (reference, stopped):
        proc = nanoforge_cli("submit", "--profile", "local", "--run-name", run_dir.name, "--stages", "base")
        assert proc.returncode == 0, proc.stderr
    job = job_ids(stopped)["base"]
    deadline = time.monotonic() + 180
    while last_step(stopped) < 3:
        assert time.monotonic() < deadline, "base never reached step 3"
        assert scontrol_job(job)["JobState"] in ("PENDING", "RUNNING"), scontrol_job(job)
        time.sleep(0.2)
    signalled_at = last_step(stopped)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)

    done = wait_job(job, timeout=300)
    assert done["JobState"] == "COMPLETED", done
    assert int(done["Restarts"]) == 1
    log = (stopped / "logs" / f"nf-{stopped.name}-base-{job}.out").read_text()
    assert "USR1 before the time limit" in log and "requeueing job" in log
    assert "restart 1 of at most" in log
    assert signalled_at < steps

    assert wait_job(job_ids(reference)["base"], timeout=300)["JobState"] == "COMPLETED"
    ref_step, ref_weights = final_weights(reference)
    stop_step, stop_weights = final_weights(stopped)
    assert ref_step == stop_step == f"step-{steps:06d}"
    assert ref_weights.keys() == stop_weights.keys()
    import torch

    for name in ref_weights:
        assert torch.equal(ref_weights[name], stop_weights[name]), name


def test_slurm_time_limit_signal_triggers_checkpoint_and_requeue(local_cluster, tmp_path):
    """The real thing: a 1-minute limit with USR1 30 s before it, sent by SLURM itself. SLURM checks limits
    periodically, so the signal comes 10-40 s into the job (measured: ~25 s for the whole test)."""
    profile = yaml.safe_load((REPO / "deploy" / "clusters" / "local.yaml").read_text())
    profile["partitions"]["gpu"]["time_limit"] = "00:01:00"
    profile["signal_seconds"] = 30
    profile["max_requeues"] = 1
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(profile))
    run_dir = _tokenized_run(local_cluster, unique_run("limit"), steps=100000)
    proc = nanoforge_cli("submit", "--profile", str(path), "--run-name", run_dir.name, "--stages", "base")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --time=00:01:00" in (run_dir / "slurm" / "base.sbatch").read_text()
    job = job_ids(run_dir)["base"]
    try:
        # While its jobs are queued, the run cannot be submitted a second time (two chains, one folder).
        twice = nanoforge_cli("submit", "--profile", str(path), "--run-name", run_dir.name, "--stages", "base")
        assert twice.returncode == 2 and f"base {job}" in twice.stderr and "runs cancel" in twice.stderr
        deadline = time.monotonic() + 150
        while int(scontrol_job(job).get("Restarts", 0)) < 1:
            assert time.monotonic() < deadline, scontrol_job(job)
            time.sleep(1)
        log = (run_dir / "logs" / f"nf-{run_dir.name}-base-{job}.out").read_text()
        assert "USR1 before the time limit" in log and "requeueing job" in log
        checkpoints = sorted((run_dir / "checkpoints" / "base").glob("step-*"))
        assert checkpoints, "no checkpoint was written on the signal"
        cancelled = nanoforge_cli("runs", "cancel", "--profile", str(path), "--run-name", run_dir.name)
        assert cancelled.returncode == 0 and f"base ({job})" in cancelled.stdout
        assert wait_job(job, timeout=30)["JobState"] == "CANCELLED"
    finally:
        subprocess.run(["scancel", job])


def test_fab_fetch_report_before_the_report_exists_says_so(local_cluster, tmp_path):
    run = unique_run("report")
    local_cluster.run_dir(run).mkdir(parents=True)
    missing = fab("fetch-report", "--profile", "local", "--run", run, "--dest", str(tmp_path / "got"))
    assert missing.returncode == 1 and "report does not exist yet" in missing.stderr
    assert not (tmp_path / "got").exists()


@pytest.mark.slow  # ~40 s: a tokenizer job and a base job
def test_multi_node_launch_line_runs_through_srun_and_c10d(local_cluster, tmp_path):
    """The --nodes N script's launch path (srun, one task per node, torchrun with c10d rendezvous at the first
    host of the node list) run for real. The local cluster has one node, so the 2-node script is submitted with
    --nodes=1 on the command line (sbatch options override #SBATCH lines): same srun and rendezvous code."""
    # 1024 tokens a step split over the 4 ranks the 2-node plan expects as well as over the 2 that run.
    run_dir = _tokenized_run(local_cluster, unique_run("nodes"), 4, "train.total_batch_size=1024")
    proc = nanoforge_cli("submit", "--profile", "local", "--run-name", run_dir.name, "--stages", "base",
                         "--nodes", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout.split("=====\n", 1)[1]
    assert "#SBATCH --nodes=2" in script and "--rdzv-backend=c10d" in script
    path = tmp_path / "base.sbatch"
    path.write_text(script)
    (run_dir / "logs").mkdir(exist_ok=True)
    job = subprocess.run(["sbatch", "--parsable", "--nodes=1", str(path)], capture_output=True, text=True,
                         check=True).stdout.strip()
    done = wait_job(job, timeout=300)
    log = (run_dir / "logs" / f"nf-{run_dir.name}-base-{job}.out").read_text()
    assert done["JobState"] == "COMPLETED", log
    attempt = json.loads((run_dir / "provenance.json").read_text())["stages"]["base"]["attempts"][-1]
    assert attempt["world_size"] == 2 and attempt["slurm_job_id"] == job
    assert (run_dir / "checkpoints" / "base" / "DONE").exists()
