"""What every chat task is: a sized, indexable collection of conversations (the format of
nanoforge.tokenizer.chat), each dict possibly carrying the fields an evaluator needs beside "messages".

Splits: every task answers to "train", "val" and/or "test". A downloaded dataset maps them onto its staged
splits (SmolTalk's "val" is its test split, MMLU's "train" is auxiliary_train, ...); a generated task draws
train and val/test examples from different seeds.
"""

from __future__ import annotations

from pathlib import Path

from nanoforge.errors import UserError

LETTERS = "ABCDEFGHIJ"


class Task:
    """A chat task: `len(task)` examples, `task[i]` -> {"messages": [...], ...}."""

    name = "task"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range (0..{len(self) - 1})")
        return index


class ParquetRows:
    """Rows of one staged split (one or several parquet files, in order), read lazily: the length comes from the
    files' footers, the columns are memory-mapped on first access, so building a mixture reads almost nothing."""

    def __init__(self, files: list[Path], columns: tuple[str, ...]):
        self.files, self.columns = [Path(f) for f in files], columns
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise UserError(f"chat dataset file {missing[0]} is missing; stage it with: nanoforge stage --run-dir DIR "
                            "(docs/data-layout.md)")
        import pyarrow.parquet as pq

        self._length = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        self._table = None

    def __len__(self) -> int:
        return self._length

    def _load(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for f in self.files:
            names = pq.ParquetFile(f).schema_arrow.names
            wanted = [c for c in self.columns if c in names]
            if "train" in names and not wanted:
                wanted = ["train"]  # MMLU's auxiliary_train nests its row in a struct column named "train"
            if not wanted:
                raise UserError(f"{f} has none of the columns {', '.join(self.columns)} (has {', '.join(names)}); "
                                "re-stage it with: nanoforge stage --run-dir DIR")
            tables.append(pq.read_table(f, columns=wanted, memory_map=True))
        self._table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def __getitem__(self, index: int) -> dict:
        if self._table is None:
            self._load()
        row = self._table.slice(index, 1).to_pylist()[0]
        if set(row) == {"train"} and isinstance(row["train"], dict):
            row = row["train"]
        return row


def multiple_choice_conversation(question: str, choices: list[str], answer_index: int, **extra) -> dict:
    """A multiple-choice question as a conversation whose answer is one letter (how nanochat teaches MMLU/ARC):
    the evaluator restricts the model's next token to `letters` and compares with `answer`."""
    letters = list(LETTERS[: len(choices)])
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    lines.append("Respond only with the letter of the correct answer.")
    answer = letters[answer_index]
    return {
        "messages": [{"role": "user", "content": "\n".join(lines)}, {"role": "assistant", "content": answer}],
        "letters": letters,
        "answer": answer,
        **extra,
    }
