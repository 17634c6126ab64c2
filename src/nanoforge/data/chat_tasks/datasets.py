"""The downloaded chat datasets, read from the files `nanoforge stage` puts under <data_dir>/chat/<dataset>/
(docs/data-layout.md). Columns expected (the upstream parquet files, unchanged):

    smoltalk       messages: list of {role, content} (a leading system message is allowed)
    mmlu           question: str, subject: str, choices: list[str] (4), answer: int (0-3)
                   (auxiliary_train may nest these in a struct column "train"; both layouts are read)
    gsm8k          question: str, answer: str (worked solution with <<expr=result>> calculator annotations,
                   ending in "#### <number>")
    arc-easy,      id: str, question: str, choices: {text: list[str], label: list[str]}, answerKey: str
    arc-challenge
    humaneval      task_id, prompt, canonical_solution, test, entry_point: str
"""

from __future__ import annotations

import re
from pathlib import Path

from nanoforge.data.chat_tasks.base import ParquetRows, Task, multiple_choice_conversation
from nanoforge.data.manifest import chat_split_files
from nanoforge.errors import UserError


class StagedTask(Task):
    """A task over one staged split; `splits` maps train/val/test onto the dataset's own split names."""

    dataset = ""
    splits: dict[str, str] = {}
    columns: tuple[str, ...] = ()

    def __init__(self, data_dir: Path, split: str):
        if split not in self.splits:
            raise UserError(f"task '{self.name}' has no '{split}' split (it has: {', '.join(self.splits)})")
        self.split = split
        self.rows = ParquetRows(chat_split_files(data_dir, self.dataset, self.splits[split]), self.columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.convert(self.rows[self._check_index(index)])

    def convert(self, row: dict) -> dict:
        raise NotImplementedError


class SmolTalk(StagedTask):
    name = dataset = "smoltalk"
    splits = {"train": "train", "val": "test", "test": "test"}
    columns = ("messages",)

    def convert(self, row: dict) -> dict:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        return {"messages": messages}


class MMLU(StagedTask):
    name = dataset = "mmlu"
    splits = {"train": "auxiliary_train", "val": "test", "test": "test"}
    columns = ("question", "subject", "choices", "answer")

    def convert(self, row: dict) -> dict:
        return multiple_choice_conversation(row["question"], list(row["choices"]), int(row["answer"]),
                                            subject=row.get("subject") or "")


class ARC(StagedTask):
    splits = {"train": "train", "val": "test", "test": "test"}
    columns = ("id", "question", "choices", "answerKey")

    def convert(self, row: dict) -> dict:
        labels = list(row["choices"]["label"])
        # Some ARC questions label their choices 1-4; they are re-lettered A-D so every answer is a letter.
        return multiple_choice_conversation(row["question"], list(row["choices"]["text"]),
                                            labels.index(row["answerKey"]), id=row.get("id") or "")


class ARCEasy(ARC):
    name = dataset = "arc-easy"


class ARCChallenge(ARC):
    name = dataset = "arc-challenge"


CALCULATOR_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


def gsm8k_assistant_parts(solution: str) -> list[dict]:
    """GSM8K's worked solution as assistant parts: each <<expr=result>> becomes a calculator call (python part)
    and its output (python_output part, not trained), so the model learns to call the tool and read its result."""
    parts: list[dict] = []
    last = 0
    for match in CALCULATOR_ANNOTATION.finditer(solution):
        if match.start() > last:
            parts.append({"type": "text", "text": solution[last:match.start()]})
        parts.append({"type": "python", "text": match.group(1)})
        parts.append({"type": "python_output", "text": match.group(2)})
        last = match.end()
    if last < len(solution):
        parts.append({"type": "text", "text": solution[last:]})
    return parts


def gsm8k_final_answer(solution: str) -> str | None:
    """The number after '####' (commas dropped), or None when there is none."""
    match = re.search(r"####\s*(-?[\d,.]+)", solution)
    return match.group(1).replace(",", "").rstrip(".") if match else None


class GSM8K(StagedTask):
    name = dataset = "gsm8k"
    splits = {"train": "train", "val": "test", "test": "test"}
    columns = ("question", "answer")

    def convert(self, row: dict) -> dict:
        solution = row["answer"]
        return {
            "messages": [{"role": "user", "content": row["question"]},
                         {"role": "assistant", "content": gsm8k_assistant_parts(solution)}],
            "answer": gsm8k_final_answer(solution),
        }


class HumanEval(StagedTask):
    """Evaluation only: the prompt is the function signature + docstring; the reference answer completes it."""

    name = dataset = "humaneval"
    splits = {"test": "test"}
    columns = ("task_id", "prompt", "canonical_solution", "test", "entry_point")

    def convert(self, row: dict) -> dict:
        solution = row["prompt"] + row["canonical_solution"]
        return {
            "messages": [{"role": "user", "content": row["prompt"]},
                         {"role": "assistant", "content": solution}],
            "task_id": row["task_id"],
            "prompt": row["prompt"],
            "solution": solution,
            "test": row["test"],
            "entry_point": row["entry_point"],
        }
