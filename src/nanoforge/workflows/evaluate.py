"""`nanoforge workflows evaluate`: how good a trained workflow model is.

- validity: the share of samples that decode and validate against the schema, constrained and unconstrained;
- bits per canonical byte on the whole validation split (nats / (ln 2 x canonical JSON bytes): comparable across
  tokenizers) and the validation loss per token;
- key fields: how close the distribution of events (keys of `on`), `runs-on` labels and used actions (`uses`
  without its @ref) in the constrained samples is to the validation documents' — total variation distance per
  field (0: identical, 1: disjoint) and the most common items side by side.

Writes <run_dir>/workflows_eval.json.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

FIELDS = ("events", "runs-on", "uses")
TOP_ITEMS = 10


def key_fields(doc) -> dict[str, list[str]]:
    """The events, runs-on labels and actions one workflow document uses (each as often as it appears)."""
    out: dict[str, list[str]] = {name: [] for name in FIELDS}
    if not isinstance(doc, dict):
        return out
    on = doc.get("on")
    if isinstance(on, str):
        out["events"].append(on)
    elif isinstance(on, list):
        out["events"].extend(e for e in on if isinstance(e, str))
    elif isinstance(on, dict):
        out["events"].extend(on)
    jobs = doc.get("jobs")
    for job in jobs.values() if isinstance(jobs, dict) else ():
        if not isinstance(job, dict):
            continue
        runs_on = job.get("runs-on")
        if isinstance(runs_on, str):
            out["runs-on"].append(runs_on)
        elif isinstance(runs_on, list):
            out["runs-on"].extend(label for label in runs_on if isinstance(label, str))
        elif isinstance(runs_on, dict):
            group, labels = runs_on.get("group"), runs_on.get("labels")
            if isinstance(group, str):
                out["runs-on"].append(f"group:{group}")
            out["runs-on"].extend([labels] if isinstance(labels, str) else
                                  [x for x in labels or () if isinstance(x, str)] if isinstance(labels, list) else [])
        uses = [job.get("uses")] + [s.get("uses") for s in job.get("steps") or () if isinstance(s, dict)]
        out["uses"].extend(u.split("@", 1)[0] for u in uses if isinstance(u, str))
    return out


def field_counts(docs) -> dict[str, Counter]:
    counts = {name: Counter() for name in FIELDS}
    for doc in docs:
        for name, items in key_fields(doc).items():
            counts[name].update(items)
    return counts


def total_variation(p: Counter, q: Counter) -> float | None:
    """0.5 x sum |p(x) - q(x)| over the normalized counts; None when either side is empty."""
    np_, nq = sum(p.values()), sum(q.values())
    if not np_ or not nq:
        return None
    return 0.5 * sum(abs(p[k] / np_ - q[k] / nq) for k in set(p) | set(q))


def compare_fields(reference: dict[str, Counter], samples: dict[str, Counter]) -> dict:
    out = {}
    for name in FIELDS:
        ref, got = reference[name], samples[name]
        nr, ns = sum(ref.values()) or 1, sum(got.values()) or 1
        top = [{"item": k, "val_share": ref[k] / nr, "sample_share": got[k] / ns}
               for k, _ in ref.most_common(TOP_ITEMS)]
        out[name] = {"tvd": total_variation(ref, got), "val_count": sum(ref.values()),
                     "sample_count": sum(got.values()), "distinct_val": len(ref), "distinct_samples": len(got),
                     "top": top, "top_samples": [[k, c / ns] for k, c in got.most_common(TOP_ITEMS)]}
    return out


def evaluate_run(run_dir, n: int = 100, temperature: float = 1.0, seed: int = 0, device: str | None = None,
                 data_dir: str | None = None, batch_size: int = 64, progress: bool = True) -> dict:
    import torch

    from nanoforge.model.load import load_model
    from nanoforge.workflows.prepare import load_windows
    from nanoforge.workflows.sample import generate, summarize
    from nanoforge.workflows.train import STAGE, load_run_tokenizer, loss_and_bits_per_byte, prepared_dir
    from nanoforge.workflows.windows import read_metadata, split_documents

    run_dir = Path(run_dir)
    tok = load_run_tokenizer(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, meta = load_model(run_dir, STAGE, device)
    if data_dir:
        cfg.data.workflows_dir = str(data_dir)
    data = prepared_dir(cfg)
    metadata = read_metadata(data)
    if metadata.get("tokenizer_hash") != tok.content_hash():
        from nanoforge.errors import UserError

        raise UserError(f"{data} was prepared with another tokenizer than {run_dir} was trained with")
    val_windows = load_windows(data, "val")
    val_docs = split_documents(val_windows, tok)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.startswith("cuda") else None
    scores = loss_and_bits_per_byte(model, val_windows, val_docs, tok.pad_id, batch_size, model.wte.weight.device,
                                    autocast=autocast)

    constrained = generate(model, tok, n, constrained=True, temperature=temperature, seed=seed,
                           batch_size=batch_size, progress=progress)
    unconstrained = generate(model, tok, n, constrained=False, temperature=temperature, seed=seed,
                             batch_size=batch_size, progress=progress)
    reference = field_counts(tok.decode_value(d.ids) for d in val_docs)
    sampled = field_counts(s.value for s in constrained if s.valid)
    result = {
        "run_dir": str(run_dir),
        "checkpoint": meta["path"],
        "step": meta.get("step"),
        "data": str(data),
        "temperature": temperature,
        "seed": seed,
        "validation": {"documents": len(val_docs), "windows": int(len(val_windows)),
                       "canonical_bytes": sum(d.canonical_bytes for d in val_docs), **scores},
        "constrained": summarize(constrained),
        "unconstrained": summarize(unconstrained),
        "key_fields": compare_fields(reference, sampled),
    }
    path = run_dir / "workflows_eval.json"
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return result


def format_report(result: dict) -> str:
    c, u, v = result["constrained"], result["unconstrained"], result["validation"]
    lines = [
        f"checkpoint: {result['checkpoint']}",
        f"validation: {v['documents']} documents, loss {v['val_loss']:.4f} nats/token, "
        f"{v['val_bpb']:.4f} bits per canonical byte",
        f"validity:   constrained {c['valid']}/{c['n']} ({100 * c['validity']:.1f}%), "
        f"unconstrained {u['valid']}/{u['n']} ({100 * u['validity']:.1f}%)"
        + (f" — invalid: {u['invalid_reasons']}" if u["invalid_reasons"] else ""),
        f"mean tokens: constrained {c['mean_tokens']:.1f}, unconstrained {u['mean_tokens']:.1f}",
        "",
        "| field | TVD (val vs constrained samples) | val items | sample items |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, f in result["key_fields"].items():
        tvd = "n/a" if f["tvd"] is None else f"{f['tvd']:.3f}"
        lines.append(f"| {name} | {tvd} | {f['val_count']} ({f['distinct_val']} distinct) | "
                     f"{f['sample_count']} ({f['distinct_samples']} distinct) |")
    for name, f in result["key_fields"].items():
        lines += ["", f"top {name}: val share / sample share"]
        lines += [f"  {t['item'][:48]:<48} {100 * t['val_share']:5.1f}% {100 * t['sample_share']:5.1f}%"
                  for t in f["top"]]
    return "\n".join(lines)
