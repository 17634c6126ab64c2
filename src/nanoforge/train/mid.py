"""Midtraining: the base model learns the chat format, tool calls and the task styles (multiple choice, math,
spelling, identity) from a mixture of conversations packed densely into rows, like pretraining."""

from nanoforge.train.chat_stage import chat_stage
from nanoforge.train.loop import RunContext, Stage


def mid_stage(ctx: RunContext) -> Stage:
    return chat_stage(ctx, "mid")
