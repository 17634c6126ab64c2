"""Chat tasks for midtraining, SFT and chat evaluations, and mixtures of them.

    load_task("gsm8k", "test", cfg)          -> a Task: len(task), task[i] -> conversation dict
    build_mixture("smoltalk,identity:2000", "train", cfg) -> TaskMixture

A mixture spec is comma-separated `task[:count]` entries (the `chat.mid|sft.train_tasks|val_tasks` config keys).
"""

from __future__ import annotations

from nanoforge.data.chat_tasks.base import Task
from nanoforge.data.chat_tasks.datasets import ARCChallenge, ARCEasy, GSM8K, MMLU, HumanEval, SmolTalk
from nanoforge.data.chat_tasks.generated import Arithmetic, Identity, Spelling
from nanoforge.data.chat_tasks.mixture import TaskMixture, parse_mixture_spec
from nanoforge.errors import UserError

DOWNLOADED = {t.name: t for t in (SmolTalk, MMLU, GSM8K, ARCEasy, ARCChallenge, HumanEval)}
GENERATED = {t.name: t for t in (Identity, Spelling, Arithmetic)}
TASK_NAMES = (*DOWNLOADED, *GENERATED)


def load_task(name: str, split: str, cfg, size: int | None = None) -> Task:
    """A task by name. `size` matters only for generated tasks (how many examples to generate)."""
    if name in DOWNLOADED:
        return DOWNLOADED[name](cfg.data_dir(), split)
    if name == "identity":
        c = cfg.chat
        return Identity(split, size, cfg.train.seed, name=c.identity_name, creator=c.identity_creator,
                        description=c.identity_description)
    if name in GENERATED:
        return GENERATED[name](split, size, cfg.train.seed)
    raise UserError(f"unknown chat task '{name}'; known: {', '.join(TASK_NAMES)}")


def build_mixture(spec: str, split: str, cfg, key: str = "chat task mixture") -> TaskMixture:
    entries = []
    for name, count in parse_mixture_spec(spec, key):
        if name not in TASK_NAMES:
            raise UserError(f"{key}: unknown task '{name}'; known: {', '.join(TASK_NAMES)}")
        task = load_task(name, split, cfg, size=count if name in GENERATED else None)
        entries.append((task, count if count is not None else len(task)))
    return TaskMixture(entries, seed=cfg.train.seed)


__all__ = ["Task", "TaskMixture", "build_mixture", "load_task", "TASK_NAMES"]
