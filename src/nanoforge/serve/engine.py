"""The inference engine: prefill once, decode with a KV cache, sample, run tools, stream.

One prompt, several samples: the prompt is prefilled once with batch size 1 and its cache copied into every row
of the batch's cache, so n samples cost one prefill. Every row advances one position per step; when a row has
forced tokens queued (a tool's output), it feeds those instead of what it sampled, which keeps all rows at the
same position and lets them share one cache tensor.

The calculator tool: when a row emits <|python_start|> expr <|python_end|>, the engine evaluates expr with the
restricted calculator (or, only when enabled, in the sandboxed Python process) and forces
<|output_start|> result <|output_end|> into that row before the model continues.

`generate_naive` runs the same loop without a cache, recomputing the whole sequence each step; the tests use it
to check that the cache changes nothing.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from nanoforge.model.kv_cache import KVCache
from nanoforge.serve import tools

# How tool calls appear in streamed text (the CLI, the API, the page).
PYTHON_OPEN, PYTHON_CLOSE, OUTPUT_OPEN, OUTPUT_CLOSE = "[python: ", "]", " [output: ", "] "
TOOL_MARKERS = re.compile(r"\[python: (.*?)\](?: \[output: (.*?)\] )?", re.DOTALL)


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    max_tokens: int = 256
    seed: int | None = None
    num_samples: int = 1
    ignore_eos: bool = False  # keep going past end of turn (benchmarks: a fixed number of tokens per request)

    def validate(self) -> None:
        if not 0 <= self.temperature <= 10:
            raise ValueError("temperature must be between 0 and 10")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be at least 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.num_samples < 1:
            raise ValueError("num_samples must be at least 1")


@dataclass
class Token:
    """One produced token of one sample."""

    row: int
    id: int
    forced: bool  # inserted by a tool, not sampled


@dataclass
class _Row:
    forced: deque = field(default_factory=deque)
    in_python: bool = False
    python_ids: list[int] = field(default_factory=list)
    done: bool = False
    finish_reason: str | None = None


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) float logits -> (B,) token ids."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the ones ranked above it already reach top_p (the best token always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Engine:
    def __init__(self, model, tokenizer, device: str | torch.device | None = None, *,
                 python_sandbox: bool = False, tool_time_limit_s: float = tools.DEFAULT_TIME_LIMIT_S):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else model.wte.weight.device
        self.python_sandbox = python_sandbox
        self.tool_time_limit_s = tool_time_limit_s
        sp = tokenizer.special_id
        self.stop_ids = {sp("assistant_end"), tokenizer.bos_id}
        self.python_start, self.python_end = sp("python_start"), sp("python_end")
        self.output_start, self.output_end = sp("output_start"), sp("output_end")
        self.special_ids = set(tokenizer.special_ids.values())
        # The model's vocabulary may be padded past the tokenizer's; those ids decode to nothing and are never sampled.
        self.vocab_limit = tokenizer.vocab_size

    @property
    def max_context(self) -> int:
        """Positions the model can address (its rotary table); prompt + reply must fit."""
        return self.model.rotary_len

    # -- the decode loop -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def stream(self, prompt: list[int], params: SamplingParams, use_cache: bool = True) -> Iterator[list[Token]]:
        """Yield, step by step, the new token of every sample still running. Rows stop at <|assistant_end|> or
        <|bos|> (not included in the output) or after max_tokens."""
        params.validate()
        if not prompt:
            raise ValueError("the prompt must hold at least one token")
        if any(not 0 <= t < self.vocab_limit for t in prompt):
            raise ValueError(f"prompt token ids must be in 0..{self.vocab_limit - 1}")
        room = self.max_context - len(prompt)
        if room < 1:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the context ({self.max_context})")
        max_tokens = min(params.max_tokens, room)
        n = params.num_samples
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed if params.seed is not None else int(torch.seed() % 2**63))
        rows = [_Row() for _ in range(n)]

        with autocast_for(self.device):
            ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
            if use_cache:
                prefill_cache = KVCache.for_model(self.model, 1, len(prompt))
                logits = self.model(ids, kv_cache=prefill_cache)[:, -1]
                cache = KVCache.for_model(self.model, n, len(prompt) + max_tokens)
                cache.k[:, :, :, : len(prompt)] = prefill_cache.k
                cache.v[:, :, :, : len(prompt)] = prefill_cache.v
                cache.position = len(prompt)
                del prefill_cache
            else:
                logits = self.model(ids)[:, -1]
                sequence = ids.expand(n, -1)
            logits = logits.expand(n, -1).clone()

            for step in range(max_tokens):
                logits[:, self.vocab_limit:] = float("-inf")
                sampled = sample_next(logits, params, generator).tolist()
                produced: list[Token] = []
                next_ids: list[int] = []
                for i, row in enumerate(rows):
                    token, forced = (row.forced.popleft(), True) if row.forced else (sampled[i], False)
                    next_ids.append(token)
                    if row.done:
                        continue
                    if not forced and token in self.stop_ids and not params.ignore_eos:
                        row.done, row.finish_reason = True, "stop"
                        continue
                    produced.append(Token(i, token, forced))
                    self._track_tools(row, token)
                if produced:
                    yield produced
                if all(r.done for r in rows) or step == max_tokens - 1:
                    break
                step_ids = torch.tensor(next_ids, dtype=torch.long, device=self.device)[:, None]
                if use_cache:
                    logits = self.model(step_ids, kv_cache=cache)[:, -1]
                else:
                    sequence = torch.cat([sequence, step_ids], dim=1)
                    logits = self.model(sequence)[:, -1]
        for row in rows:
            if not row.done:
                row.finish_reason = "length"
        self.last_finish_reasons = [r.finish_reason for r in rows]

    def _track_tools(self, row: _Row, token: int) -> None:
        if token == self.python_start:
            row.in_python, row.python_ids = True, []
        elif token == self.python_end and row.in_python:
            row.in_python = False
            result = self.run_tool(self.tokenizer.decode(row.python_ids))
            row.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])
        elif row.in_python:
            row.python_ids.append(token)

    def run_tool(self, code: str) -> str:
        """The calculator first; the Python sandbox only when enabled and the code is not a plain expression."""
        try:
            return tools.format_result(tools.calculate(code, self.tool_time_limit_s))
        except tools.CalculatorError as exc:
            if not self.python_sandbox:
                return f"error: {exc}"
        result = tools.run_python(code)
        return result.output.strip() or ("ok" if result.ok else "error")

    # -- conveniences ----------------------------------------------------------------------------------------

    def generate(self, prompt: list[int], params: SamplingParams, use_cache: bool = True) -> list[list[int]]:
        """Every sample's completion (token ids, tool output included, stop token excluded)."""
        out: list[list[int]] = [[] for _ in range(params.num_samples)]
        for step in self.stream(prompt, params, use_cache=use_cache):
            for token in step:
                out[token.row].append(token.id)
        return out

    def generate_naive(self, prompt: list[int], params: SamplingParams) -> list[list[int]]:
        """The same generation recomputing the whole sequence every step (no cache); a reference, slow."""
        return self.generate(prompt, params, use_cache=False)

    def stream_text(self, prompt: list[int], params: SamplingParams) -> Iterator[str]:
        """Text pieces of one sample as they are produced. A character split across tokens is held back until its
        last byte arrives, so every piece is complete UTF-8. Tool calls show as [python: ...] and [output: ...]."""
        if params.num_samples != 1:
            raise ValueError("stream_text streams one sample; use stream() for several")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for step in self.stream(prompt, params):
            piece = self.token_text(step[0].id, decoder)
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def token_text(self, token: int, decoder) -> str:
        markers = {self.python_start: PYTHON_OPEN, self.python_end: PYTHON_CLOSE,
                   self.output_start: OUTPUT_OPEN, self.output_end: OUTPUT_CLOSE}
        if token in markers:
            return decoder.decode(b"", final=True) + markers[token]
        if token in self.special_ids:
            return ""
        return decoder.decode(self.tokenizer.id_to_bytes(token))

    @property
    def finish_reason(self) -> str | None:
        """Why the first sample of the last finished stream stopped: "stop" or "length"."""
        reasons = getattr(self, "last_finish_reasons", None)
        return reasons[0] if reasons else None


def text_to_parts(text: str) -> list[dict] | str:
    """The inverse of the streamed text's tool markers: an assistant reply as shown ("... [python: 6*7] [output:
    42] ...") back into parts, so a client that sends the conversation back (the web page, an OpenAI client) has
    its tool calls re-rendered with the special tokens the model produced. Plain text stays a string."""
    pieces = TOOL_MARKERS.split(text)
    if len(pieces) == 1:
        return text
    parts: list[dict] = []
    for i in range(0, len(pieces) - 1, 3):
        if pieces[i]:
            parts.append({"type": "text", "text": pieces[i]})
        parts.append({"type": "python", "text": pieces[i + 1]})
        if pieces[i + 2] is not None:
            parts.append({"type": "python_output", "text": pieces[i + 2]})
    if pieces[-1]:
        parts.append({"type": "text", "text": pieces[-1]})
    return parts


def tokens_to_parts(tokenizer, ids: list[int]) -> list[dict]:
    """A completion's token ids as assistant message parts (text, python, python_output), so a conversation's
    history is re-rendered with the same special tokens the model produced."""
    sp = tokenizer.special_id
    kinds = {sp("python_start"): ("python", sp("python_end")), sp("output_start"): ("python_output", sp("output_end"))}
    parts: list[dict] = []
    kind, end_id, chunk = "text", None, []

    def flush():
        if chunk:
            parts.append({"type": kind, "text": tokenizer.decode(chunk)})

    for token in ids:
        if kind == "text" and token in kinds:
            flush()
            (kind, end_id), chunk = kinds[token], []
        elif kind != "text" and token == end_id:
            if not chunk:
                parts.append({"type": kind, "text": ""})
            flush()
            kind, end_id, chunk = "text", None, []
        elif token not in tokenizer.special_ids.values():
            chunk.append(token)
    flush()
    return parts
