"""report.md: provenance and cost first, then a summary table of the evaluations, then one section per stage."""

from __future__ import annotations

import datetime as dt
import math

import yaml

from nanoforge.report.collect import RunRecord, StageRecord

DASH = "—"
SUMMARY_ROWS = [  # (row label, stage results -> value or None)
    ("val bpb", lambda r: r.get("val_bpb")),
    ("CORE", lambda r: (r.get("core") or {}).get("core")),
    ("ARC-Easy", lambda r: _chat(r, "arc-easy")),
    ("ARC-Challenge", lambda r: _chat(r, "arc-challenge")),
    ("MMLU", lambda r: _chat(r, "mmlu")),
    ("GSM8K", lambda r: _chat(r, "gsm8k")),
    ("HumanEval", lambda r: _chat(r, "humaneval")),
    ("ChatCORE", lambda r: r.get("chatcore") if r.get("measured") else None),
]
STAGE_CONFIG_SECTIONS = {"base": ("model", "train"), "mid": ("chat.mid",), "sft": ("chat.sft",)}


def _chat(results: dict, name: str):
    task = (results.get("tasks") or {}).get(name)
    return task.get("accuracy") if task else None


def fmt_number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:.{digits}f}"


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def fmt_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _section(config: dict, dotted: str) -> dict:
    node = config
    for part in dotted.split("."):
        node = (node or {}).get(part, {})
    return node or {}


def _latest_attempt(record: RunRecord) -> dict:
    attempts = [a for s in record.stages for a in s.attempts]
    return max(attempts, key=lambda a: a.get("started_at", 0)) if attempts else {}


def header(record: RunRecord) -> list[str]:
    cfg, prov = record.config, record.provenance
    hw = cfg.get("hardware", {})
    latest = _latest_attempt(record)
    versions = latest.get("versions", {})
    software = ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "unknown (no provenance.json)"
    devices = sorted({f"{a.get('device', '?')} on {a.get('host', '?')} x{a.get('world_size', 1)}"
                      for s in record.stages for a in s.attempts})
    train_s = sum(s.elapsed_seconds for s in record.stages)
    gpu_hours = (sum(s.gpu_seconds for s in record.stages) + record.eval_gpu_seconds) / 3600
    price = float(hw.get("price_per_gpu_hour", 0.0))
    starts = [a["started_at"] for s in record.stages for a in s.attempts if "started_at" in a]
    ends = [e["time"] for s in record.stages for e in s.train + s.evals]
    ends += [s.results.get("finished_at", 0) for s in record.stages if s.results]
    image = prov.get("image_sha256") or ""
    lines = [
        f"# Run report: {record.run_dir.name}",
        "",
        f"Generated {fmt_time(dt.datetime.now(dt.timezone.utc).timestamp())} from `{record.run_dir}`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| preset | {cfg.get('preset', DASH)} |",
        f"| git SHA | `{prov.get('git_sha') or 'unknown'}` |",
        f"| container image | {('`sha256:' + image + '`') if image else 'none recorded (ran outside a container)'} |",
        f"| hardware (configured) | {hw.get('nodes', 1)} node(s) x {hw.get('gpus_per_node', DASH)} x "
        f"{hw.get('gpu', DASH)} |",
        f"| devices used | {'; '.join(devices) or DASH} |",
        f"| software | {software} |",
        f"| training time | {fmt_duration(train_s)} (sum over stages) |",
        f"| evaluation time | {fmt_duration(record.eval_seconds)} |",
        f"| device time | {gpu_hours:.3f} GPU-hours (or CPU process-hours: stage time x processes, training and "
        "evaluation) |",
        f"| cost | ${gpu_hours * price:,.2f} (at ${price:.2f} per GPU-hour, `hardware.price_per_gpu_hour`) |",
    ]
    if starts and ends:
        lines.append(f"| total wall-clock time | {fmt_duration(max(ends) - min(starts))} "
                     f"({fmt_time(min(starts))} to {fmt_time(max(ends))}, queueing and pauses included) |")
    return lines


def summary_table(record: RunRecord) -> list[str]:
    stages = record.stages
    lines = ["## Summary", ""]
    if not stages:
        return lines + ["No stage has been trained yet.", ""]
    lines += ["| metric | " + " | ".join(s.name for s in stages) + " |",
              "| --- |" + " ---: |" * len(stages)]
    for label, get in SUMMARY_ROWS:
        cells = [fmt_number(get(s.results)) if s.results else DASH for s in stages]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"{DASH}: not measured. Accuracies are fractions; CORE and ChatCORE are centered "
              "(0 = random guessing, 1 = perfect)."]
    notes = []
    for s in stages:
        r = s.results or {}
        if (r.get("core") or {}).get("note"):
            notes.append(f"{s.name}: {r['core']['note']}.")
        if r.get("core_note"):
            notes.append(f"{s.name}: {r['core_note']}.")
        if r.get("not_staged_note"):
            notes.append(f"{s.name}: {r['not_staged_note']}.")
        if r.get("max_items_per_task") and ((r.get("core") or {}).get("tasks") or r.get("tasks")):
            notes.append(f"{s.name}: at most {r['max_items_per_task']} items per task were scored.")
    if not any(s.results for s in stages):
        notes.append(f"No evaluation results yet; run: nanoforge eval --run-dir {record.run_dir}")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return lines + [""]


def stage_section(stage: StageRecord, plots: list[tuple[str, str]]) -> list[str]:
    s = stage.summary
    status = "finished" if stage.finished else f"unfinished (newest checkpoint at step {s.get('steps')})"
    jobs = sorted({a.get("slurm_job_id") for a in stage.attempts if a.get("slurm_job_id")})
    lines = [
        f"## Stage: {stage.name}",
        "",
        f"- status: {status}",
        f"- steps: {s.get('steps', DASH)}, tokens: {s.get('tokens') or 0:,}",
        f"- time: {fmt_duration(stage.elapsed_seconds)} on {stage.world_size} process(es)",
        f"- attempts: {len(stage.attempts)}" + (f" (SLURM jobs {', '.join(jobs)})" if jobs else ""),
    ]
    if stage.train:
        last = stage.train[-1]["values"]
        tps = [e["values"].get("tokens_per_second") for e in stage.train[1:]
               if e["values"].get("tokens_per_second") is not None]
        lines.append(f"- final training loss: {fmt_number(last.get('loss'))}"
                     + (f", mean throughput {sum(tps) / len(tps):,.0f} tokens/s" if tps else ""))
    if stage.skipped_metric_lines:
        lines.append(f"- metrics: skipped an incomplete last line of metrics/{stage.name}.jsonl "
                     "(the process was stopped while writing it)")
    if stage.evals:
        last_eval = stage.evals[-1]
        values = ", ".join(f"{k} {fmt_number(v)}" for k, v in last_eval["values"].items())
        lines.append(f"- last evaluation during training (step {last_eval['step']}): {values}")
    sections = {name: _section(stage.config, name) for name in STAGE_CONFIG_SECTIONS.get(stage.name, ())}
    if any(sections.values()):
        lines += ["", "Config:", "", "```yaml", yaml.safe_dump(sections, sort_keys=False).rstrip(), "```"]
    lines += results_lines(stage)
    for caption, name in plots:
        lines += ["", f"![{caption}]({name})"]
    if stage.texts:
        newest_step = stage.texts[-1]["step"]
        samples = [e for e in stage.texts if e["step"] == newest_step]
        lines += ["", f"Samples at step {newest_step}:", "", "```"]
        lines += [f"{e['name']}: {e['text']}" for e in samples]
        lines.append("```")
    return lines + [""]


def results_lines(stage: StageRecord) -> list[str]:
    r = stage.results
    if not r:
        return ["", "Not evaluated yet."]
    body: list[str] = []
    core = r.get("core")
    if core:
        body += ["", "| CORE task | kind | shots | items | accuracy | centered |",
                 "| --- | --- | ---: | ---: | ---: | ---: |"]
        for label, t in core["tasks"].items():
            body.append(f"| {label} | {t['kind']} | {t['shots']} | {t['items']} | {fmt_number(t['accuracy'])} | "
                        f"{fmt_number(t['centered'])} |")
        body.append(f"| **CORE** | | | | | **{fmt_number(core['core'])}** |")
        if core.get("missing"):
            body += ["", f"Missing from the bundle: {', '.join(core['missing'])}."]
    if r.get("tasks"):
        body += ["", "| chat task | items | accuracy | centered |", "| --- | ---: | ---: | ---: |"]
        for name, t in r["tasks"].items():
            body.append(f"| {name} | {t['items']} | {fmt_number(t['accuracy'])} | {fmt_number(t['centered'])} |")
        body.append(f"| **ChatCORE** | | | **{fmt_number(r.get('chatcore'))}** |")
    if r.get("val_bpb") is not None:
        body += ["", f"Validation bits per byte: {fmt_number(r['val_bpb'])}"]
    for key in ("core_note", "not_staged_note"):
        if r.get(key):
            body += ["", r[key] + "."]
    return ["", f"Evaluation ({fmt_duration(r.get('elapsed_seconds', 0))}, checkpoint step {r.get('step')}):"] + body


def render(record: RunRecord, plots: dict[str, list[tuple[str, str]]]) -> str:
    lines = header(record) + [""] + summary_table(record)
    for stage in record.stages:
        lines += stage_section(stage, plots.get(stage.name, []))
    lines += ["## Run config", "", "```yaml", yaml.safe_dump(record.config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
