"""Run configuration: one dataclass tree, YAML on disk, `--set section.key=value` overrides, presets, and the
depth dial that derives everything else (nanochat's scaling rules).

The config stored in a run directory (`config.yaml`) is the source of truth for that run; derived numbers
(`derive_plan`) are recomputed from it, never stored separately, so they cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nanoforge.errors import UserError


@dataclass
class ModelConfig:
    depth: int = 20
    aspect_ratio: int = 64  # width = aspect_ratio * depth, rounded up to a multiple of head_dim
    head_dim: int = 128
    n_embd: int = 0  # 0: derived from depth
    n_head: int = 0  # 0: n_embd // head_dim
    n_kv_head: int = 0  # 0: n_head (no grouped-query attention)
    vocab_size: int = 65536
    sequence_len: int = 2048
    window_pattern: str = "L"  # repeated over layers: L = full causal attention, S = sliding window
    sliding_window: int = 0  # 0: sequence_len // 2
    softcap: float = 15.0  # logit soft-capping; 0 disables
    dropout: float = 0.0


@dataclass
class TrainConfig:
    device_batch_size: int = 32  # rows per device per micro-step
    total_batch_size: int = 0  # tokens per optimizer step; 0: derived from the token budget
    tokens_per_param: float = 20.0  # compute-optimal horizon (Chinchilla), as in nanochat
    num_iterations: int = 0  # 0: derived from tokens_per_param
    optimizer: str = "muon"  # muon (matrices) + AdamW (rest) | adamw (everything)
    matrix_lr: float = 0.02
    embedding_lr: float = 0.2
    unembedding_lr: float = 0.004
    scalar_lr: float = 0.5
    adamw_lr: float = 3e-4  # only for optimizer=adamw
    weight_decay: float = 0.0
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    grad_clip: float = 0.0  # 0: no clipping
    schedule: str = "trapezoid"  # trapezoid (warmup, constant, linear warmdown) | cosine
    warmup_steps: int = 0
    warmdown_ratio: float = 0.2
    final_lr_frac: float = 0.0
    muon_momentum_start: float = 0.85
    muon_momentum_end: float = 0.95
    muon_momentum_warmup: int = 300
    seed: int = 1337
    compile: str = "auto"  # auto (on for CUDA) | on | off
    eval_every: int = 250  # validation bits per byte
    eval_tokens: int = 10_485_760
    sample_every: int = 2000
    save_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 1


@dataclass
class DataConfig:
    corpus: str = "fineweb-edu"  # folder of parquet shards under <data_dir>/corpora/
    data_dir: str = ""  # "": $NANOFORGE_HOME/data
    tokenizer_threads: int = 4
    num_shards: int = 0  # 0: as many as the token budget needs (staging)
    mirror: str = ""  # base URL serving every staged asset (docs/data-layout.md); env NANOFORGE_MIRROR wins
    workflows_dir: str = ""  # `nanoforge workflows prepare` output (windows + tokenizer) the workflows stage trains on
    workflows_train_samples: int = 0  # train on only the first N windows (the overfitting check); 0: all


@dataclass
class TokenizerConfig:
    vocab_size: int = 65536
    max_chars: int = 2_000_000_000  # characters of training text
    doc_cap: int = 10_000  # characters per document


@dataclass
class HardwareConfig:
    gpu: str = "A100-80GB"  # used for estimates; measured MFU uses the device actually present
    gpus_per_node: int = 8
    nodes: int = 1
    assumed_mfu: float = 0.4  # for time and cost estimates only
    price_per_gpu_hour: float = 2.0  # USD


@dataclass
class MetricsConfig:
    """Where rank 0's metrics go besides stdout and JSONL (DESIGN.md, metrics/)."""

    prometheus: str = "textfile"  # none | http | textfile | pushgateway; textfile works behind a login node
    http_port: int = 0  # http mode; 0: pick a free port, written to <run_dir>/metrics/endpoint.json
    http_addr: str = "127.0.0.1"  # http mode; 0.0.0.0 to be scraped from other nodes
    textfile: str = ""  # textfile mode; "": <run_dir>/metrics/<stage>.prom
    pushgateway_url: str = ""  # pushgateway mode, e.g. http://login1:9091
    push_every_seconds: float = 10.0  # textfile/pushgateway: write at most this often (the last values always land)
    wandb: bool = False  # also log to Weights & Biases (needs `pip install wandb`)
    tensorboard: bool = False  # also log TensorBoard events (needs `pip install tensorboard`)


@dataclass
class ChatStageConfig:
    """One chat stage (mid or sft): its task mixture and how it trains. Mixtures are comma-separated
    `task[:count]` entries (tasks in nanoforge.data.chat_tasks; count = how many of the task's examples, cycling
    over a downloaded dataset, and the number generated for a generated task; no count: the whole dataset)."""

    train_tasks: str = ""
    val_tasks: str = ""
    packing: str = "dense"  # dense: conversations packed into full rows (like pretraining) | pad: one per row
    num_iterations: int = 0  # 0: about one pass over train_tasks
    lr_scale: float = 1.0  # multiplies every train.*_lr
    device_batch_size: int = 0  # 0: train.device_batch_size
    total_batch_size: int = 0  # tokens per step; 0: train.total_batch_size (or its derived value)
    warmdown_ratio: float = 0.2  # fraction of steps at the end with the learning rate falling linearly to 0
    eval_every: int = 100
    eval_tokens: int = 1_048_576
    save_every: int = 200


@dataclass
class ChatConfig:
    """Midtraining and SFT (nanochat's mixtures), and who the model says it is (the identity task's template)."""

    identity_name: str = "nanoforge"
    identity_creator: str = "the nanoforge authors"
    identity_description: str = ("a small ChatGPT-style language model trained from scratch, from the tokenizer "
                                 "to the chat fine-tuning, on a few GPUs")
    mid: ChatStageConfig = field(default_factory=lambda: ChatStageConfig(
        train_tasks="smoltalk,mmlu,gsm8k,identity:2000,spelling:280000,arithmetic:20000",
        val_tasks="smoltalk,mmlu:5200,gsm8k:420",
        packing="dense", num_iterations=0, lr_scale=1.0, warmdown_ratio=0.2))
    sft: ChatStageConfig = field(default_factory=lambda: ChatStageConfig(
        train_tasks="arc-easy,arc-challenge,gsm8k,smoltalk:10000,identity:1000,spelling:600,arithmetic:600",
        val_tasks="smoltalk",
        packing="pad", num_iterations=0, lr_scale=0.02, device_batch_size=4, total_batch_size=65536,
        warmdown_ratio=1.0))


@dataclass
class RunConfig:
    preset: str = "d20"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def data_dir(self) -> Path:
        return Path(self.data.data_dir) if self.data.data_dir else nanoforge_home() / "data"


def nanoforge_home() -> Path:
    return Path(os.environ.get("NANOFORGE_HOME", Path.home() / ".cache" / "nanoforge"))


# Presets are partial dicts applied on top of the defaults.
PRESETS: dict[str, dict] = {
    "demo": {
        "model": {"depth": 4, "head_dim": 64, "vocab_size": 4096, "sequence_len": 256},
        "train": {
            "device_batch_size": 8,  # 4096 tokens split over 1 or 2 ranks (the local cluster's 2 fake GPUs)
            "total_batch_size": 4096,
            "num_iterations": 250,
            "eval_every": 50,
            "eval_tokens": 32768,
            "sample_every": 125,
            "save_every": 50,
            "warmdown_ratio": 0.3,
            "muon_momentum_warmup": 50,
        },
        "data": {"corpus": "demo", "tokenizer_threads": 1},
        "tokenizer": {"vocab_size": 4096, "max_chars": 20_000_000, "doc_cap": 10_000},
        "hardware": {"gpu": "cpu", "gpus_per_node": 1, "price_per_gpu_hour": 0.0},
        # Generated tasks only (the demo downloads nothing); mid + sft cost about half the base stage's steps.
        "chat": {
            "mid": {"train_tasks": "identity:500,spelling:4000,arithmetic:4000",
                    "val_tasks": "identity:40,spelling:200,arithmetic:200",
                    "num_iterations": 80, "eval_every": 40, "eval_tokens": 16384, "save_every": 40},
            "sft": {"train_tasks": "identity:300,spelling:1000,arithmetic:1000",
                    "val_tasks": "identity:40,spelling:200,arithmetic:200",
                    "num_iterations": 40, "device_batch_size": 8, "total_batch_size": 4096,
                    "eval_every": 20, "eval_tokens": 16384, "save_every": 20},
        },
    },
    # A small decoder for GitHub Actions workflows (`nanoforge workflows train`): the classic small-model recipe
    # (AdamW, warmup then cosine to 1/10, dropout), windows of 256 schema tokens, one GPU.
    "workflows": {
        "model": {"depth": 6, "head_dim": 64, "n_embd": 384, "n_head": 6, "vocab_size": 8192, "sequence_len": 256,
                  "dropout": 0.1},
        "train": {
            "device_batch_size": 32,
            "total_batch_size": 32 * 256 * 4,  # 32 rows x 4 micro-steps on one GPU
            "num_iterations": 100_000,
            "optimizer": "adamw",
            "adamw_lr": 3e-4,
            "weight_decay": 0.1,
            "adam_beta1": 0.9,
            "adam_beta2": 0.95,
            "grad_clip": 1.0,
            "schedule": "cosine",
            "warmup_steps": 2000,
            "final_lr_frac": 0.1,  # 3e-4 -> 3e-5
            "eval_every": 500,
            "eval_tokens": 4_194_304,
            "sample_every": 5000,
            "save_every": 5000,
            "log_every": 10,
        },
        "tokenizer": {"vocab_size": 8192},
        "hardware": {"gpu": "H100", "gpus_per_node": 1},
    },
    "d20": {
        "model": {"depth": 20},
        "train": {"device_batch_size": 32},
        "hardware": {"gpu": "A100-80GB", "gpus_per_node": 8},
    },
    "d26": {
        "model": {"depth": 26},
        "train": {"device_batch_size": 16},
        "hardware": {"gpu": "A100-80GB", "gpus_per_node": 8},
    },
}


def _field_types(cls) -> dict[str, type]:
    return typing.get_type_hints(cls)


def _coerce(value, typ, key: str):
    """Accept YAML scalars for a dataclass field; reject anything that is not exactly the right kind."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(
            f"config key '{key}' must be {typ.__name__}, got {value!r}; fix it in the YAML or with --set {key}=..."
        )
    return value


def _apply(obj, updates: dict, prefix: str = "") -> None:
    types = _field_types(type(obj))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in types:
            known = ", ".join(sorted(types))
            raise UserError(f"unknown config key '{key}'; known keys here: {known}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key '{key}' is a section; give keys under it, e.g. {key}.<name>=...")
            _apply(current, value, prefix=f"{key}.")
        else:
            setattr(obj, name, _coerce(value, types[name], key))


def parse_overrides(pairs: list[str]) -> dict:
    """['train.lr=0.1', ...] -> nested dict. Values are parsed as YAML scalars (so 1e-3, true, 8 work)."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects section.key=value, got '{pair}'")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{part}' is set twice in different ways")
        node[parts[-1]] = value
    return nested


def make_config(preset: str | None = None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Defaults <- preset <- base (a stored config.yaml) <- --set overrides, then validated."""
    cfg = RunConfig()
    if base is not None:
        preset_name = base.get("preset", preset or "d20")
    else:
        preset_name = preset or "d20"
    if preset_name not in PRESETS:
        raise UserError(f"unknown preset '{preset_name}'; choose one of: {', '.join(PRESETS)}")
    _apply(cfg, PRESETS[preset_name])
    cfg.preset = preset_name
    if base is not None:
        _apply(cfg, base)
    if overrides:
        _apply(cfg, parse_overrides(overrides))
    validate(cfg)
    return cfg


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; pass an existing file or use --preset") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def save_config(cfg: RunConfig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def validate(cfg: RunConfig) -> None:
    m, t = cfg.model, cfg.train
    positive = {
        "model.depth": m.depth,
        "model.head_dim": m.head_dim,
        "model.vocab_size": m.vocab_size,
        "model.sequence_len": m.sequence_len,
        "train.device_batch_size": t.device_batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"config key '{key}' must be positive, got {value}")
    if t.optimizer not in ("muon", "adamw"):
        raise UserError(f"train.optimizer must be 'muon' or 'adamw', got '{t.optimizer}'")
    if t.schedule not in ("trapezoid", "cosine"):
        raise UserError(f"train.schedule must be 'trapezoid' or 'cosine', got '{t.schedule}'")
    if t.compile not in ("auto", "on", "off"):
        raise UserError(f"train.compile must be auto, on or off, got '{t.compile}'")
    if set(m.window_pattern) - {"L", "S"} or not m.window_pattern:
        raise UserError(f"model.window_pattern must be letters L/S (e.g. SSSL), got '{m.window_pattern}'")
    if not 0.0 <= m.dropout < 1.0:
        raise UserError(f"model.dropout must be in [0, 1), got {m.dropout}")
    for name in ("mid", "sft"):
        chat_stage = getattr(cfg.chat, name)
        if chat_stage.packing not in ("dense", "pad"):
            raise UserError(f"chat.{name}.packing must be 'dense' or 'pad', got '{chat_stage.packing}'")
        if chat_stage.lr_scale <= 0 or chat_stage.num_iterations < 0 or chat_stage.device_batch_size < 0:
            raise UserError(f"chat.{name}: lr_scale must be > 0, num_iterations and device_batch_size >= 0")
    mc = cfg.metrics
    if mc.prometheus not in ("none", "http", "textfile", "pushgateway"):
        raise UserError(f"metrics.prometheus must be none, http, textfile or pushgateway, got '{mc.prometheus}'")
    if not 0 <= mc.http_port <= 65535:
        raise UserError(f"metrics.http_port must be 0 (pick a free port) or a port number, got {mc.http_port}")
    if mc.prometheus == "pushgateway" and not mc.pushgateway_url:
        raise UserError("metrics.prometheus=pushgateway needs metrics.pushgateway_url=http://HOST:9091")
    if mc.push_every_seconds < 0:
        raise UserError(f"metrics.push_every_seconds must be >= 0, got {mc.push_every_seconds}")
    width, heads, kv_heads = model_shape(m)
    if heads % kv_heads:
        raise UserError(f"model.n_kv_head={kv_heads} must divide the number of heads ({heads})")
    if width % heads or (width // heads) % 2:
        raise UserError(f"model width {width} must split into {heads} heads of even size (rotary embeddings)")


def model_shape(m: ModelConfig) -> tuple[int, int, int]:
    """(width, heads, kv heads) from the depth dial: width = aspect_ratio * depth rounded up to head_dim."""
    width = m.n_embd or math.ceil(m.aspect_ratio * m.depth / m.head_dim) * m.head_dim
    heads = m.n_head or max(1, width // m.head_dim)
    kv_heads = m.n_kv_head or heads
    return width, heads, kv_heads
