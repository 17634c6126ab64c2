"""Sampling workflows from a trained workflow model, constrained by the schema grammar or not.

Constrained: at every step only the tokens the grammar allows (`SchemaTokenizer.allowed_next`) keep any
probability, so every finished sample decodes and validates against the schema. A length budget keeps samples
near what the model was trained on (one window of `sequence_len` positions): from `max_tokens - margin` on, only
the tokens that head for the end (`finishing_next`) are allowed, so documents close. Unconstrained: any token of
the tokenizer's vocabulary, to measure what the constraint buys; a sample that stops decoding, runs out of
tokens or breaks the schema counts as invalid, with the reason.

Rows of a batch advance in lockstep over one KV cache (every row one position per step); a finished row keeps
feeding PAD, which nothing reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanoforge.errors import UserError
from nanoforge.model.kv_cache import KVCache
from nanoforge.serve.engine import autocast_for


@dataclass
class Sample:
    ids: list[int]  # document tokens, EOS included when it was reached
    value: object | None  # the decoded document (None when it did not decode)
    valid: bool
    reason: str  # "valid", or why not: "decode: ...", "unfinished", "schema: ..."
    finished_late: bool = False  # the constrained sampler needed tokens past max_tokens to close the document


def schema_validator(schema: dict):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def check_document(tokenizer, validator, ids: list[int], ended: bool) -> tuple[object | None, bool, str]:
    """Decode and validate one sample's ids: (value or None, valid, reason)."""
    from nanoforge.workflows.codec import TokenDecodeError

    if not ended:
        return None, False, "unfinished"
    try:
        value = tokenizer.decode_value(ids)
    except TokenDecodeError as exc:
        return None, False, f"decode: {exc}"
    error = next(iter(validator.iter_errors(value)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return value, False, f"schema: {where}: {error.message[:120]}"
    return value, True, "valid"


@torch.no_grad()
def generate(model, tokenizer, n: int, *, constrained: bool = True, temperature: float = 1.0, seed: int = 0,
             max_tokens: int | None = None, batch_size: int = 64, progress: bool = False) -> list[Sample]:
    """n samples from `model` (a GPT on the workflow windows), each started by the first window's position token."""
    from tqdm import tqdm

    from nanoforge.workflows.codec import TokenDecodeError

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not 0 <= temperature <= 10:
        raise UserError(f"--temperature must be between 0 and 10, got {temperature}")
    seq = model.config.sequence_len
    max_tokens = max_tokens or seq - 1
    if max_tokens < 2:
        raise UserError(f"--max-tokens must be at least 2, got {max_tokens}")
    # Finishing a document may need more than the budget (required keys, nesting); the rotary table bounds it.
    hard_cap = min(2 * max_tokens, model.rotary_len - 1)
    margin = min(32, max_tokens // 4)
    model_vocab, vocab = model.config.vocab_size, tokenizer.vocab_size
    if vocab > model_vocab:
        raise UserError(f"the tokenizer has {vocab} tokens but the model only {model_vocab}")
    device = model.wte.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    validator = schema_validator(tokenizer.schema)
    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    free = np.zeros(model_vocab, dtype=bool)
    free[:vocab] = True
    samples: list[Sample] = []
    bar = tqdm(total=n, desc="sampling" + (" (constrained)" if constrained else ""), unit="doc", disable=not progress)
    for first in range(0, n, batch_size):
        rows = min(batch_size, n - first)
        cache = KVCache.for_model(model, rows, hard_cap + 1)
        states = [tokenizer.new_state() for _ in range(rows)]
        ids: list[list[int]] = [[] for _ in range(rows)]
        alive = [True] * rows
        ended = [False] * rows
        broken: list[str | None] = [None] * rows
        step_input = torch.full((rows, 1), tokenizer.position_token(0), dtype=torch.long, device=device)
        for _ in range(hard_cap):
            with autocast_for(device):
                logits = model(step_input, kv_cache=cache)[:, -1].float()
            allowed = np.zeros((rows, model_vocab), dtype=bool)
            for r in range(rows):
                if not alive[r]:
                    allowed[r, pad] = True
                elif not constrained:
                    allowed[r] = free
                else:
                    finishing = len(ids[r]) >= max_tokens - margin
                    mask = tokenizer.finishing_next(states[r]) if finishing else tokenizer.allowed_next(states[r])
                    allowed[r, :vocab] = mask
                    if not mask.any():  # the grammar promises this never happens; never let NaNs sample
                        alive[r], broken[r] = False, "decode: no token allowed (grammar dead end)"
                        allowed[r, pad] = True
            logits = logits.masked_fill(~torch.from_numpy(allowed).to(device), float("-inf"))
            if temperature == 0:
                chosen = logits.argmax(dim=-1)
            else:
                chosen = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)[:, 0]
            chosen_list = chosen.tolist()
            for r, token in enumerate(chosen_list):
                if not alive[r]:
                    continue
                ids[r].append(token)
                try:
                    states[r].feed(token)
                except TokenDecodeError as exc:  # only an unconstrained row can get here
                    alive[r], broken[r] = False, f"decode: {exc}"
                    continue
                if token == eos:
                    alive[r], ended[r] = False, True
            if not any(alive):
                break
            step_input = torch.tensor(chosen_list, dtype=torch.long, device=device)[:, None]
        for r in range(rows):
            if broken[r] is not None:
                samples.append(Sample(ids[r], None, False, broken[r]))
                continue
            value, valid, reason = check_document(tokenizer, validator, ids[r], ended[r])
            samples.append(Sample(ids[r], value, valid, reason, finished_late=constrained and len(ids[r]) > max_tokens))
        bar.update(rows)
    bar.close()
    return samples


def to_yaml(value) -> str:
    """YAML text whose YAML 1.2 reading (nanoforge.workflows.canonical) is `value` again. PyYAML writes YAML 1.1,
    which leaves a few strings bare that 1.2 reads as numbers (`1e3`, `0o10`); those documents are written with
    every string quoted instead."""
    import yaml

    from nanoforge.workflows.canonical import parse_document

    text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=120)
    try:
        if parse_document(text) == value:
            return text
    except ValueError:
        pass
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=120, default_style='"')


def summarize(samples: list[Sample]) -> dict:
    n = len(samples)
    reasons: dict[str, int] = {}
    for s in samples:
        if not s.valid:
            kind = s.reason.split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "n": n,
        "valid": sum(s.valid for s in samples),
        "validity": sum(s.valid for s in samples) / n if n else 0.0,
        "mean_tokens": sum(len(s.ids) for s in samples) / n if n else 0.0,
        "finished_late": sum(s.finished_late for s in samples),
        "invalid_reasons": reasons,
    }


def write_samples(samples: list[Sample], out_dir: Path, prefix: str) -> list[Path]:
    """Valid (or at least decodable) samples as YAML files; undecodable ones as their token ids."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, s in enumerate(samples):
        tag = "" if s.valid else "-invalid"
        if s.value is not None:
            path = out_dir / f"{prefix}-{i:04d}{tag}.yml"
            path.write_text(to_yaml(s.value), encoding="utf-8")
        else:
            path = out_dir / f"{prefix}-{i:04d}{tag}.json"
            path.write_text(json.dumps({"reason": s.reason, "ids": s.ids}) + "\n", encoding="utf-8")
        written.append(path)
    return written
