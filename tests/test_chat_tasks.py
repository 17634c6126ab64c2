"""Chat evaluations on fixtures whose result is known by construction: letter-restricted multiple choice with a
model that always prefers one letter, GSM8K answer extraction and scoring, HumanEval programs run in the real
sandbox, ChatCORE arithmetic; the engine-driven generation on a trained tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nanoforge.data.chat_tasks.base import multiple_choice_conversation
from nanoforge.eval.chat_tasks import (chatcore, engine_generator, evaluate_chat_task, extract_code,
                                       extract_final_number, humaneval_passes, humaneval_program,
                                       letter_token_ids, numbers_equal, score_multiple_choice)
from nanoforge.model.load import load_model, load_tokenizer


class LetterModel(nn.Module):
    """Every position predicts the same token distribution: a strong favourite, then a runner-up. Restricted to
    the choice letters, the favourite wins when it is among them."""

    def __init__(self, vocab_size: int, favourite: int, runner_up: int):
        super().__init__()
        self.bias = torch.zeros(vocab_size)
        self.bias[favourite], self.bias[runner_up] = 10.0, 5.0

    def forward(self, idx):
        return self.bias.expand(*idx.shape, -1).clone()


def mc_items() -> list[dict]:
    questions = [("Which is a fruit?", ["apple", "stone", "cloud", "shoe"], 0),
                 ("Which is a colour?", ["dog", "green", "chair", "rain"], 1),
                 ("Which is a number?", ["tree", "road", "seven", "milk"], 2),
                 ("Which can fly?", ["fish", "rock", "worm", "bird"], 3),
                 ("Which is cold?", ["fire", "sun", "ice", "oven"], 2)]
    return [multiple_choice_conversation(q, c, a) for q, c, a in questions]


def test_multiple_choice_compares_only_the_letters(tok, dist):
    items = mc_items()
    letter_c = letter_token_ids(tok, ["C"])[0]
    # the favourite token is not a letter: restricted to A-D, the runner-up C decides every answer
    model = LetterModel(tok.vocab_size, favourite=tok.encode("the")[0], runner_up=letter_c)
    assert score_multiple_choice(model, tok, items, dist.device, max_len=256) == [False, False, True, False, True]
    result = evaluate_chat_task("mmlu", items, model, tok, dist, max_len=256, generate=None)
    assert result["accuracy"] == pytest.approx(2 / 5) and result["items"] == 5
    assert result["centered"] == pytest.approx((0.4 - 0.25) / 0.75)


def test_multiple_choice_is_decided_at_the_answer_position(tok, dist):
    """A model that prefers the right letter only right after <|assistant_start|> scores 1; the same preference
    one position earlier (inside the prompt) changes nothing."""

    class AnswerAware(nn.Module):
        def __init__(self, answer_token: int, where: int):
            super().__init__()
            self.answer_token, self.where = answer_token, where

        def forward(self, idx):
            logits = torch.zeros(*idx.shape, tok.vocab_size)
            logits[:, :, letter_token_ids(tok, ["A"])[0]] = 1.0  # default: always A
            for b in range(idx.shape[0]):
                positions = (idx[b] == self.where).nonzero().flatten()
                if len(positions):
                    logits[b, positions[-1], self.answer_token] = 9.0
            return logits

    item = mc_items()[3]  # answer D
    letter_d = letter_token_ids(tok, ["D"])[0]
    at_answer = AnswerAware(letter_d, tok.special_id("assistant_start"))
    too_early = AnswerAware(letter_d, tok.special_id("user_end"))
    assert score_multiple_choice(at_answer, tok, [item], dist.device, max_len=256) == [True]
    assert score_multiple_choice(too_early, tok, [item], dist.device, max_len=256) == [False]


@pytest.mark.parametrize("text, expected", [
    ("She has 3 apples and buys 4 more, so 7.\n#### 7", "7"),
    ("The total is 1,234 dollars.\n#### 1,234", "1234"),
    ("#### -12.5 and then some words 99", "-12.5"),
    ("No marker: first 3, then 10, finally 42.", "42"),
    ("It costs $18.", "18"),
    ("no numbers here", None),
])
def test_gsm8k_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_numbers_compare_by_value():
    assert numbers_equal("18", "18.0") and numbers_equal("1234", "1234")
    assert not numbers_equal("18", "19") and not numbers_equal(None, "1")


def gsm8k_items() -> list[dict]:
    from nanoforge.data.chat_tasks.datasets import gsm8k_assistant_parts, gsm8k_final_answer

    rows = [{"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
            {"question": "A box holds 12 eggs. How many in 3 boxes?", "answer": "12*3=<<12*3=36>>36\n#### 36"},
            {"question": "Sam had 50 and spent 1,000/100. Left?", "answer": "50-10=<<50-10=40>>40\n#### 40"}]
    return [{"messages": [{"role": "user", "content": r["question"]},
                          {"role": "assistant", "content": gsm8k_assistant_parts(r["answer"])}],
             "answer": gsm8k_final_answer(r["answer"])} for r in rows]


def test_gsm8k_scores_generated_replies(tok, dist):
    """A stand-in generator replying with chosen text: right numbers score 1, wrong ones 0."""
    items = gsm8k_items()
    replies = {0: "3 plus 4 is 7.\n#### 7", 1: "The answer is 36", 2: "50 minus 10 is 45\n#### 45"}

    def make_generate():
        calls = iter(range(len(items)))

        def generate(prompt: list[int], max_tokens: int) -> list[int]:
            assert prompt[-1] == tok.special_id("assistant_start")
            return tok.encode(replies[next(calls)])
        return generate

    model = nn.Linear(1, 1)  # unused by generative tasks beyond eval()/train() mode switching
    result = evaluate_chat_task("gsm8k", items, model, tok, dist, 256, make_generate())
    assert result["items"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert result["centered"] == pytest.approx(2 / 3)


HUMANEVAL_ITEM = {
    "prompt": 'import math\n\n\ndef hypotenuse(a, b):\n    """Length of the hypotenuse."""\n',
    "test": "def check(candidate):\n    assert abs(candidate(3, 4) - 5) < 1e-9\n    assert candidate(0, 0) == 0\n",
    "entry_point": "hypotenuse",
}


@pytest.mark.parametrize("reply, passes", [
    ("    return math.sqrt(a * a + b * b)\n", True),  # the body only: completes the prompt
    ("```python\ndef hypotenuse(a, b):\n    return math.hypot(a, b)\n```\nThis uses math.hypot.", True),
    ("def hypotenuse(a, b):\n    return a + b\n", False),
    ("    while True:\n        pass\n", False),  # killed by the sandbox's time limit
    ("    return (", False),  # a syntax error
])
def test_humaneval_runs_the_tests_in_the_sandbox(reply, passes):
    assert humaneval_passes(HUMANEVAL_ITEM, reply, timeout_s=3.0) is passes


def test_humaneval_program_keeps_the_prompt_imports():
    program = humaneval_program(HUMANEVAL_ITEM, "```python\ndef hypotenuse(a, b):\n    return 0\n```")
    assert program.startswith("import math\ndef hypotenuse(a, b):")
    assert program.rstrip().endswith("check(hypotenuse)")
    assert extract_code("no fence at all") == "no fence at all"


def test_chatcore_is_the_mean_centered_accuracy_and_names_what_is_missing():
    results = {"arc-easy": {"centered": (0.5 - 0.25) / 0.75}, "mmlu": {"centered": 0.0},
               "gsm8k": {"centered": 0.2}}
    out = chatcore(results)
    assert out["chatcore"] == pytest.approx((1 / 3 + 0.0 + 0.2) / 3)
    assert out["missing"] == ["arc-challenge", "humaneval"] and "not comparable" in out["note"]
    assert chatcore({})["measured"] == []


def test_engine_generation_on_a_trained_model(trained_tiny_run, tok, dist):
    """The real engine path: greedy replies from a trained model, scored per item and counted exactly once."""
    model, cfg, _ = load_model(trained_tiny_run, "base")
    run_tok = load_tokenizer(trained_tiny_run)
    generate = engine_generator(model, run_tok, dist.device)
    items = gsm8k_items()
    prompt = [run_tok.bos_id] + run_tok.encode("Hello")
    first, second = generate(prompt, 8), generate(prompt, 8)
    assert first == second and len(first) <= 8  # greedy: deterministic
    result = evaluate_chat_task("gsm8k", items[:1], model, run_tok, dist, cfg.model.sequence_len, generate)
    assert result["items"] == 1 and result["accuracy"] in (0.0, 1.0)



def test_chat_stage_evaluation_reads_staged_datasets_and_reports_the_rest(trained_tiny_run, tmp_path, dist):
    """Two datasets staged in the upstream parquet layout, three not: the staged ones are loaded by the real
    loaders and scored (HumanEval through the engine and the sandbox), the others are named as not staged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanoforge.config import make_config
    from nanoforge.eval.run import EvalOptions, evaluate_chat

    chat = tmp_path / "data" / "chat"
    (chat / "arc-easy").mkdir(parents=True)
    (chat / "humaneval").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"id": f"q{i}", "question": q, "choices": {"text": c, "label": ["A", "B", "C", "D"]}, "answerKey": a}
        for i, (q, c, a) in enumerate([("Which is a fruit?", ["apple", "stone", "cloud", "shoe"], "A"),
                                       ("Which can fly?", ["fish", "rock", "worm", "bird"], "D"),
                                       ("Which is cold?", ["fire", "sun", "ice", "oven"], "C")])]),
        chat / "arc-easy" / "test.parquet")
    pq.write_table(pa.Table.from_pylist([{"task_id": "HumanEval/0", **HUMANEVAL_ITEM,
                                          "canonical_solution": "    return math.hypot(a, b)\n"}]),
                   chat / "humaneval" / "test.parquet")
    model, cfg, _ = load_model(trained_tiny_run, "base")
    cfg = make_config(None, [f"data.data_dir={tmp_path / 'data'}"], base=cfg.to_dict())
    out = evaluate_chat(model, load_tokenizer(trained_tiny_run), cfg, dist, EvalOptions(), show_progress=False)
    assert sorted(out["tasks"]) == ["arc-easy", "humaneval"]
    assert out["tasks"]["arc-easy"]["items"] == 3 and out["tasks"]["humaneval"]["items"] == 1
    assert out["not_staged"] == ["arc-challenge", "mmlu", "gsm8k"] and "nanoforge stage" in out["not_staged_note"]
    expected = (out["tasks"]["arc-easy"]["centered"] + out["tasks"]["humaneval"]["centered"]) / 2
    assert out["chatcore"] == pytest.approx(expected) and out["measured"] == ["arc-easy", "humaneval"]
