"""The SLURM edge, in one place: batch scripts rendered from a cluster profile and a run config, the afterok
chain that submits them, and what the scheduler says about them afterwards.

One job per stage (tokenizer -> base -> mid -> sft -> eval -> report). Each job script runs outside the
container (scontrol lives on the host): it runs preflight, starts the stage in the background, forwards
SLURM's USR1 (sent `signal_seconds` before the time limit) so the stage checkpoints and exits 75, and then
requeues itself while SLURM_RESTART_COUNT is under the limit. The stage's exit code is the job's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanoforge.cluster.profile import Profile, format_minutes, parse_time_limit
from nanoforge.config import RunConfig
from nanoforge.errors import UserError

PIPELINE = ("tokenizer", "base", "mid", "sft", "eval", "report")
DISTRIBUTED_STAGES = {"base", "mid", "sft", "eval"}  # launched with torchrun on every GPU of the job
# The CLI words that run each stage (`nanoforge <words> --run-dir DIR`).
STAGE_COMMANDS = {
    "tokenizer": ("tokenizer", "train"),
    "base": ("base",),
    "mid": ("mid",),
    "sft": ("sft",),
    "eval": ("eval",),
    "report": ("report",),
}
JOBS_FILE = "slurm_jobs.json"
RENDEZVOUS_PORT = 29500
ESTIMATE_MARGIN = 1.2  # estimates assume a steady MFU; start-up, evals and checkpoints come on top
STARTUP_MINUTES = 10
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Variables a stage inside the container still needs after --cleanenv; expanded by the batch shell at run time.
JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST", "SLURM_NNODES",
                 "SLURM_CPUS_PER_TASK", "CUDA_VISIBLE_DEVICES")


def check_run_name(name: str) -> str:
    if not RUN_NAME.match(name or ""):
        raise UserError(f"run name '{name}' must be 1-64 letters, digits, '.', '_' or '-' and start with a "
                        f"letter or digit (it names the run folder and the SLURM jobs)")
    return name


def done_marker(run_dir: Path, stage: str) -> Path:
    """The file a finished stage leaves behind (DESIGN.md: every stage is idempotent)."""
    if stage == "tokenizer":
        return run_dir / "tokenizer" / "DONE"
    if stage in ("base", "mid", "sft"):
        return run_dir / "checkpoints" / stage / "DONE"
    if stage == "report":
        return run_dir / "report" / "report.md"
    return run_dir / stage / "DONE"


def available_stages() -> list[str]:
    """Stages whose command this nanoforge has (the pipeline grows as stages land)."""
    from nanoforge.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    return [s for s in PIPELINE if STAGE_COMMANDS[s][0] in commands]


def parse_stages(text: str | None) -> list[str]:
    available = available_stages()
    if not text:
        return available
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    for stage in wanted:
        if stage not in PIPELINE:
            raise UserError(f"--stages: unknown stage '{stage}'; the pipeline is {','.join(PIPELINE)}")
        if stage not in available:
            raise UserError(f"--stages: this nanoforge has no '{stage}' command yet; available: {','.join(available)}")
    return [s for s in PIPELINE if s in wanted]  # pipeline order, whatever order they were given in


# --- rendering -------------------------------------------------------------------------------------------------


@dataclass
class StageJob:
    stage: str
    partition: str
    nodes: int
    gpus_per_node: int
    time_minutes: int
    max_requeues: int
    estimate_hours: float | None  # from nanoforge.plan, None when the stage has no estimate
    segments: int  # jobs of `time_minutes` the stage needs (1 unless it outlasts the partition limit)
    script: str = ""
    warnings: list[str] = field(default_factory=list)


def estimate_hours(cfg: RunConfig, stage: str, gpu: str, gpus_per_node: int, nodes: int) -> float | None:
    """Hours of compute for a training stage on this cluster's GPUs (nanoforge.plan, at the config's assumed
    MFU); None when the stage's length is not fixed by the config (chat stages with num_iterations 0 run about
    one pass over their data, which is only known once it is loaded)."""
    from nanoforge.plan import derive_plan, gpu_peak_flops

    # The estimate is for this cluster's GPUs, whatever the run config was written for.
    hardware = dataclasses.replace(cfg.hardware, gpus_per_node=max(1, gpus_per_node), nodes=nodes, gpu=gpu)
    on_cluster = dataclasses.replace(cfg, hardware=hardware)
    world = max(1, gpus_per_node * nodes)
    plan = derive_plan(on_cluster, world_size=world)
    if stage == "base":
        return plan.est_hours
    if stage in ("mid", "sft"):
        chat = getattr(getattr(cfg, "chat", None), stage, None)
        if chat is None or not chat.num_iterations:
            return None
        tokens = chat.num_iterations * (chat.total_batch_size or plan.total_batch_size)
        seconds = plan.flops_per_token * tokens / (world * gpu_peak_flops(gpu) * cfg.hardware.assumed_mfu)
        return seconds / 3600
    return None


def plan_time(profile: Profile, cfg: RunConfig, stage: str, nodes: int) -> StageJob:
    """Time limit and requeue budget for one stage: the estimate (training stages) or the profile's stage_time,
    capped at the partition limit; a stage longer than the limit is planned as several segments (requeues)."""
    partition = profile.partition_for(stage)
    limit = parse_time_limit(partition.time_limit, profile.source, "time_limit")
    gpus = partition.gpus_per_node
    job_nodes = nodes if stage in DISTRIBUTED_STAGES else 1
    job = StageJob(stage, partition.name, job_nodes, gpus, limit, profile.max_requeues, None, 1)
    gpu = partition.gpu_type or cfg.hardware.gpu
    job.estimate_hours = estimate_hours(cfg, stage, gpu, gpus, job_nodes) if gpus else None
    if job.estimate_hours is not None:
        needed = math.ceil(job.estimate_hours * 60 * ESTIMATE_MARGIN) + STARTUP_MINUTES
        if needed > limit:
            usable = max(1, limit - math.ceil(profile.signal_seconds / 60) - STARTUP_MINUTES)
            job.segments = math.ceil(needed / usable)
            job.max_requeues = profile.max_requeues + job.segments - 1
            job.warnings.append(
                f"{stage}: estimated {job.estimate_hours:.1f} h on {job_nodes}x{gpus} {gpu} exceeds "
                f"the {partition.name} limit of {partition.time_limit}: planned as {job.segments} segments "
                f"(requeues on the USR1 checkpoint, up to {job.max_requeues})")
        else:
            job.time_minutes = needed
    elif stage in profile.stage_time:
        job.time_minutes = min(limit, parse_time_limit(profile.stage_time[stage], profile.source, "stage_time"))
    return job


def stage_argv(stage: str, run_dir: Path, job: StageJob) -> list[str]:
    command = ["nanoforge", *STAGE_COMMANDS[stage], "--run-dir", str(run_dir)]
    # nanoforge.cluster.launch: torchrun that keeps the workers' exit code and hands USR1 to each worker once
    # it can take it (and the same for one plain process with --single).
    launcher = ["python", "-m", "nanoforge.cluster.launch"]
    if stage not in DISTRIBUTED_STAGES:
        return launcher + ["--single", "--", *command]
    if job.nodes == 1:
        launcher += ["--standalone", "--nproc_per_node=${GPUS}"]
    else:
        launcher += ["--nnodes=${SLURM_NNODES}", "--nproc_per_node=${GPUS}", "--rdzv-backend=c10d",
                     f"--rdzv-endpoint=${{HEAD_NODE}}:{RENDEZVOUS_PORT}", "--rdzv-id=${SLURM_JOB_ID}"]
    return launcher + ["-m", *command]


def container_line(profile: Profile, argv: list[str], gpus: bool, extra_env: dict[str, str]) -> list[str]:
    from nanoforge.cluster.runtime import ContainerSettings

    c = profile.container
    settings = ContainerSettings(runtime=c.runtime, image=c.image, binds=[profile.scratch, *c.binds], nv=c.nv,
                                 dev_source=c.dev_source or None)
    env = {name: f"${{{name}:-}}" for name in JOB_VARIABLES}
    env.update({name: f"${{{name}}}" for name in extra_env})
    return settings.exec_command(argv, env, nv=c.nv and gpus)


def shell_word(word: str) -> str:
    """Quote for bash, leaving ${NAME} / ${NAME:-} references to be expanded when the job runs."""
    if "${" not in word:
        return shlex.quote(word)
    return '"' + re.sub(r'(["\\`])', r"\\\1", word) + '"'


def shell_line(argv: list[str]) -> str:
    return " ".join(shell_word(w) for w in argv)


def job_environment(profile: Profile, run_name: str) -> dict[str, str]:
    env = {
        "NANOFORGE_HOME": profile.scratch,  # data dir = <scratch>/data
        "NANOFORGE_RUN_NAME": run_name,
        "PYTHONUNBUFFERED": "1",  # log lines reach logs/ as they happen
        # Compute nodes have no internet: libraries must not try (preflight already checked every asset).
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    env.update(profile.env)
    return env


def render_script(profile: Profile, cfg: RunConfig, run_name: str, run_dir: Path, job: StageJob,
                  preflight: bool = True) -> str:
    stage = job.stage
    log = run_dir / "logs" / "%x-%j.out"
    lines = ["#!/bin/bash", f"#SBATCH --job-name=nf-{run_name}-{stage}", f"#SBATCH --partition={job.partition}"]
    if profile.account:
        lines.append(f"#SBATCH --account={profile.account}")
    part = profile.partition_for(stage)
    lines += [f"#SBATCH --nodes={job.nodes}", "#SBATCH --ntasks-per-node=1",
              f"#SBATCH --cpus-per-task={part.cpus_per_node}", f"#SBATCH --mem={part.mem}"]
    if job.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{job.gpus_per_node}")
    lines += [
        f"#SBATCH --time={format_minutes(job.time_minutes)}",
        f"#SBATCH --output={log}",
        f"#SBATCH --error={log}",
        "#SBATCH --open-mode=append",  # a requeued job keeps its id: its restarts go on in the same log
        f"#SBATCH --signal=B:USR1@{profile.signal_seconds}",
        "#SBATCH --requeue",
    ]
    if profile.mail_user:
        lines += [f"#SBATCH --mail-type={profile.mail_type}", f"#SBATCH --mail-user={profile.mail_user}"]
    if job.estimate_hours is not None:
        gpu = profile.partition_for(stage).gpu_type or cfg.hardware.gpu
        lines.append(f"# estimate: {job.estimate_hours:.2f} h on {job.nodes}x{job.gpus_per_node} {gpu} at "
                     f"{cfg.hardware.assumed_mfu:.0%} MFU; {job.segments} segment(s)")
    lines += [f"# nanoforge stage '{stage}' of run '{run_name}' (profile {profile.name}), rendered by "
              "`nanoforge submit` (print it with --dry-run).", "set -euo pipefail", ""]
    lines += [f"module load {shlex.quote(m)}" for m in profile.modules]
    env = job_environment(profile, run_name)
    if profile.container.runtime == "none" and profile.venv:
        lines.append(f"export PATH={shlex.quote(profile.venv + '/bin')}:\"$PATH\"")
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    if profile.container.runtime != "none":
        # --cleanenv keeps only the runtime's pass-through set (SLURM_, NCCL_, NANOFORGE_, ...); the rest of ours
        # (unbuffered output, offline hubs) goes in through the runtime's own prefix.
        from nanoforge.cluster.runtime import passthrough_env

        prefix = "APPTAINERENV_" if profile.container.runtime == "apptainer" else "SINGULARITYENV_"
        passed = passthrough_env(env)
        lines += [f"export {prefix}{name}={shlex.quote(value)}" for name, value in env.items() if name not in passed]
        # provenance.json records the image's digest (`nanoforge container build` writes <sif>.sha256 next to it).
        digest_file = shlex.quote(profile.container.image + ".sha256")
        lines.append(f"export {prefix}NANOFORGE_IMAGE_SHA256=\"$(cut -d' ' -f1 {digest_file} 2>/dev/null || true)\"")
    lines += [
        "",
        f"RUN_DIR={shlex.quote(str(run_dir))}",
        f"STAGE={stage}",
        f"GPUS={job.gpus_per_node}",
        f"MAX_REQUEUES={job.max_requeues}",
        "RESTARTS=${SLURM_RESTART_COUNT:-0}",
        'echo "[nanoforge] stage $STAGE, job $SLURM_JOB_ID, restart $RESTARTS of at most $MAX_REQUEUES, '
        'on $(hostname), $(date -u +%FT%TZ)"',
        "",
    ]
    if job.nodes > 1:
        lines += ["# c10d rendezvous at the job's first node.",
                  'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)', ""]
    gpus = job.gpus_per_node > 0
    if preflight:
        check = ["nanoforge", "preflight", "--run-dir", str(run_dir), "--stage", stage]
        lines += ["# Every asset the stage reads, loaded offline; exit 3 with the list of what is missing.",
                  shell_line(container_line(profile, check, gpus=False, extra_env=env)), ""]
    launch = container_line(profile, stage_argv(stage, run_dir, job), gpus=gpus, extra_env=env)
    if job.nodes > 1:
        # srun does not inherit sbatch's --cpus-per-task (SLURM >= 22.05): without it each task gets one CPU.
        launch = ["srun", "--ntasks-per-node=1", f"--cpus-per-task={part.cpus_per_node}", "--kill-on-bad-exit=1",
                  *launch]
    lines += [
        "# The stage runs in the background so this shell can take SLURM's USR1 and pass it on: the stage",
        "# writes a checkpoint and exits 75, and the job requeues itself.",
        "STAGE_PID=",
        "forward_stop() {",
        '    echo "[nanoforge] USR1 before the time limit: asking $STAGE to checkpoint and stop"',
        '    if [ -n "$STAGE_PID" ]; then kill -USR1 "$STAGE_PID" 2>/dev/null || true; fi',
        "}",
        "trap forward_stop USR1",
        shell_line(launch) + " &",
        "STAGE_PID=$!",
        "# A trapped signal interrupts `wait`; wait again until the stage has really exited, then take its code.",
        'while kill -0 "$STAGE_PID" 2>/dev/null; do wait "$STAGE_PID" || true; done',
        'CODE=0; wait "$STAGE_PID" || CODE=$?',
        "",
        'if [ "$CODE" -eq 75 ]; then',
        '    if [ "$RESTARTS" -lt "$MAX_REQUEUES" ]; then',
        '        echo "[nanoforge] $STAGE saved a checkpoint (exit 75): requeueing job $SLURM_JOB_ID"',
        '        scontrol requeue "$SLURM_JOB_ID"',
        "        exit 0",
        "    fi",
        '    echo "[nanoforge] $STAGE saved a checkpoint but the job was requeued $RESTARTS times already '
        '(limit $MAX_REQUEUES): submit the run again to go on"',
        "fi",
        'echo "[nanoforge] $STAGE exited with $CODE at $(date -u +%FT%TZ)"',
        'exit "$CODE"',
        "",
    ]
    return "\n".join(lines)


def plan_jobs(profile: Profile, cfg: RunConfig, run_name: str, run_dir: Path, stages: list[str], nodes: int,
              preflight: bool = True) -> tuple[list[StageJob], list[str]]:
    """(jobs to submit, stages skipped because they are DONE). Once one stage is queued, every later one is
    queued too: eval and report must see the new checkpoints (a finished training stage skips itself anyway)."""
    if nodes < 1:
        raise UserError(f"--nodes must be at least 1, got {nodes}")
    jobs, skipped = [], []
    for stage in stages:
        if not jobs and done_marker(run_dir, stage).exists():
            skipped.append(stage)
            continue
        job = plan_time(profile, cfg, stage, nodes)
        job.script = render_script(profile, cfg, run_name, run_dir, job, preflight=preflight)
        jobs.append(job)
    return jobs, skipped


# --- submitting ------------------------------------------------------------------------------------------------


def _slurm(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"'{argv[0]}' is not on PATH: run this on the cluster's login node "
                        f"(or `fab submit-run` from elsewhere)") from None
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"{' '.join(argv[:2])} failed: {message[-1] if message else result.returncode}")
    return result


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def submit_chain(profile: Profile, run_name: str, run_dir: Path, jobs: list[StageJob], skipped: list[str]) -> dict:
    """sbatch each script with afterok on the previous one; job ids go to slurm_jobs.json and provenance.json."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder
    scripts = run_dir / "slurm"
    scripts.mkdir(exist_ok=True)
    record_path = run_dir / JOBS_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else {"run": run_name, "submissions": []}
    submission = {"submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "profile": profile.name,
                  "skipped": skipped, "jobs": {}}
    record["submissions"].append(submission)  # filled in below, rewritten after every sbatch
    previous = None
    for job in jobs:
        path = scripts / f"{job.stage}.sbatch"
        path.write_text(job.script)
        argv = ["sbatch", "--parsable"]
        if previous:
            argv.append(f"--dependency=afterok:{previous}")
        job_id = _slurm(argv + [str(path)]).stdout.strip().split(";")[0]
        submission["jobs"][job.stage] = {
            "job_id": job_id, "script": str(path),
            "log": str(run_dir / "logs" / f"nf-{run_name}-{job.stage}-{job_id}.out"),
            "time_limit": format_minutes(job.time_minutes), "max_requeues": job.max_requeues,
        }
        previous = job_id
        # Written after every sbatch: if a later one fails, the ids already queued are on record for `runs cancel`.
        record["stages"] = {**record.get("stages", {}), job.stage: submission["jobs"][job.stage]}
        write_json_atomic(record_path, record)
    _record_provenance(run_dir, {s: j["job_id"] for s, j in submission["jobs"].items()})
    return submission


def _record_provenance(run_dir: Path, job_ids: dict[str, str]) -> None:
    path = run_dir / "provenance.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("slurm_jobs", {}).update(job_ids)
    write_json_atomic(path, data)


def read_jobs(run_dir: Path) -> dict:
    path = run_dir / JOBS_FILE
    if not path.exists():
        raise UserError(f"{run_dir} has no {JOBS_FILE}: this run was never submitted (nanoforge submit)")
    return json.loads(path.read_text())


# --- what the scheduler says -----------------------------------------------------------------------------------


@dataclass
class JobState:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ... or UNKNOWN
    exit_code: int | None = None
    elapsed: str = ""
    reason: str = ""
    restarts: int = 0
    log: str = ""


def parse_scontrol_fields(text: str) -> dict[str, str]:
    """`scontrol show job -o` output as a dict (the first value wins for repeated keys)."""
    fields = {}
    for token in text.split():
        if "=" in token:
            key, value = token.split("=", 1)
            fields.setdefault(key, value)
    return fields


def job_state(job_id: str) -> JobState:
    """scontrol while the controller remembers the job (MinJobAge after it ends), then sacct if there is
    accounting; UNKNOWN when neither knows it."""
    result = _slurm(["scontrol", "show", "job", "-o", job_id], check=False)
    if result.returncode == 0 and result.stdout.strip():
        f = parse_scontrol_fields(result.stdout)
        code = f.get("ExitCode", "")
        return JobState(
            job_id=job_id, state=f.get("JobState", "UNKNOWN"),
            exit_code=int(code.split(":")[0]) if code[:1].isdigit() else None,
            elapsed=f.get("RunTime", ""), reason=f.get("Reason", ""),
            restarts=int(f.get("Restarts", "0") or 0), log=f.get("StdOut", ""),
        )
    try:
        result = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Elapsed"],
                                capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        result = None
    if result is not None and result.returncode == 0 and result.stdout.strip():
        state, code, elapsed = result.stdout.strip().splitlines()[-1].split("|")[:3]
        return JobState(job_id, state.split()[0], int(code.split(":")[0]) if code[:1].isdigit() else None, elapsed)
    return JobState(job_id, "UNKNOWN")


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _slurm(["scancel", *job_ids])


def wait_for(job_id: str, timeout: float, poll: float = 1.0) -> JobState:
    """Poll until the job has left the queue (sbatch --wait backs off and can answer 30 s late)."""
    deadline = time.monotonic() + timeout
    while True:
        state = job_state(job_id)
        if state.state not in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                               "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT"):
            return state
        if time.monotonic() > deadline:
            return state
        time.sleep(poll)


def print_warnings(jobs: list[StageJob]) -> None:
    for job in jobs:
        for warning in job.warnings:
            print(f"nanoforge: warning: {warning}", file=sys.stderr)
