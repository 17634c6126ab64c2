"""Rendered batch scripts (`nanoforge submit --dry-run`): the right #SBATCH lines, launch lines for 1 and 2 nodes,
the USR1 forwarding and requeue logic, valid bash; DONE stages skipped; the time-budget plan."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO
from nanoforge.cluster.profile import load_profile
from nanoforge.cluster.slurm import plan_jobs, plan_time
from nanoforge.config import make_config


def dry_run(*args: str, env: dict | None = None) -> dict[str, str]:
    """{stage: script} from the real CLI."""
    import os

    proc = subprocess.run([sys.executable, "-m", "nanoforge", "submit", "--dry-run", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    parts = re.split(r"^# ===== (\w+) \(job \d+ of \d+\) =====$", proc.stdout, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture
def mail_env(tmp_path):
    env_file = tmp_path / ".env.local"
    env_file.write_text("NANOFORGE_SSH_USER=ab123\nNANOFORGE_MAIL_USER=ab123@msstate.edu\n")
    return {"NANOFORGE_ENV_FILE": str(env_file)}


def test_one_node_script_for_ptolemy(mail_env):
    scripts = dry_run("--profile", "ptolemy", "--run-name", "d20-a", "--preset", "d20", "--stages", "tokenizer,base",
                      env=mail_env)
    assert list(scripts) == ["tokenizer", "base"]
    base = scripts["base"]
    run_dir = "/scratch/ptolemy/users/ab123/nanoforge/runs/d20-a"
    for line in [
        "#SBATCH --job-name=nf-d20-a-base",
        "#SBATCH --partition=gpu-a100",
        "#SBATCH --account=class-cse8990",
        "#SBATCH --nodes=1",
        "#SBATCH --gres=gpu:8",
        "#SBATCH --time=12:00:00",
        f"#SBATCH --output={run_dir}/logs/%x-%j.out",
        "#SBATCH --signal=B:USR1@600",
        "#SBATCH --requeue",
        "#SBATCH --mail-type=END,FAIL",
        "#SBATCH --mail-user=ab123@msstate.edu",
        "set -euo pipefail",
        "module load apptainer",
        "export NCCL_IB_DISABLE=0",
        "export APPTAINERENV_PYTHONUNBUFFERED=1",  # through --cleanenv: job logs are written as they happen
        "export APPTAINERENV_HF_HUB_OFFLINE=1",
        "export APPTAINERENV_NANOFORGE_IMAGE_SHA256=\"$(cut -d' ' -f1 /scratch/ptolemy/users/ab123/nanoforge/images/"
        "nanoforge.sif.sha256 2>/dev/null || true)\"",
        "trap forward_stop USR1",
        'scontrol requeue "$SLURM_JOB_ID"',
        'exit "$CODE"',
    ]:
        assert line in [l.strip() for l in base.splitlines()], line
    launch = next(l for l in base.splitlines() if l.endswith(" &"))
    assert "apptainer exec --nv --cleanenv" in launch
    assert f"/scratch/ptolemy/users/ab123/nanoforge/images/nanoforge.sif python -m nanoforge.cluster.launch " \
           f"--standalone \"--nproc_per_node=${{GPUS}}\" -m nanoforge base --run-dir {run_dir} &" in launch
    assert '"APPTAINERENV_SLURM_JOB_ID=${SLURM_JOB_ID:-}"' in launch  # expanded when the job runs
    preflight = [l for l in base.splitlines() if "nanoforge preflight" in l]
    assert len(preflight) == 1 and f"--run-dir {run_dir} --stage base" in preflight[0]
    assert "--nv" not in preflight[0]
    # The tokenizer needs no GPU and runs one plain process (no torchrun), still behind the USR1 forwarder.
    tok = scripts["tokenizer"]
    assert "--gres" not in tok and "torchrun" not in tok and "--standalone" not in tok
    assert "python -m nanoforge.cluster.launch --single -- nanoforge tokenizer train --run-dir" in tok


def test_two_node_script_uses_srun_and_c10d_rendezvous():
    scripts = dry_run("--profile", "ptolemy", "--run-name", "big", "--preset", "d26", "--stages", "base",
                      "--nodes", "2")
    base = scripts["base"]
    assert "#SBATCH --nodes=2" in base and "#SBATCH --ntasks-per-node=1" in base
    assert 'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in base
    launch = next(l for l in base.splitlines() if l.endswith(" &"))
    assert launch.startswith("srun --ntasks-per-node=1 --cpus-per-task=64 --kill-on-bad-exit=1 ")
    for piece in ['"--nnodes=${SLURM_NNODES}"', '"--nproc_per_node=${GPUS}"', "--rdzv-backend=c10d",
                  '"--rdzv-endpoint=${HEAD_NODE}:29500"', '"--rdzv-id=${SLURM_JOB_ID}"']:
        assert piece in launch
    assert "--standalone" not in launch


def test_local_profile_runs_on_the_host_venv():
    scripts = dry_run("--profile", "local", "--run-name", "demo-x", "--preset", "demo", "--stages", "base")
    base = scripts["base"]
    assert "#SBATCH --gres=gpu:2" in base and "#SBATCH --partition=gpu" in base
    assert "--account" not in base and "--mail-type" not in base
    assert f"export PATH={REPO}/.venv/bin:\"$PATH\"" in base
    assert "apptainer" not in base and "APPTAINERENV" not in base
    assert "python -m nanoforge.cluster.launch --standalone \"--nproc_per_node=${GPUS}\" -m nanoforge base" in base


def test_rendered_scripts_are_valid_bash(tmp_path):
    for args in (("--profile", "ptolemy", "--preset", "d20"), ("--profile", "ptolemy", "--preset", "d26",
                                                                 "--nodes", "3"), ("--profile", "local",
                                                                                   "--preset", "demo")):
        for stage, script in dry_run("--run-name", "syntax", *args).items():
            path = tmp_path / f"{stage}.sh"
            path.write_text(script)
            proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert proc.returncode == 0, (stage, proc.stderr)


def test_done_stages_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOFORGE_CLUSTER_DIR", str(tmp_path))
    profile = load_profile("local")
    run_dir = profile.run_dir("r")
    (run_dir / "tokenizer").mkdir(parents=True)
    (run_dir / "tokenizer" / "DONE").write_text("{}")
    cfg = make_config("demo")
    jobs, skipped = plan_jobs(profile, cfg, "r", run_dir, ["tokenizer", "base"], nodes=1)
    assert skipped == ["tokenizer"] and [j.stage for j in jobs] == ["base"]
    (run_dir / "checkpoints" / "base").mkdir(parents=True)
    (run_dir / "checkpoints" / "base" / "DONE").write_text("{}")
    jobs, skipped = plan_jobs(profile, cfg, "r", run_dir, ["tokenizer", "base"], nodes=1)
    assert jobs == [] and skipped == ["tokenizer", "base"]


def test_time_budget_fits_or_plans_segments():
    profile = load_profile("ptolemy")
    # d20 on 8 A100s at the assumed MFU: about 11 h of compute, over 12 h with the margin -> two segments.
    d20 = plan_time(profile, make_config("d20"), "base", nodes=1)
    assert d20.segments >= 2 and d20.time_minutes == 12 * 60
    assert d20.max_requeues == profile.max_requeues + d20.segments - 1
    assert "planned as" in d20.warnings[0]
    # Twice the GPUs: under the limit, one segment, and the limit asked for is the estimate, not the partition's.
    d20_two_nodes = plan_time(profile, make_config("d20"), "base", nodes=2)
    assert d20_two_nodes.segments == 1 and not d20_two_nodes.warnings
    assert d20_two_nodes.time_minutes < 12 * 60
    assert d20_two_nodes.time_minutes >= d20_two_nodes.estimate_hours * 60
    # Stages without an estimate take the profile's stage_time: sft runs one pass over its data by default.
    assert plan_time(profile, make_config("d20"), "report", nodes=1).time_minutes == 30
    assert plan_time(profile, make_config("d20"), "sft", nodes=1).estimate_hours is None
    assert plan_time(profile, make_config("d20"), "sft", nodes=1).time_minutes == 120
    # With a fixed number of steps, a chat stage is estimated like base: longer runs ask for more time.
    short = plan_time(profile, make_config("d20", ["chat.mid.num_iterations=500"]), "mid", nodes=1)
    longer = plan_time(profile, make_config("d20", ["chat.mid.num_iterations=5000"]), "mid", nodes=1)
    assert 0 < short.estimate_hours < longer.estimate_hours
    assert short.time_minutes < longer.time_minutes <= 12 * 60
