"""`nanoforge submit` (the pipeline as an afterok chain of SLURM jobs) and `nanoforge runs status|logs|cancel`.

These run where sbatch/squeue/scontrol are: the cluster's login node (Fabric's `submit-run` and `status` call
them there) or this machine for the local test cluster. Run folders are <scratch>/runs/<run-name>.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    from nanoforge.cli import add_config_args

    submit = subparsers.add_parser(
        "submit", help="queue the run's stages as SLURM jobs chained with afterok (DONE stages are skipped)",
        description="Render one batch script per stage from the cluster profile and submit them as an afterok "
                    "chain. The run folder is <scratch>/runs/<run-name>; its config.yaml is created on first use.",
    )
    _add_run_args(submit)
    add_config_args(submit)
    submit.add_argument("--stages", help="comma-separated subset of tokenizer,base,mid,sft,eval,report (default: all "
                                         "this nanoforge has)")
    submit.add_argument("--nodes", type=int, default=1, help="nodes for the GPU stages (default 1)")
    submit.add_argument("--dry-run", action="store_true", help="print the batch scripts; write and submit nothing")
    submit.add_argument("--no-preflight", action="store_true",
                        help="leave the offline asset check out of the job scripts")
    submit.add_argument("--preflight-only", action="store_true",
                        help="check offline that every asset the submitted stages read from outside the chain is "
                             "there (exit 3 listing what is missing); submit nothing (`fab submit-run` runs this "
                             "in the container first)")
    submit.set_defaults(handler=_submit)

    runs = subparsers.add_parser("runs", help="a submitted run's jobs: status, logs, cancel")
    sub = runs.add_subparsers(dest="runs_command", metavar="<subcommand>", required=True)
    status = sub.add_parser("status", help="per stage: state, job id, elapsed time, last metrics line")
    _add_run_args(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=_status)
    logs = sub.add_parser("logs", help="the tail of a stage's job log")
    _add_run_args(logs)
    logs.add_argument("--stage", help="which stage (default: the latest one that started)")
    logs.add_argument("--lines", type=int, default=50, help="lines from the end (default 50; 0: all)")
    logs.set_defaults(handler=_logs)
    cancel = sub.add_parser("cancel", help="scancel every job of the run that has not finished")
    _add_run_args(cancel)
    cancel.set_defaults(handler=_cancel)


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", required=True, help="cluster profile: a name in deploy/clusters/ or a YAML path")
    parser.add_argument("--run-name", required=True, help="the run's name; its folder is <scratch>/runs/<name>")


def _open(args):
    from nanoforge.cluster.profile import load_profile
    from nanoforge.cluster.slurm import check_run_name

    profile = load_profile(args.profile)
    return profile, profile.run_dir(check_run_name(args.run_name))


def run_config(args, profile, run_dir: Path, nodes: int):
    """The stored config.yaml when there is one (--preset/--set may not change it), else a new one from
    --preset/--config/--set with the profile's GPU type, GPUs per node and price as defaults."""
    from nanoforge.config import load_yaml, make_config
    from nanoforge.errors import UserError

    stored = run_dir / "config.yaml"
    if stored.is_file():
        base = load_yaml(stored)
        cfg = make_config(base=base)
        if args.preset and args.preset != base.get("preset"):
            raise UserError(f"{run_dir} was created with preset '{base.get('preset')}', not '{args.preset}'; "
                            f"use another --run-name or drop --preset")
        if (args.overrides or args.config) and make_config(
                base={**base, **(load_yaml(args.config) if args.config else {})}, overrides=args.overrides) != cfg:
            raise UserError(f"{stored} already fixes this run's config and --config/--set would change it; "
                            f"edit that file or use a new --run-name")
        return cfg, False
    gpu = profile.partitions["gpu"]
    defaults = [f"hardware.gpus_per_node={gpu.gpus_per_node}", f"hardware.nodes={nodes}",
                f"hardware.price_per_gpu_hour={profile.price_per_gpu_hour}"]
    if gpu.gpu_type:
        defaults.append(f"hardware.gpu={gpu.gpu_type}")
    base = load_yaml(args.config) if args.config else None
    return make_config(args.preset, defaults + list(args.overrides), base=base), True


def _submit(args) -> int:
    from nanoforge.cluster.slurm import parse_stages, plan_jobs, print_warnings, submit_chain
    from nanoforge.config import save_config

    profile, run_dir = _open(args)
    cfg, is_new = run_config(args, profile, run_dir, args.nodes)
    stages = parse_stages(args.stages)
    jobs, skipped = plan_jobs(profile, cfg, args.run_name, run_dir, stages, args.nodes,
                              preflight=not args.no_preflight)
    print_warnings(jobs)
    if args.preflight_only:
        print(preflight_chain(cfg, run_dir, [job.stage for job in jobs]))
        return 0
    if args.dry_run:
        for number, job in enumerate(jobs, 1):
            print(f"# ===== {job.stage} (job {number} of {len(jobs)}) =====")
            print(job.script)
        if skipped:
            print(f"# skipped (DONE): {', '.join(skipped)}")
        return 0
    if not jobs:
        print(f"run {args.run_name}: every stage asked for is DONE ({', '.join(skipped)}); nothing to submit")
        return 0
    queued = live_jobs(run_dir)
    if queued:
        from nanoforge.errors import UserError

        listed = ", ".join(f"{stage} {job_id} {state}" for stage, job_id, state in queued)
        raise UserError(f"run {args.run_name} still has jobs in the queue ({listed}); two chains would train the "
                        f"same run folder: wait for them or `nanoforge runs cancel --profile {args.profile} "
                        f"--run-name {args.run_name}`")
    if is_new:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    submission = submit_chain(profile, args.run_name, run_dir, jobs, skipped)
    print(f"run {args.run_name} -> {run_dir}")
    for stage, job in submission["jobs"].items():
        print(f"  {stage:<10} job {job['job_id']:<10} time {job['time_limit']:<12} log {job['log']}")
    if skipped:
        print(f"  skipped (DONE): {', '.join(skipped)}")
    return 0


def preflight_chain(cfg, run_dir: Path, stages: list[str]) -> str:
    """Preflight for a chain of stages: what each reads, except what an earlier stage of the same chain makes
    (base reads the tokenizer that the tokenizer job will train). Raises PreflightError (exit 3) on a gap."""
    import time

    from nanoforge.data.preflight import PreflightReport, check_requirement, network_disabled, stage_requirements
    from nanoforge.errors import PreflightError

    start = time.perf_counter()
    requirements = {}
    with network_disabled():
        for position, stage in enumerate(stages):
            for req in stage_requirements(cfg, run_dir, stage):
                if req.kind == "tokenizer" and "tokenizer" in stages[:position]:
                    continue
                requirements.setdefault(str(req.path), req)
        problems = [p for p in map(check_requirement, requirements.values()) if p is not None]
    report = PreflightReport(list(requirements.values()), problems, time.perf_counter() - start)
    if not report.ok:
        raise PreflightError(report.format())
    return report.format() + f" (stages {','.join(stages) or 'none'})"


# --- status ----------------------------------------------------------------------------------------------------


def last_metrics_line(run_dir: Path, stage: str) -> str:
    """The newest training line of <run_dir>/metrics/<stage>.jsonl (MetricsSink events), compact, with the
    newest validation bits per byte when there is one."""
    path = run_dir / "metrics" / f"{stage}.jsonl"
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 262144))
        lines = handle.read().decode("utf-8", "replace").splitlines()
    train = evaluation = None
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or not isinstance(event.get("values"), dict):
            continue
        if event.get("kind") == "train" and train is None:
            train = event
        elif event.get("kind") == "eval" and evaluation is None:
            evaluation = event
        if train and evaluation:
            break
    parts = []
    if train:
        values = train["values"]
        total = values.get("total_steps")
        parts.append(f"step {train.get('step')}" + (f"/{int(total)}" if total else ""))
        for key, label, fmt in (("loss", "loss", "{:.4f}"), ("tokens_per_second", "tok/s", "{:,.0f}"),
                                ("mfu", "MFU", "{:.1%}")):
            if isinstance(values.get(key), (int, float)):
                parts.append(f"{label} {fmt.format(values[key])}")
    if evaluation and "val_bpb" in evaluation["values"]:
        parts.append(f"val_bpb {evaluation['values']['val_bpb']:.4f} (step {evaluation.get('step')})")
    return " | ".join(parts)


def log_tail(path: str | Path, lines: int) -> list[str]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    rows = text.splitlines()
    return rows if lines <= 0 else rows[-lines:]


def _log_path(run_dir: Path, run_name: str, stage: str, job_id: str, scheduler_log: str) -> str:
    # scontrol prints StdOut with %x/%j expanded on recent SLURM; fall back to our own naming otherwise.
    if scheduler_log and "%" not in scheduler_log:
        return scheduler_log
    return str(run_dir / "logs" / f"nf-{run_name}-{stage}-{job_id}.out")


def collect_status(profile, run_name: str, run_dir: Path) -> list[dict]:
    from nanoforge.cluster.slurm import PIPELINE, done_marker, job_state, read_jobs

    record = read_jobs(run_dir)
    rows = []
    for stage in PIPELINE:
        entry = record.get("stages", {}).get(stage)
        done = done_marker(run_dir, stage).exists()
        if entry is None:
            if done:
                rows.append({"stage": stage, "job_id": "", "state": "DONE", "elapsed": "", "exit_code": 0,
                             "log": "", "detail": "finished earlier (DONE marker)"})
            continue
        state = job_state(entry["job_id"])
        log = _log_path(run_dir, run_name, stage, entry["job_id"], state.log)
        row = {"stage": stage, "job_id": entry["job_id"], "state": state.state, "elapsed": state.elapsed,
               "exit_code": state.exit_code, "restarts": state.restarts, "log": log, "detail": ""}
        if state.state == "UNKNOWN" and done:
            row["state"], row["detail"] = "DONE", "the scheduler has forgotten the job; the DONE marker is there"
        elif state.state in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED"):
            row["detail"] = f"exit code {state.exit_code}, log: {log}"
        elif state.state == "PENDING":
            row["detail"] = f"waiting: {state.reason}" if state.reason else "waiting"
        else:
            tail = log_tail(log, 1)
            row["detail"] = last_metrics_line(run_dir, stage) or (tail[0][:160] if tail else "")
        rows.append(row)
    return rows


def _status(args) -> int:
    profile, run_dir = _open(args)
    rows = collect_status(profile, args.run_name, run_dir)
    if args.json:
        print(json.dumps({"run": args.run_name, "run_dir": str(run_dir), "stages": rows}, indent=2))
        return 0
    print(f"run {args.run_name} ({profile.name}) at {run_dir}")
    print(f"  {'stage':<10} {'job':<9} {'state':<12} {'elapsed':<11} detail")
    for row in rows:
        print(f"  {row['stage']:<10} {row['job_id'] or '-':<9} {row['state']:<12} {row['elapsed'] or '-':<11} "
              f"{row['detail']}")
    failed = [r for r in rows if r["state"] in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")]
    for row in failed:
        print(f"stage {row['stage']} failed with exit code {row['exit_code']}; log: {row['log']}")
    return 0


def _logs(args) -> int:
    from nanoforge.cluster.slurm import PIPELINE, read_jobs
    from nanoforge.errors import UserError

    profile, run_dir = _open(args)
    record = read_jobs(run_dir)
    stages = record.get("stages", {})
    if args.stage:
        if args.stage not in stages:
            raise UserError(f"run {args.run_name} has no job for stage '{args.stage}'; it has: {', '.join(stages)}")
        stage = args.stage
    else:
        started = [s for s in PIPELINE if s in stages and Path(_log_path(
            run_dir, args.run_name, s, stages[s]["job_id"], "")).exists()]
        if not started:
            print(f"run {args.run_name}: no job has written a log yet")
            return 0
        stage = started[-1]
    path = _log_path(run_dir, args.run_name, stage, stages[stage]["job_id"], "")
    print(f"==> {path} <==")
    for line in log_tail(path, args.lines):
        print(line)
    return 0


LIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD",
               "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT")


def live_jobs(run_dir: Path) -> list[tuple[str, str, str]]:
    """(stage, job id, state) of the run's jobs the scheduler still holds."""
    from nanoforge.cluster.slurm import JOBS_FILE, job_state, read_jobs

    if not (run_dir / JOBS_FILE).exists():
        return []
    live = []
    for stage, entry in read_jobs(run_dir).get("stages", {}).items():
        state = job_state(entry["job_id"]).state
        if state in LIVE_STATES:
            live.append((stage, entry["job_id"], state))
    return live


def _cancel(args) -> int:
    from nanoforge.cluster.slurm import cancel, read_jobs

    profile, run_dir = _open(args)
    read_jobs(run_dir)  # a clear error for a run that was never submitted
    live = [(stage, job_id) for stage, job_id, _ in live_jobs(run_dir)]
    cancel([job_id for _, job_id in live])
    if live:
        print("cancelled: " + ", ".join(f"{stage} ({job_id})" for stage, job_id in live))
    else:
        print(f"run {args.run_name}: no job left to cancel")
    return 0
