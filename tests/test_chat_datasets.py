"""Chat task loaders on small parquet files with the upstream datasets' schemas (the files `nanoforge stage`
puts under <data_dir>/chat/<dataset>/, docs/data-layout.md), generated tasks, and mixtures."""

from __future__ import annotations

import ast
import operator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanoforge.config import make_config
from nanoforge.data.chat_tasks import GENERATED, build_mixture, load_task
from nanoforge.data.chat_tasks.datasets import gsm8k_assistant_parts, gsm8k_final_answer
from nanoforge.data.chat_tasks.mixture import parse_mixture_spec
from nanoforge.errors import UserError
from nanoforge.tokenizer.bpe import train_tokenizer
from nanoforge.tokenizer.chat import render_conversation

GSM8K_SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def write(path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def data_dir(tmp_path):
    chat = tmp_path / "chat"
    messages = [
        {"messages": [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    for part in range(4):  # SmolTalk's train split is four files upstream
        write(chat / "smoltalk" / f"train-{part:05d}.parquet", messages[part % 2:part % 2 + 1])
    write(chat / "smoltalk" / "test.parquet", messages)
    mmlu = {"question": "What is the capital of France?", "subject": "geography",
            "choices": ["Berlin", "Paris", "Rome", "Madrid"], "answer": 1}
    write(chat / "mmlu" / "test.parquet", [mmlu])
    # cais/mmlu's auxiliary_train nests each row in a struct column called "train"
    write(chat / "mmlu" / "auxiliary_train.parquet", [{"train": {**mmlu, "answer": 2, "subject": ""}}])
    write(chat / "gsm8k" / "train.parquet", [{"question": "How many clips did Natalia sell?",
                                              "answer": GSM8K_SOLUTION}])
    arc = [{"id": "q1", "question": "Which is a mammal?",
            "choices": {"text": ["shark", "whale", "trout"], "label": ["A", "B", "C"]}, "answerKey": "B"},
           {"id": "q2", "question": "Pick four.",
            "choices": {"text": ["one", "two", "three", "four"], "label": ["1", "2", "3", "4"]}, "answerKey": "4"}]
    write(chat / "arc-easy" / "test.parquet", arc)
    write(chat / "humaneval" / "test.parquet", [{
        "task_id": "HumanEval/0", "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
        "canonical_solution": "    return a + b\n", "test": "def check(f):\n    assert f(1, 2) == 3\n",
        "entry_point": "add"}])
    return tmp_path


@pytest.fixture
def cfg(data_dir):
    return make_config("demo", [f"data.data_dir={data_dir}", "chat.identity_name=Forgey",
                                "chat.identity_creator=the test suite"])


@pytest.fixture(scope="module")
def tok():
    from pydoc_data.topics import topics

    return train_tokenizer([topics[k] for k in sorted(topics)], 400)


def test_smoltalk_reads_every_file_of_a_split_in_order(cfg):
    task = load_task("smoltalk", "train", cfg)
    assert len(task) == 4
    assert [task[i]["messages"][-1]["content"] for i in range(4)] == ["Hello!", "4", "Hello!", "4"]
    assert task[0]["messages"][0] == {"role": "system", "content": "You are kind."}
    assert len(load_task("smoltalk", "val", cfg)) == 2  # val is SmolTalk's test split


def test_mmlu_renders_multiple_choice_with_the_answer_letter(cfg):
    item = load_task("mmlu", "test", cfg)[0]
    assert item["letters"] == ["A", "B", "C", "D"] and item["answer"] == "B" and item["subject"] == "geography"
    prompt = item["messages"][0]["content"]
    assert "- Paris=B" in prompt and "capital of France" in prompt
    assert item["messages"][1] == {"role": "assistant", "content": "B"}
    assert load_task("mmlu", "train", cfg)[0]["answer"] == "C"  # nested auxiliary_train layout


def test_gsm8k_calculator_annotations_become_tool_parts(cfg):
    item = load_task("gsm8k", "train", cfg)[0]
    parts = item["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "python", "python_output", "text", "python", "python_output",
                                          "text"]
    assert parts[1]["text"] == "48/2" and parts[2]["text"] == "24"
    assert parts[4]["text"] == "48+24" and parts[5]["text"] == "72"
    assert "".join(p["text"] for p in parts if p["type"] != "python") == GSM8K_SOLUTION.replace(
        "<<48/2=24>>", "24").replace("<<48+24=72>>", "72")
    assert item["answer"] == "72"
    assert gsm8k_final_answer("so #### 1,234") == "1234" and gsm8k_final_answer("no answer") is None
    assert gsm8k_assistant_parts("plain") == [{"type": "text", "text": "plain"}]


def test_arc_letters_even_when_labels_are_numbers(cfg):
    task = load_task("arc-easy", "test", cfg)
    assert task[0]["answer"] == "B" and task[0]["letters"] == ["A", "B", "C"]
    assert task[1]["answer"] == "D" and "- four=D" in task[1]["messages"][0]["content"]


def test_humaneval_carries_what_the_evaluator_runs(cfg):
    item = load_task("humaneval", "test", cfg)[0]
    assert item["entry_point"] == "add" and "assert f(1, 2) == 3" in item["test"]
    namespace: dict = {}
    exec(item["solution"] + "\n" + item["test"], namespace)  # the reference solution passes its own test
    namespace["check"](namespace["add"])
    with pytest.raises(UserError, match="no 'train' split"):
        load_task("humaneval", "train", cfg)


def test_missing_staged_file_names_the_staging_command(tmp_path):
    cfg = make_config("demo", [f"data.data_dir={tmp_path}"])
    with pytest.raises(UserError, match="nanoforge stage"):
        load_task("gsm8k", "test", cfg)


def test_every_task_renders_with_trained_assistant_tokens(cfg, tok):
    for name, split in [("smoltalk", "train"), ("mmlu", "test"), ("gsm8k", "train"), ("arc-easy", "test"),
                        ("humaneval", "test"), ("identity", "train"), ("spelling", "train"), ("arithmetic", "train")]:
        task = load_task(name, split, cfg, size=5)
        for i in range(len(task)):
            ids, mask = render_conversation(tok, task[i])
            assert any(mask) and not mask[0], f"{name}[{i}]"


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate_tool_call(expr: str) -> str:
    """What the calculator tool would print: arithmetic, or a string literal's .count(letter)."""
    node = ast.parse(expr, mode="eval").body
    if isinstance(node, ast.Call):
        return str(node.func.value.value.count(node.args[0].value))
    return str(_OPS[type(node.op)](node.left.value, node.right.value))


@pytest.mark.parametrize("name", ["spelling", "arithmetic"])
def test_generated_tool_outputs_match_the_tool_calls(cfg, name):
    task = load_task(name, "train", cfg, size=300)
    calls = 0
    for i in range(len(task)):
        item = task[i]
        parts = item["messages"][1]["content"]
        if isinstance(parts, str):  # "spell the word" examples need no tool
            continue
        calls += 1
        call = next(p["text"] for p in parts if p["type"] == "python")
        output = next(p["text"] for p in parts if p["type"] == "python_output")
        assert evaluate_tool_call(call) == output, item
        assert item["answer"] in parts[-1]["text"]
    assert calls > 150


def test_generated_tasks_are_deterministic_and_splits_differ(cfg):
    a = load_task("spelling", "train", cfg, size=50)
    b = load_task("spelling", "train", cfg, size=50)
    val = load_task("spelling", "val", cfg, size=50)
    assert [a[i] for i in range(50)] == [b[i] for i in range(50)]
    assert [a[i] for i in range(50)] != [val[i] for i in range(50)]
    assert len({str(a[i]) for i in range(50)}) > 25


def test_identity_uses_the_configured_template(cfg):
    task = load_task("identity", "train", cfg, size=100)
    replies = " ".join(m["content"] for i in range(100) for m in task[i]["messages"] if m["role"] == "assistant")
    assert "Forgey" in replies and "the test suite" in replies and "{name}" not in replies


def test_mixture_counts_order_and_epochs(cfg):
    mix = build_mixture("identity:30, spelling:50, smoltalk:6", "train", cfg)
    assert len(mix) == 86 and mix.describe() == "identity:30, spelling:50, smoltalk:6"
    order0 = [str(mix.get(0, i)) for i in range(len(mix))]
    again = build_mixture("identity:30, spelling:50, smoltalk:6", "train", cfg)
    assert order0 == [str(again.get(0, i)) for i in range(len(mix))]
    assert order0 != [str(mix.get(1, i)) for i in range(len(mix))]  # each epoch reshuffles
    assert sorted(order0) == sorted(str(mix.get(1, i)) for i in range(len(mix)))
    # smoltalk:6 cycles over its 4 rows (2 distinct conversations): 6 entries, 2 distinct
    smol = [s for s in order0 if "'content': 'Hello!'" in s or "'content': '4'" in s]
    assert len(smol) == 6 and len(set(smol)) == 2


@pytest.mark.parametrize("spec, message", [
    ("", "is empty"),
    ("bogus:10", "unknown task 'bogus'"),
    ("identity:zero", "positive whole count"),
    ("identity:-3", "positive whole count"),
])
def test_bad_mixture_specs(cfg, spec, message):
    with pytest.raises(UserError, match=message):
        build_mixture(spec, "train", cfg, key="chat.mid.train_tasks")


def test_demo_preset_trains_on_generated_tasks_only():
    """The demo must run offline: its mid and sft mixtures may only name tasks that need no download."""
    chat = make_config("demo").chat
    for key in ("mid.train_tasks", "mid.val_tasks", "sft.train_tasks", "sft.val_tasks"):
        stage, field = key.split(".")
        names = {name for name, _ in parse_mixture_spec(getattr(getattr(chat, stage), field), key)}
        assert names <= set(GENERATED), f"chat.{key} of the demo preset needs a download: {names - set(GENERATED)}"
