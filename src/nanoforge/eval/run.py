"""`nanoforge eval`: measure each trained stage of a run and write <run_dir>/eval/<stage>.json.

base: validation bits per byte and CORE (when an eval bundle is available).
mid, sft: the chat evaluations (ARC-E/C, MMLU, GSM8K, HumanEval) and ChatCORE, for the datasets that are staged;
a dataset that is not staged (the offline demo has none) is reported as such, never an error.

Every rank evaluates its share of the items and the counts are summed, so the command runs the same on one CPU
and under torchrun. Rank 0 writes the results (atomically) and finally the DONE marker <run_dir>/eval/DONE.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from nanoforge.errors import UserError
from nanoforge.train import checkpoint as ckpt
from nanoforge.train.distributed import Dist, barrier

STAGES = ("base", "mid", "sft")
DEMO_ITEM_CAP = 20  # per task, demo preset on a CPU: ~0.035 CPU-s per CORE item at demo size (one thread)


@dataclass
class EvalOptions:
    max_items: int | None = None
    tasks: list[str] | None = None  # None: everything available
    eval_bundle: Path | None = None
    seed: int = 1234

    def wants(self, name: str) -> bool:
        return self.tasks is None or name in self.tasks


def eval_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "eval"


def _finite(value):
    """NaN (nothing measured) becomes null, so every reader can parse the file as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def stages_to_evaluate(run_dir: Path, requested: str) -> list[str]:
    trained = [s for s in STAGES if ckpt.latest_valid(run_dir, s, log=lambda *a, **k: None)]
    if requested == "all":
        if not trained:
            raise UserError(f"no trained stage in {run_dir}; run: nanoforge pipeline --preset demo --run-dir {run_dir}")
        return trained
    if requested not in trained:
        raise UserError(f"stage '{requested}' has no valid checkpoint in {run_dir}; run: nanoforge {requested} "
                        f"--run-dir {run_dir}")
    return [requested]


BUNDLE_ENV = "NANOFORGE_EVAL_BUNDLE"


def bundle_path(cfg, options: EvalOptions) -> Path:
    """--eval-bundle, else $NANOFORGE_EVAL_BUNDLE (lets `nanoforge pipeline` runs use a local copy), else the
    staged <data_dir>/eval_bundle."""
    if options.eval_bundle:
        return Path(options.eval_bundle)
    if os.environ.get(BUNDLE_ENV):
        return Path(os.environ[BUNDLE_ENV])
    return cfg.data_dir() / "eval_bundle"


def known_task_names(cfg, options: EvalOptions) -> set[str]:
    from nanoforge.eval.chat_tasks import CHAT_TASKS

    names = {"bpb", *CHAT_TASKS}
    bundle = bundle_path(cfg, options)
    if (bundle / "core.yaml").exists():
        from nanoforge.eval.core import load_bundle

        present, missing = load_bundle(bundle)
        names |= {t.label for t in present} | set(missing)
    return names


# ------------------------------------------------------------------------------------------------ stages


def evaluate_base(model, tok, cfg, d: Dist, options: EvalOptions) -> dict:
    out: dict = {}
    if options.wants("bpb"):
        out["val_bpb"] = validation_bpb(model, tok, cfg, d)
    bundle = bundle_path(cfg, options)
    core_tasks = [t for t in (options.tasks or []) if t not in {"bpb"}]
    if options.tasks is not None and not core_tasks:
        return out
    if not (bundle / "core.yaml").exists():
        out["core_note"] = (f"CORE not measured: no eval bundle at {bundle} (stage it with: nanoforge stage, or "
                            f"point --eval-bundle or ${BUNDLE_ENV} at a copy)")
        return out
    from nanoforge.eval.core import evaluate_core, load_bundle

    present, missing = load_bundle(bundle)
    labels = {t.label for t in present} | set(missing)
    selected = None if options.tasks is None else [t for t in core_tasks if t in labels]
    if selected == []:
        return out
    out["core"] = evaluate_core(model, tok, bundle, d, cfg.model.sequence_len, options.max_items, selected,
                                options.seed)
    return out


def validation_bpb(model, tok, cfg, d: Dist) -> float | None:
    from nanoforge.data.loader import PackedBatches
    from nanoforge.data.shards import list_shards
    from nanoforge.eval.bpb import bits_per_byte
    from nanoforge.eval.core import autocast_for

    try:
        _, val_path = list_shards(cfg.data_dir() / "corpora" / cfg.data.corpus)
    except UserError:
        return None  # the corpus is not on this machine; reported as not measured
    batch, seq = cfg.train.device_batch_size, cfg.model.sequence_len
    steps = max(1, cfg.train.eval_tokens // (batch * seq * d.world_size))
    val = PackedBatches([val_path], tok, batch, seq, d.rank, 1, d.world_size, d.device, loop=False,
                        threads=cfg.data.tokenizer_threads)
    ctx = SimpleNamespace(dist=d, autocast=lambda: autocast_for(d.device))  # what bits_per_byte reads
    try:
        return bits_per_byte(ctx, model, val, steps, torch.as_tensor(tok.token_bytes, dtype=torch.int64))
    finally:
        val.close()


def staged(cfg, name: str) -> bool:
    from nanoforge.data.chat_tasks import DOWNLOADED
    from nanoforge.data.manifest import chat_split_files

    task = DOWNLOADED[name]
    return all(p.is_file() for p in chat_split_files(cfg.data_dir(), task.dataset, task.splits["test"]))


def evaluate_chat(model, tok, cfg, d: Dist, options: EvalOptions, show_progress: bool = True) -> dict:
    from nanoforge.data.chat_tasks import load_task
    from nanoforge.eval.chat_tasks import CHAT_TASKS, GENERATIVE_TASKS, chatcore, engine_generator, evaluate_chat_task

    results, not_staged = {}, []
    generate = None
    for name in CHAT_TASKS:
        if not options.wants(name):
            continue
        if not staged(cfg, name):
            not_staged.append(name)
            continue
        items = load_task(name, "test", cfg)
        if name in GENERATIVE_TASKS and generate is None:
            generate = engine_generator(model, tok, d.device)
        bar = _progress(name, items, options, d) if show_progress else None
        try:
            results[name] = evaluate_chat_task(name, items, model, tok, d, cfg.model.sequence_len, generate,
                                               options.max_items, options.seed,
                                               (lambda n: bar.update(n * d.world_size)) if bar else None)
        finally:
            if bar:
                bar.close()
    out = {"tasks": results, "not_staged": not_staged, **chatcore(results)}
    if not_staged:
        out["not_staged_note"] = (f"not staged (not measured): {', '.join(not_staged)}; "
                                  "stage them with: nanoforge stage")
    return out


def _progress(name: str, items, options: EvalOptions, d: Dist):
    if not d.is_main:
        return None
    from tqdm import tqdm

    total = len(items) if options.max_items is None else min(len(items), options.max_items)
    return tqdm(total=total, desc=name, unit="item", mininterval=2.0)


# ------------------------------------------------------------------------------------------------ command


def run_eval(run_dir: Path, stage: str, options: EvalOptions, force: bool = False) -> int:
    from nanoforge.model.load import load_model, load_tokenizer
    from nanoforge.train.distributed import init_distributed, shutdown

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    stages = stages_to_evaluate(run_dir, stage)
    done_path = eval_dir(run_dir) / "DONE"
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    if not force and stages and all(s in done.get("stages", []) for s in stages):
        print(f"eval already done for {', '.join(stages)} ({done_path}); --force re-runs it")
        return 0
    tok = load_tokenizer(run_dir)
    d = init_distributed()
    try:
        for name in stages:
            started = time.time()
            model, cfg, meta = load_model(run_dir, name, device=d.device)
            if options.max_items is None and cfg.preset == "demo" and d.device.type == "cpu":
                options = EvalOptions(DEMO_ITEM_CAP, options.tasks, options.eval_bundle, options.seed)
            if options.tasks is not None:
                unknown = sorted(set(options.tasks) - known_task_names(cfg, options))
                if unknown:
                    raise UserError(f"unknown evaluation task(s): {', '.join(unknown)}; known: "
                                    f"{', '.join(sorted(known_task_names(cfg, options)))}")
            if d.is_main:
                print(f"evaluating {name} ({meta['path']})", flush=True)
            if name == "base":
                results = evaluate_base(model, tok, cfg, d, options)
            else:
                results = evaluate_chat(model, tok, cfg, d, options)
            record = {
                "stage": name,
                "checkpoint": meta["path"],
                "step": meta.get("step"),
                "world_size": d.world_size,
                "device": str(d.device),
                "max_items_per_task": options.max_items,
                "tasks_requested": options.tasks,
                "elapsed_seconds": time.time() - started,
                "finished_at": time.time(),
                **results,
            }
            if d.is_main:
                write_json_atomic(eval_dir(run_dir) / f"{name}.json", record)
                print(summary_line(record), flush=True)
            barrier(d)
            del model
        if d.is_main:
            done_stages = sorted(set(done.get("stages", [])) | set(stages), key=STAGES.index)
            write_json_atomic(done_path, {"stages": done_stages, "finished_at": time.time()})
        barrier(d)
    finally:
        shutdown(d)
    return 0


def summary_line(record: dict) -> str:
    parts = [f"eval {record['stage']}:"]
    if record.get("val_bpb") is not None:
        parts.append(f"val_bpb {record['val_bpb']:.4f}")
    if "core" in record:
        core = record["core"]
        parts.append(f"CORE {core['core']:.4f} over {len(core['present'])} tasks")
        if core["note"]:
            parts.append(f"({core['note']})")
    elif record.get("core_note"):
        parts.append(record["core_note"])
    for name, result in record.get("tasks", {}).items():
        parts.append(f"{name} {result['accuracy']:.3f}")
    if "chatcore" in record and record.get("measured"):
        parts.append(f"ChatCORE {record['chatcore']:.4f}")
    if record.get("not_staged_note"):
        parts.append(f"({record['not_staged_note']})")
    return " ".join(parts)
