"""Chat evaluations of a mid/SFT model, on the conversations of nanoforge.data.chat_tasks:

- ARC-Easy, ARC-Challenge, MMLU: multiple choice answered with one letter. The model's next-token logits after
  <|assistant_start|> are compared over the choice letters only, so a model that has not learned to answer with
  a bare letter is still measured on what it knows (nanochat's categorical evaluation).
- GSM8K: the model generates a worked answer (calling the calculator as taught); the final number (after
  '####', else the last number in the reply) must equal the reference.
- HumanEval: the model generates code; the program (prompt imports, the code, the task's tests, check(entry))
  must pass in the sandboxed Python tool.

ChatCORE is the mean centered accuracy over the chat tasks measured, (acc - b) / (1 - b), with random baselines
b = 1/4 for the four-choice tasks and 0 for the generative ones.

Items: a task item is the conversation dict the loaders produce: "messages" (user question, reference
assistant answer) plus "letters"/"answer" (multiple choice), "answer" (GSM8K: the number), or "prompt", "test",
"entry_point" (HumanEval).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from nanoforge.errors import UserError
from nanoforge.eval.core import selected_indices
from nanoforge.tokenizer.chat import render_for_completion
from nanoforge.train.distributed import Dist, all_reduce_sum

MULTIPLE_CHOICE_TASKS = ("arc-easy", "arc-challenge", "mmlu")
GENERATIVE_TASKS = ("gsm8k", "humaneval")
CHAT_TASKS = MULTIPLE_CHOICE_TASKS + GENERATIVE_TASKS
RANDOM_BASELINES = {"arc-easy": 0.25, "arc-challenge": 0.25, "mmlu": 0.25, "gsm8k": 0.0, "humaneval": 0.0}
MAX_NEW_TOKENS = {"gsm8k": 256, "humaneval": 256}

# prompt ids -> generated ids (the reply, up to and excluding the end of the assistant's turn)
Generate = Callable[[list[int], int], list[int]]


# ------------------------------------------------------------------------------------------ multiple choice


def letter_token_ids(tok, letters: Sequence[str]) -> list[int]:
    ids = []
    for letter in letters:
        encoded = tok.encode(letter)
        if len(encoded) != 1:
            raise UserError(f"the tokenizer splits the answer letter '{letter}' into {len(encoded)} tokens; "
                            "multiple-choice scoring needs one token per letter")
        ids.append(encoded[0])
    return ids


@torch.no_grad()
def score_multiple_choice(model, tok, items: Sequence[dict], device: torch.device, max_len: int,
                          batch_size: int = 8) -> list[bool]:
    """For each item: does the choice letter with the highest logit after <|assistant_start|> equal the answer?"""
    from nanoforge.eval.core import autocast_for

    results = []
    for first in range(0, len(items), batch_size):
        batch = items[first:first + batch_size]
        prompts = [render_for_completion(tok, item)[-max_len:] for item in batch]
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.tensor(p)
        with autocast_for(device):
            logits = model(ids.to(device)).float()
        for i, (item, prompt) in enumerate(zip(batch, prompts)):
            letters = list(item["letters"])
            letter_ids = torch.tensor(letter_token_ids(tok, letters), device=logits.device)
            chosen = letters[int(logits[i, len(prompt) - 1, letter_ids].argmax())]
            results.append(chosen == item["answer"])
    return results


# ------------------------------------------------------------------------------------------------ GSM8K

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_final_number(text: str) -> str | None:
    """The number after the last '####', else the last number in the text; commas and a trailing '.' dropped."""
    marked = re.findall(r"####\s*\$?\s*(-?[\d,]*\.?\d+)", text)
    found = marked[-1] if marked else (_NUMBER.findall(text) or [None])[-1]
    if found is None:
        return None
    return found.replace(",", "").rstrip(".")


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return a.strip() == b.strip()


def gsm8k_correct(item: dict, reply: str) -> bool:
    return numbers_equal(extract_final_number(reply), item["answer"])


# ---------------------------------------------------------------------------------------------- HumanEval

_FENCED = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(reply: str) -> str:
    """The first fenced code block of the reply, or the whole reply when it has none."""
    match = _FENCED.search(reply)
    return match.group(1) if match else reply


def humaneval_program(item: dict, reply: str) -> str:
    """The program to run: the model's function (completing the prompt if it only wrote the body), the task's
    tests and the call that runs them."""
    code = extract_code(reply)
    entry = item["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        imports = [line for line in item["prompt"].splitlines() if line.startswith(("import ", "from "))]
        code = "\n".join(imports + [code])
    else:
        code = item["prompt"] + code
    return f"{code}\n\n{item['test']}\n\ncheck({entry})\n"


def humaneval_passes(item: dict, reply: str, timeout_s: float = 10.0) -> bool:
    from nanoforge.serve.tools import run_python

    return run_python(humaneval_program(item, reply), timeout_s=timeout_s).ok


# ----------------------------------------------------------------------------------------------- running


def evaluate_chat_task(name: str, items, model, tok, dist: Dist, max_len: int, generate: Generate | None,
                       max_items: int | None = None, seed: int = 1234, progress: Callable[[int], None] | None = None
                       ) -> dict:
    """Accuracy on one chat task. `items` is indexable (a loaded Task or a list); rank r takes items r::world."""
    if name not in CHAT_TASKS:
        raise UserError(f"unknown chat evaluation '{name}'; known: {', '.join(CHAT_TASKS)}")
    mine = selected_indices(len(items), max_items, seed)[dist.rank::dist.world_size]
    counts = torch.zeros(2, dtype=torch.float64, device=dist.device)  # correct, scored
    was_training = model.training
    model.eval()
    try:
        if name in MULTIPLE_CHOICE_TASKS:
            chunk = 32
            for first in range(0, len(mine), chunk):
                batch = [items[i] for i in mine[first:first + chunk]]
                outcomes = score_multiple_choice(model, tok, batch, dist.device, max_len)
                counts[0] += sum(outcomes)
                counts[1] += len(outcomes)
                if progress:
                    progress(len(batch))
        else:
            if generate is None:
                raise ValueError(f"{name} needs a generate function")
            for index in mine:
                item = items[index]
                reply = tok.decode(generate(render_for_completion(tok, item), MAX_NEW_TOKENS[name]))
                ok = gsm8k_correct(item, reply) if name == "gsm8k" else humaneval_passes(item, reply)
                counts[0] += float(ok)
                counts[1] += 1
                if progress:
                    progress(1)
    finally:
        model.train(was_training)
    all_reduce_sum(dist, counts)
    accuracy = float(counts[0] / counts[1]) if counts[1] else float("nan")
    baseline = RANDOM_BASELINES[name]
    return {"accuracy": accuracy, "centered": (accuracy - baseline) / (1 - baseline), "items": int(counts[1]),
            "items_available": len(items), "random_baseline": baseline}


def chatcore(results: dict[str, dict]) -> dict:
    """Mean centered accuracy over the chat tasks measured, and which of the five were not."""
    measured = [name for name in CHAT_TASKS if name in results]
    missing = [name for name in CHAT_TASKS if name not in results]
    score = sum(results[n]["centered"] for n in measured) / len(measured) if measured else float("nan")
    note = "" if not missing else (f"ChatCORE over {len(measured)} of {len(CHAT_TASKS)} tasks (missing: "
                                   f"{', '.join(missing)}); not comparable with the full ChatCORE")
    return {"chatcore": score, "measured": measured, "missing": missing, "note": note}


def engine_generator(model, tok, device: torch.device) -> Generate:
    """Greedy generation with the serving engine (KV cache, calculator tool), as the chat model is used."""
    from nanoforge.serve.engine import Engine, SamplingParams

    engine = Engine(model, tok, device)

    def generate(prompt: list[int], max_tokens: int) -> list[int]:
        room = engine.max_context - max_tokens  # keep the end of an over-long prompt, where the question is
        return engine.generate(prompt[-room:], SamplingParams(temperature=0.0, max_tokens=max_tokens))[0]

    return generate
