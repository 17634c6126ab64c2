"""CORE: the DCLM eval bundle scored the way base models are compared (few-shot, no generation).

Three kinds of task, each item scored by one forward pass over all its candidate sequences:
- multiple_choice: the query followed by each choice; the choice whose tokens have the lowest mean loss wins.
- schema: each context option followed by one shared continuation; the context under which the continuation
  has the lowest mean loss wins.
- language_modeling: the context followed by the expected continuation; correct when greedy prediction
  reproduces every continuation token exactly.

Accuracy is centered by the task's random baseline, (acc - b) / (1 - b), so chance scores 0 and perfect 1;
CORE is the mean centered accuracy over the tasks that are present. With fewer than all 22 tasks present the
number is not comparable with published CORE scores, and the result says so.

Bundle layout: <bundle>/core.yaml (icl_tasks: label, dataset_uri, num_fewshot, icl_task_type,
continuation_delimiter), <bundle>/eval_data/<dataset_uri> (JSON lines), <bundle>/eval_meta_data.csv (random
baselines in percent, by label).
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from nanoforge.errors import UserError
from nanoforge.train.distributed import Dist, all_reduce_sum

FULL_CORE_TASKS = 22
TASK_KINDS = ("multiple_choice", "schema", "language_modeling")
FEWSHOT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class CoreTask:
    label: str
    kind: str
    dataset: Path
    num_fewshot: int
    delimiter: str
    random_baseline: float  # a fraction: 0.25 for four choices


@dataclass
class Rendered:
    """One item ready to score: a token sequence per candidate, and where each candidate's scored span lies."""

    sequences: list[list[int]]
    starts: list[int]  # first scored token
    ends: list[int]  # one past the last scored token
    gold: int


def autocast_for(device: torch.device):
    """bf16 autocast on Ampere+ GPUs (as in training), plain fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------- bundle


def _random_baselines(bundle: Path) -> dict[str, float]:
    path = bundle / "eval_meta_data.csv"
    if not path.exists():
        raise UserError(f"{path} is missing (it holds each task's random baseline); re-stage the eval bundle")
    with open(path, newline="", encoding="utf-8") as f:
        return {row["Eval Task"].strip(): float(row["Random baseline"]) / 100.0 for row in csv.DictReader(f)}


def load_bundle(bundle: Path) -> tuple[list[CoreTask], list[str]]:
    """(tasks whose data file is present, labels of tasks whose data file is missing)."""
    import yaml

    bundle = Path(bundle)
    spec_path = bundle / "core.yaml"
    if not spec_path.exists():
        raise UserError(f"no eval bundle at {bundle} (core.yaml missing); stage it with: nanoforge stage")
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        entries = spec["icl_tasks"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise UserError(f"{spec_path} is not a valid CORE task list ({exc}); re-stage the eval bundle") from None
    baselines = _random_baselines(bundle)
    present, missing = [], []
    for entry in entries:
        label, kind = entry.get("label"), entry.get("icl_task_type")
        if kind not in TASK_KINDS:
            raise UserError(f"{spec_path}: task '{label}' has unknown icl_task_type '{kind}'")
        if label not in baselines:
            raise UserError(f"{bundle / 'eval_meta_data.csv'} has no random baseline for task '{label}'")
        dataset = bundle / "eval_data" / entry["dataset_uri"]
        if not dataset.exists():
            missing.append(label)
            continue
        shots = entry.get("num_fewshot", [0])
        present.append(CoreTask(
            label=label,
            kind=kind,
            dataset=dataset,
            num_fewshot=int(shots[0] if isinstance(shots, list) else shots),
            delimiter=entry.get("continuation_delimiter", " "),
            random_baseline=baselines[label],
        ))
    return present, missing


REQUIRED_FIELDS = {
    "multiple_choice": {"query": str, "choices": list, "gold": int},
    "schema": {"context_options": list, "continuation": str, "gold": int},
    "language_modeling": {"context": str, "continuation": str},
}


def load_items(task: CoreTask) -> list[dict]:
    items = []
    with open(task.dataset, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{task.dataset}:{n}: not valid JSON ({exc.msg}); re-stage the eval bundle") from None
            for name, kind in REQUIRED_FIELDS[task.kind].items():
                if not isinstance(item.get(name) if isinstance(item, dict) else None, kind):
                    raise UserError(f"{task.dataset}:{n}: a {task.kind} item needs '{name}' "
                                    f"({kind.__name__}); re-stage the eval bundle")
            options = item.get("choices") or item.get("context_options")
            if options is not None and not (options and 0 <= item["gold"] < len(options)):
                raise UserError(f"{task.dataset}:{n}: 'gold' is not the index of one of the options")
            items.append(item)
    return items


# ------------------------------------------------------------------------------------------------ prompts


def fewshot_indices(num_items: int, index: int, shots: int, seed: int, label: str) -> list[int]:
    """`shots` other items of the same task, the same every time for the same (task, item, seed)."""
    shots = min(shots, num_items - 1)
    if shots <= 0:
        return []
    rng = random.Random(f"{label}/{seed}/{index}")  # str seeds hash stably across processes
    drawn = rng.sample(range(num_items), shots + 1)
    return [i for i in drawn if i != index][:shots]


def _example_text(task: CoreTask, item: dict) -> str:
    """A solved example as it appears in the few-shot prefix."""
    if task.kind == "multiple_choice":
        return f"{item['query']}{task.delimiter}{item['choices'][item['gold']]}"
    if task.kind == "schema":
        return f"{item['context_options'][item['gold']]}{task.delimiter}{item['continuation']}"
    return f"{item['context'].strip()}{task.delimiter}{item['continuation'].strip()}"


def render_texts(task: CoreTask, item: dict, examples: list[dict]) -> list[tuple[str, str]]:
    """(text before the scored part, scored part) per candidate, few-shot examples first."""
    prefix = "".join(_example_text(task, ex) + FEWSHOT_SEPARATOR for ex in examples)
    if task.kind == "multiple_choice":
        return [(f"{prefix}{item['query']}{task.delimiter}", choice) for choice in item["choices"]]
    if task.kind == "schema":
        return [(f"{prefix}{ctx}{task.delimiter}", item["continuation"]) for ctx in item["context_options"]]
    return [(f"{prefix}{item['context'].strip()}{task.delimiter}", item["continuation"].strip())]


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def render_item(task: CoreTask, item: dict, examples: list[dict], tok, max_len: int) -> Rendered:
    """Token sequences (BOS first) and scored spans. Spans come from comparing token sequences rather than
    tokenizing the parts separately, because BPE merges across the boundary (" Paris" is one token)."""
    texts = render_texts(task, item, examples)
    bos = tok.bos_id
    if task.kind == "multiple_choice":
        seqs = [[bos] + tok.encode(a + b) for a, b in texts]
        shared = _common_prefix(seqs) if len(seqs) > 1 else len([bos] + tok.encode(texts[0][0]))
        starts, ends = [min(shared, len(s) - 1) for s in seqs], [len(s) for s in seqs]
    elif task.kind == "schema":
        seqs = [[bos] + tok.encode(a + b) for a, b in texts]
        shared = _common_prefix([s[::-1] for s in seqs])  # the continuation is the common suffix
        starts = [max(1, len(s) - shared) for s in seqs]
        ends = [len(s) for s in seqs]
    else:
        (context, continuation), = texts
        full = [bos] + tok.encode(context + continuation)
        start = _common_prefix([full, [bos] + tok.encode(context)])
        seqs, starts, ends = [full], [min(start, len(full) - 1)], [len(full)]
    # Crop from the left: the scored end and the nearest context matter most. Every candidate loses the same
    # number of tokens, so their shared beginning stays shared (scored once, see candidate_predictions), unless
    # that would cut into a candidate's scored tokens.
    crop = max(0, max(len(seq) for seq in seqs) - max_len)
    for i, seq in enumerate(seqs):
        cut = max(min(crop, starts[i] - 1), len(seq) - max_len)
        if cut > 0:
            seqs[i] = seq[cut:]
            starts[i], ends[i] = max(1, starts[i] - cut), ends[i] - cut
    gold = item.get("gold", 0)
    return Rendered(seqs, starts, ends, gold)


# ------------------------------------------------------------------------------------------------ scoring


MIN_SHARED_PREFIX = 16  # below this, one plain batched forward is as cheap as prefilling a cache


@torch.no_grad()
def candidate_predictions(model, rendered: Rendered, device: torch.device, share_prefix: bool = True
                          ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each candidate: (logits predicting its scored tokens, those tokens). The candidates of an item usually
    share a long beginning (the few-shot examples and the query); with share_prefix it runs through the model
    once and its KV cache serves every candidate, which only adds its own tail."""
    seqs = rendered.sequences
    shared = 0
    if share_prefix and len(seqs) > 1:
        shared = min(_common_prefix(seqs), min(rendered.starts) - 1)
    offset = shared if shared >= MIN_SHARED_PREFIX else 0
    tails = [s[offset:] for s in seqs]
    width = max(len(t) for t in tails)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, t in enumerate(tails):
        ids[i, :len(t)] = torch.tensor(t)  # right padding: a causal model never looks at it
    ids = ids.to(device)
    with autocast_for(device):
        if offset:
            from nanoforge.model.kv_cache import KVCache

            prefill = KVCache.for_model(model, 1, offset)
            model(torch.tensor([seqs[0][:offset]], device=device), kv_cache=prefill)
            cache = KVCache.for_model(model, len(seqs), offset + width)
            cache.k[:, :, :, :offset] = prefill.k
            cache.v[:, :, :, :offset] = prefill.v
            cache.position = offset
            logits = model(ids, kv_cache=cache)
        else:
            logits = model(ids)
    logits = logits.float()  # row j predicts the token at position offset + j + 1
    out = []
    for i, (seq, start, end) in enumerate(zip(seqs, rendered.starts, rendered.ends)):
        targets = torch.tensor(seq[start:end], device=logits.device)
        out.append((logits[i, start - 1 - offset:end - 1 - offset], targets))
    return out


def score_item(model, task: CoreTask, rendered: Rendered, device: torch.device, share_prefix: bool = True) -> bool:
    predictions = candidate_predictions(model, rendered, device, share_prefix)
    if task.kind == "language_modeling":
        logits, targets = predictions[0]
        return bool(torch.equal(logits.argmax(dim=-1), targets))
    means = [float(F.cross_entropy(logits, targets)) for logits, targets in predictions]
    return min(range(len(means)), key=means.__getitem__) == rendered.gold


def centered(accuracy: float, random_baseline: float) -> float:
    return (accuracy - random_baseline) / (1.0 - random_baseline)


def selected_indices(num_items: int, max_items: int | None, seed: int) -> list[int]:
    """All items, or a fixed random subset (files are often sorted by category, so the first N would be biased)."""
    indices = list(range(num_items))
    if max_items is not None and max_items < num_items:
        random.Random(seed).shuffle(indices)
        indices = sorted(indices[:max_items])
    return indices


def evaluate_task(model, tok, task: CoreTask, dist: Dist, max_len: int, max_items: int | None = None,
                  seed: int = 1234, progress: Callable[[int], None] | None = None, share_prefix: bool = True
                  ) -> dict:
    """Accuracy on one task; rank r scores items r::world, counts are summed across ranks."""
    items = load_items(task)
    chosen = selected_indices(len(items), max_items, seed)
    counts = torch.zeros(2, dtype=torch.float64, device=dist.device)  # correct, scored
    for index in chosen[dist.rank::dist.world_size]:
        examples = [items[j] for j in fewshot_indices(len(items), index, task.num_fewshot, seed, task.label)]
        rendered = render_item(task, items[index], examples, tok, max_len)
        counts[0] += float(score_item(model, task, rendered, dist.device, share_prefix))
        counts[1] += 1
        if progress:
            progress(1)
    all_reduce_sum(dist, counts)
    accuracy = float(counts[0] / counts[1]) if counts[1] else float("nan")
    return {
        "accuracy": accuracy,
        "centered": centered(accuracy, task.random_baseline),
        "items": int(counts[1]),
        "items_available": len(items),
        "random_baseline": task.random_baseline,
        "kind": task.kind,
        "shots": task.num_fewshot,
    }


def evaluate_core(model, tok, bundle: Path, dist: Dist, max_len: int, max_items: int | None = None,
                  tasks: list[str] | None = None, seed: int = 1234, show_progress: bool = True,
                  share_prefix: bool = True) -> dict:
    """CORE over the tasks of the bundle that are present (optionally only `tasks`). share_prefix=False scores
    every candidate in full, for models without a KV cache."""
    present, missing = load_bundle(bundle)
    if tasks:
        unknown = sorted(set(tasks) - {t.label for t in present} - set(missing))
        present = [t for t in present if t.label in tasks]
        missing = [m for m in missing if m in tasks]
        if unknown and not present and not missing:
            raise UserError(f"no CORE task named {', '.join(unknown)} in {bundle / 'core.yaml'}")
    was_training = model.training
    model.eval()
    results: dict[str, dict] = {}
    bar = None
    if show_progress and dist.is_main:
        from tqdm import tqdm

        total = sum(len(selected_indices(_count_lines(t.dataset), max_items, seed)) for t in present)
        bar = tqdm(total=total, desc="CORE", unit="item", mininterval=2.0)
    try:
        for task in present:
            if bar:
                bar.set_postfix_str(task.label)
            # each rank reports its own items; the bar shows rank 0's share scaled to the whole
            step = (lambda n: bar.update(n * dist.world_size)) if bar else None
            results[task.label] = evaluate_task(model, tok, task, dist, max_len, max_items, seed, step, share_prefix)
    finally:
        if bar:
            bar.close()
        model.train(was_training)
    scores = [r["centered"] for r in results.values()]
    core = sum(scores) / len(scores) if scores else float("nan")
    total_tasks = len(present) + len(missing)
    complete = not missing and total_tasks >= FULL_CORE_TASKS
    note = "" if complete else (
        f"CORE over {len(present)} of {FULL_CORE_TASKS} tasks"
        + (f" (missing: {', '.join(missing)})" if missing else "")
        + "; not comparable with the full 22-task CORE")
    return {
        "core": core,
        "tasks": results,
        "present": [t.label for t in present],
        "missing": missing,
        "comparable_with_full_core": complete,
        "note": note,
        "max_items_per_task": max_items,
        "seed": seed,
    }


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())
