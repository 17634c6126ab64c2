"""The manifest: every file a run downloads, derived from its config, and which stage reads it.

Staging (`nanoforge stage`) fetches the manifest; preflight (`nanoforge preflight`) checks it offline. Both use
this one list, so what is downloaded and what is checked cannot drift apart. Layout on disk:
docs/data-layout.md.

Pretraining shards are FineWeb-Edu-100BT, shuffled and re-sharded (as nanochat uses them): 1823 shards of
~250M characters (~100 MB) each. Shards 0..N-1 are training data; the last upstream shard (01822) is the
validation shard, which is also the last file in name order on disk, as nanoforge.data.shards expects.

A corpus built locally (the demo preset's) needs no download, and neither do that preset's evaluations: the
manifest of a run on a local corpus is empty.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from nanoforge.config import RunConfig
from nanoforge.errors import UserError

STAGES = ("tokenizer", "base", "mid", "sft", "eval", "report")  # the pipeline, in order; report reads no asset
MIRROR_ENV = "NANOFORGE_MIRROR"


@dataclass(frozen=True)
class Asset:
    """One downloaded file. `dest` is relative to the data dir; for a zip it is the folder it unpacks to."""

    name: str
    url: str
    dest: str
    stages: tuple[str, ...]
    kind: str  # how preflight loads it: "parquet" | "eval_bundle"
    unpack: str = "none"  # "none" | "zip"
    size: int | None = None
    sha256: str | None = None
    columns: tuple[str, ...] = field(default=())  # parquet columns the stages read

    @property
    def download_path(self) -> str:
        """Where the downloaded bytes live (relative to the data dir); the lock file is keyed by it."""
        return f"{self.dest}.zip" if self.unpack == "zip" else self.dest


@dataclass(frozen=True)
class RemoteCorpus:
    url_pattern: str  # format()ed with index=
    val_index: int  # the upstream shard kept for validation
    chars_per_shard: int


@dataclass(frozen=True)
class LocalCorpus:
    build_command: str  # the command that builds it


FINEWEB_EDU = RemoteCorpus(
    url_pattern="https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_{index:05d}.parquet",
    val_index=1822,
    chars_per_shard=250_000_000,
)
CORPORA: dict[str, RemoteCorpus | LocalCorpus] = {
    "fineweb-edu": FINEWEB_EDU,
    "demo": LocalCorpus(build_command="nanoforge data build-demo"),
}

# nanochat's tokenizer averages ~4.8 characters per token on FineWeb-Edu; this sizes the shard count only.
CHARS_PER_TOKEN = 4.8
TOKENS_PER_SHARD = int(FINEWEB_EDU.chars_per_shard / CHARS_PER_TOKEN)

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"

HF = "https://huggingface.co/datasets"


@dataclass(frozen=True)
class ChatSplit:
    dataset: str  # local name: <data_dir>/chat/<dataset>/
    split: str
    repo_files: tuple[str, ...]  # paths inside the HF dataset repo, in order
    repo: str
    stages: tuple[str, ...]
    columns: tuple[str, ...]


# Task datasets for midtraining, SFT and chat evaluation (nanochat's mixture). Paths are the files in each
# dataset repo's main branch.
CHAT_SPLITS = (
    ChatSplit("smoltalk", "train", tuple(f"data/train-{i:05d}-of-00004.parquet" for i in range(4)),
              "HuggingFaceTB/smol-smoltalk", ("mid", "sft"), ("messages",)),
    ChatSplit("smoltalk", "test", ("data/test-00000-of-00001.parquet",),
              "HuggingFaceTB/smol-smoltalk", ("mid", "sft"), ("messages",)),
    ChatSplit("mmlu", "auxiliary_train", ("all/auxiliary_train-00000-of-00001.parquet",),
              "cais/mmlu", ("mid",), ("question", "choices", "answer")),
    ChatSplit("mmlu", "test", ("all/test-00000-of-00001.parquet",),
              "cais/mmlu", ("mid", "eval"), ("question", "subject", "choices", "answer")),
    ChatSplit("gsm8k", "train", ("main/train-00000-of-00001.parquet",),
              "openai/gsm8k", ("mid", "sft"), ("question", "answer")),
    ChatSplit("gsm8k", "test", ("main/test-00000-of-00001.parquet",),
              "openai/gsm8k", ("mid", "eval"), ("question", "answer")),
    ChatSplit("arc-easy", "train", ("ARC-Easy/train-00000-of-00001.parquet",),
              "allenai/ai2_arc", ("sft",), ("question", "choices", "answerKey")),
    ChatSplit("arc-easy", "test", ("ARC-Easy/test-00000-of-00001.parquet",),
              "allenai/ai2_arc", ("eval",), ("question", "choices", "answerKey")),
    ChatSplit("arc-challenge", "train", ("ARC-Challenge/train-00000-of-00001.parquet",),
              "allenai/ai2_arc", ("sft",), ("question", "choices", "answerKey")),
    ChatSplit("arc-challenge", "test", ("ARC-Challenge/test-00000-of-00001.parquet",),
              "allenai/ai2_arc", ("eval",), ("question", "choices", "answerKey")),
    ChatSplit("humaneval", "test", ("openai_humaneval/test-00000-of-00001.parquet",),
              "openai/openai_humaneval", ("eval",), ("task_id", "prompt", "canonical_solution", "test", "entry_point")),
)


def chat_split_dest(dataset: str, split: str, part: int, parts: int) -> str:
    """<split>.parquet for a one-file split, <split>-NNNNN.parquet when the source has several files."""
    name = f"{split}.parquet" if parts == 1 else f"{split}-{part:05d}.parquet"
    return f"chat/{dataset}/{name}"


def chat_split_files(data_dir: str | os.PathLike, dataset: str, split: str) -> list[Path]:
    """The local files of one chat dataset split, in order: what the mid/SFT/eval readers should open."""
    for spec in CHAT_SPLITS:
        if spec.dataset == dataset and spec.split == split:
            n = len(spec.repo_files)
            return [Path(data_dir) / chat_split_dest(dataset, split, i, n) for i in range(n)]
    known = sorted({f"{s.dataset}/{s.split}" for s in CHAT_SPLITS})
    raise UserError(f"unknown chat dataset split '{dataset}/{split}'; known: {', '.join(known)}")


def mirror_base(cfg: RunConfig) -> str:
    """The mirror base URL, or '' for the upstream hosts. The environment wins over the config, because a mirror
    belongs to a site (or a test), not to a run."""
    base = os.environ.get(MIRROR_ENV, "") or cfg.data.mirror
    if base and not base.startswith(("http://", "https://")):
        raise UserError(f"mirror '{base}' must be an http:// or https:// base URL (data.mirror or ${MIRROR_ENV})")
    return base.rstrip("/")


def train_shard_count(cfg: RunConfig) -> int:
    """Training shards a run needs: enough tokens for the plan's budget and enough characters for the tokenizer."""
    if cfg.data.num_shards:
        if cfg.data.num_shards < 0:
            raise UserError(f"data.num_shards must be >= 0, got {cfg.data.num_shards}")
        return cfg.data.num_shards
    from nanoforge.plan import derive_plan

    plan = derive_plan(cfg)
    for_training = math.ceil(plan.tokens / TOKENS_PER_SHARD)
    return max(for_training, tokenizer_shard_count(cfg), 1)


def tokenizer_shard_count(cfg: RunConfig) -> int:
    corpus = CORPORA.get(cfg.data.corpus)
    chars = corpus.chars_per_shard if isinstance(corpus, RemoteCorpus) else FINEWEB_EDU.chars_per_shard
    return max(1, math.ceil(cfg.tokenizer.max_chars / chars))


def is_local_corpus(cfg: RunConfig) -> bool:
    return not isinstance(CORPORA.get(cfg.data.corpus), RemoteCorpus)


def local_corpus_command(cfg: RunConfig) -> str:
    corpus = CORPORA.get(cfg.data.corpus)
    if isinstance(corpus, LocalCorpus):
        return corpus.build_command
    return f"put parquet shards under <data_dir>/corpora/{cfg.data.corpus}/ (docs/data-layout.md)"


def build_manifest(cfg: RunConfig) -> list[Asset]:
    """Every asset the run downloads, in a stable order (shards, eval bundle, chat datasets)."""
    if is_local_corpus(cfg):
        return []
    corpus = CORPORA[cfg.data.corpus]
    mirror = mirror_base(cfg)

    def url(upstream: str, dest_path: str) -> str:
        # A mirror serves the data dir's own layout (docs/data-layout.md), so a staged data dir can be served as is.
        return f"{mirror}/{dest_path}" if mirror else upstream

    assets: list[Asset] = []
    n_train = train_shard_count(cfg)
    if n_train >= corpus.val_index:
        raise UserError(
            f"the run needs {n_train} training shards but corpus '{cfg.data.corpus}' has only {corpus.val_index}; "
            "lower the token budget or set data.num_shards"
        )
    n_tok = tokenizer_shard_count(cfg)
    for index in list(range(n_train)) + [corpus.val_index]:
        dest = f"corpora/{cfg.data.corpus}/shard_{index:05d}.parquet"
        if index == corpus.val_index:
            stages, name = ("base", "eval"), f"{cfg.data.corpus} validation shard {index:05d}"
        else:
            stages = ("tokenizer", "base") if index < n_tok else ("base",)
            name = f"{cfg.data.corpus} shard {index:05d}"
        assets.append(Asset(name=name, url=url(corpus.url_pattern.format(index=index), dest), dest=dest,
                            stages=stages, kind="parquet", columns=("text",)))

    assets.append(Asset(name="CORE eval bundle", url=url(EVAL_BUNDLE_URL, "eval_bundle.zip"), dest="eval_bundle",
                        stages=("base", "eval"), kind="eval_bundle", unpack="zip"))

    for spec in CHAT_SPLITS:
        parts = len(spec.repo_files)
        for part, repo_file in enumerate(spec.repo_files):
            dest = chat_split_dest(spec.dataset, spec.split, part, parts)
            label = f"{spec.dataset} {spec.split}" + (f" part {part + 1}/{parts}" if parts > 1 else "")
            assets.append(Asset(name=label, url=url(f"{HF}/{spec.repo}/resolve/main/{repo_file}", dest), dest=dest,
                                stages=spec.stages, kind="parquet", columns=spec.columns))
    return assets


def parse_stages(text: str | None) -> tuple[str, ...]:
    """'base,mid' -> ('base', 'mid'); None or '' -> every stage."""
    if not text:
        return STAGES
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UserError(f"unknown stage(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(STAGES)}")
    return stages


def assets_for_stages(manifest: list[Asset], stages: tuple[str, ...]) -> list[Asset]:
    return [a for a in manifest if set(a.stages) & set(stages)]
