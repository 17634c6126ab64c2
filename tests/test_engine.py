"""The inference engine on real models: the KV cache changes nothing (greedy, also across sliding windows),
seeded sampling is reproducible, tools run during generation, streamed text is whole UTF-8.

The tool and UTF-8 tests drive a real Engine with a scripted model: a module whose logits put all the weight on
the next token of a script, so what the engine must do with that token is known by construction."""

from __future__ import annotations

import torch
import torch.nn as nn

from nanoforge.model.gpt import GPT, GPTConfig
from nanoforge.model.load import load_model, load_tokenizer
from nanoforge.serve.chat import ChatSession
from nanoforge.serve.engine import Engine, SamplingParams, text_to_parts, tokens_to_parts
from nanoforge.tokenizer.bpe import Tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=24)


def test_kv_cache_generation_equals_recomputation(trained_tiny_run):
    model, _, _ = load_model(trained_tiny_run, "base")
    tok = load_tokenizer(trained_tiny_run)
    engine = Engine(model, tok)
    for text in ["The history of", "In 1905, a", "x"]:
        prompt = [tok.bos_id, *tok.encode(text)]
        params = SamplingParams(temperature=0, max_tokens=40)
        cached = engine.generate(prompt, params)
        assert cached == engine.generate_naive(prompt, params)
        assert len(cached[0]) > 0
    # Several samples from one shared prefill: the greedy rows are all the same as the single one.
    many = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=20, num_samples=3))
    assert many == [engine.generate(prompt, SamplingParams(temperature=0, max_tokens=20))[0]] * 3


def test_kv_cache_equals_recomputation_across_sliding_windows():
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=32, vocab_size=300, n_layer=3, n_head=4, n_kv_head=2, n_embd=64,
                       window_pattern="SL", sliding_window=6)
    model = GPT(config).eval()
    with torch.no_grad():  # the init zeroes output projections; give every layer something to do
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tok = Tokenizer({bytes([i]): i for i in range(256)})  # vocab 256 + specials < 300
    engine = Engine(model, tok)
    prompt = [tok.bos_id, *range(40, 50)]  # prompt and reply both cross the 6-token window
    params = SamplingParams(temperature=0, max_tokens=30)
    cached = engine.generate(prompt, params)
    assert cached == engine.generate_naive(prompt, params)
    assert len(set(cached[0])) > 1, "a degenerate model would make this test meaningless"


def test_seeded_sampling_is_reproducible(trained_tiny_run):
    model, _, _ = load_model(trained_tiny_run, "base")
    tok = load_tokenizer(trained_tiny_run)
    engine = Engine(model, tok)
    prompt = [tok.bos_id, *tok.encode("Once upon a time")]

    def sample(seed):
        return engine.generate(prompt, SamplingParams(temperature=1.0, top_k=50, top_p=0.95, max_tokens=30,
                                                      seed=seed, num_samples=3))

    first = sample(1)
    assert first == sample(1)
    assert first != sample(2)
    assert len({tuple(s) for s in first}) > 1, "the samples of one batch should differ"
    assert first == engine.generate_naive(prompt, SamplingParams(temperature=1.0, top_k=50, top_p=0.95,
                                                                 max_tokens=30, seed=1, num_samples=3))
    # top_k=1 is greedy whatever the temperature.
    top1 = engine.generate(prompt, SamplingParams(temperature=1.5, top_k=1, max_tokens=20, seed=3))
    assert top1 == engine.generate(prompt, SamplingParams(temperature=0, max_tokens=20))


class ScriptedModel(nn.Module):
    """A stand-in 'model' whose next token is a function of the sequence it has seen, like a real one, but
    chosen by `policy(generated_so_far)`. Works with and without the engine's KV cache."""

    def __init__(self, vocab_size: int, prompt_len: int, policy):
        super().__init__()
        self.config = GPTConfig(sequence_len=256, vocab_size=vocab_size, n_layer=1, n_head=1, n_kv_head=1, n_embd=2)
        self.wte = nn.Embedding(1, 2)
        self.rotary_len = 1024
        self.prompt_len, self.policy = prompt_len, policy
        self.seen: list[list[int]] = []

    def forward(self, idx, targets=None, kv_cache=None):
        rows = idx.tolist()
        if kv_cache is None or kv_cache.position == 0:
            self.seen = rows
        else:
            self.seen = [s + r for s, r in zip(self.seen * (len(rows) // len(self.seen)), rows)]
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        logits = torch.full((idx.size(0), idx.size(1), self.config.vocab_size), -20.0)
        for b, row in enumerate(self.seen):
            logits[b, -1, self.policy(row[self.prompt_len:])] = 20.0
        return logits


def scripted_engine(tok, prompt, script_before_tool, script_after_tool, **kw):
    """The model emits script_before_tool, then (once the tool's output has been forced in) script_after_tool,
    then <|assistant_end|>."""
    output_end, end = tok.special_id("output_end"), tok.special_id("assistant_end")

    def policy(generated):
        if output_end in generated:
            after = generated[generated.index(output_end) + 1:]
            return script_after_tool[len(after)] if len(after) < len(script_after_tool) else end
        if len(generated) < len(script_before_tool):
            return script_before_tool[len(generated)]
        return end  # only reached while the engine forces the tool output: ignored

    return Engine(ScriptedModel(tok.vocab_size, len(prompt), policy), tok, "cpu", **kw)


def test_calculator_output_is_inserted_during_generation(tiny_tokenizer_run):
    tok = load_tokenizer(tiny_tokenizer_run)
    prompt = [tok.bos_id, tok.special_id("user_start"), *tok.encode("what is 6 times 7?"),
              tok.special_id("user_end"), tok.special_id("assistant_start")]
    call = [tok.special_id("python_start"), *tok.encode("6*7"), tok.special_id("python_end")]
    engine = scripted_engine(tok, prompt, call, tok.encode(" so 42."))
    for use_cache in (True, False):
        steps = [t for step in engine.stream(prompt, GREEDY, use_cache=use_cache) for t in step]
        ids = [t.id for t in steps]
        assert tokens_to_parts(tok, ids) == [
            {"type": "python", "text": "6*7"},
            {"type": "python_output", "text": "42"},
            {"type": "text", "text": " so 42."},
        ]
        forced = [t.id for t in steps if t.forced]
        assert forced == [tok.special_id("output_start"), *tok.encode("42"), tok.special_id("output_end")]
        assert engine.finish_reason == "stop"
    text = "".join(engine.stream_text(prompt, GREEDY))
    assert text == "[python: 6*7] [output: 42]  so 42."
    # A client sending this text back as the assistant's turn gets the same special tokens re-rendered.
    assert text_to_parts(text) == tokens_to_parts(tok, ids)
    assert text_to_parts("no tools here") == "no tools here"


def test_refused_tool_call_gets_an_error_and_sandbox_is_off_by_default(tiny_tokenizer_run):
    tok = load_tokenizer(tiny_tokenizer_run)
    prompt = [tok.bos_id, tok.special_id("assistant_start")]
    code = "__import__('os').getpid()"
    call = [tok.special_id("python_start"), *tok.encode(code), tok.special_id("python_end")]
    parts = tokens_to_parts(tok, scripted_engine(tok, prompt, call, []).generate(prompt, GREEDY)[0])
    assert parts[1]["type"] == "python_output" and parts[1]["text"].startswith("error:")

    sandboxed = scripted_engine(tok, prompt, call, [], python_sandbox=True)
    parts = tokens_to_parts(tok, sandboxed.generate(prompt, GREEDY)[0])
    assert parts[1]["type"] == "python_output" and parts[1]["text"].isdigit()  # ran, in its own process


def test_streamed_text_never_splits_a_character(tiny_tokenizer_run):
    tok = load_tokenizer(tiny_tokenizer_run)
    prompt = [tok.bos_id]
    # "é" and "🙂" one byte per token: the bytes of one character arrive in separate steps.
    byte_ids = [tok.mergeable_ranks[bytes([b])] for b in "aé🙂b".encode("utf-8")]
    engine = scripted_engine(tok, prompt, byte_ids, [])
    pieces = list(engine.stream_text(prompt, GREEDY))
    assert "".join(pieces) == "aé🙂b"
    assert "\ufffd" not in "".join(pieces) and all(pieces)
    assert pieces == ["a", "é", "🙂", "b"]


def test_max_tokens_and_stop_reason(tiny_tokenizer_run):
    tok = load_tokenizer(tiny_tokenizer_run)
    prompt = [tok.bos_id]
    engine = scripted_engine(tok, prompt, tok.encode("one two three four five six"), [])
    out = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=3))
    assert len(out[0]) == 3 and engine.finish_reason == "length"
    out = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=100))
    assert tok.decode(out[0]) == "one two three four five six" and engine.finish_reason == "stop"
    out = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    assert len(out[0]) == 12 and engine.finish_reason == "length"


def test_chat_session_keeps_the_conversation(tiny_tokenizer_run):
    tok = load_tokenizer(tiny_tokenizer_run)
    reply = tok.encode("Hi!")
    end = tok.special_id("assistant_end")
    assistant_start = tok.special_id("assistant_start")

    def policy_for_any_prompt(row_generated):
        return reply[len(row_generated)] if len(row_generated) < len(reply) else end

    class Model(ScriptedModel):
        def forward(self, idx, targets=None, kv_cache=None):
            if kv_cache is None or kv_cache.position == 0:  # a new prompt: generation starts after it
                self.prompt_len = idx.size(1)
                self.prompts.append(idx[0].tolist())
            return super().forward(idx, targets, kv_cache)

    model = Model(tok.vocab_size, 0, policy_for_any_prompt)
    model.prompts = []
    session = ChatSession(Engine(model, tok, "cpu"), "sft", SamplingParams(temperature=0, max_tokens=10))
    assert "".join(session.reply("hello")) == "Hi!"
    assert "".join(session.reply("again")) == "Hi!"
    second_prompt = model.prompts[-1]
    assert second_prompt[-1] == assistant_start
    assert tok.decode(second_prompt).count("Hi!") == 1 and second_prompt.count(end) == 1
    session.clear()
    "".join(session.reply("fresh"))
    assert "hello" not in tok.decode(model.prompts[-1])


def test_sampling_filters_keep_only_the_allowed_tokens():
    from nanoforge.serve.engine import sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)

    def counts(**kw):
        ids = sample_next(logits, SamplingParams(temperature=1.0, **kw), generator)
        return torch.bincount(ids, minlength=4).tolist()

    assert counts(top_k=2)[2:] == [0, 0]
    assert counts(top_p=0.7)[2:] == [0, 0]  # 0.5 + 0.3 reaches 0.7: the rest is cut
    assert counts(top_p=0.85)[3] == 0 and counts(top_p=0.85)[2] > 0
    assert counts(top_p=0.4) == [2000, 0, 0, 0]  # the best token always stays
    plain = counts()
    assert all(c > 0 for c in plain) and abs(plain[0] / 2000 - 0.5) < 0.05
    assert sample_next(logits[:3], SamplingParams(temperature=0), None).tolist() == [0, 0, 0]
