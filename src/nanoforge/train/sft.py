"""Supervised fine-tuning: the midtrained model is tuned on whole conversations, one per row (padded; the
padding is never a target), at a lower learning rate that decays to zero, so it sees each example as it will
be prompted at chat time."""

from nanoforge.train.chat_stage import chat_stage
from nanoforge.train.loop import RunContext, Stage


def sft_stage(ctx: RunContext) -> Stage:
    return chat_stage(ctx, "sft")
