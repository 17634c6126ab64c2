"""The schema-aware tokenizer on the real GitHub workflow schema and the starter workflows: round trip,
fallback, robustness on arbitrary ids, and constrained generation that validates with jsonschema."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from jsonschema import Draft7Validator

from nanoforge.tokenizer.schema import SchemaTokenizer, default_schema_path, load_schema
from nanoforge.workflows.canonical import DocumentError, canonical, canonical_json, parse_document
from nanoforge.workflows.codec import EOS, FALLBACK, OBJ_END, TokenDecodeError

UNPARSEABLE_STARTERS = {"code-scanning__nowsecure.yml", "code-scanning__nowsecure-mobile-sbom.yml"}


@pytest.fixture(scope="module")
def starter_texts(shared_data) -> dict[str, str]:
    folder = shared_data / "workflows" / "starter"
    texts = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.y*ml"))}
    assert len(texts) == 175
    return texts


@pytest.fixture(scope="module")
def tok(starter_texts) -> SchemaTokenizer:
    return SchemaTokenizer.train(starter_texts.values(), load_schema(), vocab_size=8192)


@pytest.fixture(scope="module")
def small_tok(starter_texts) -> SchemaTokenizer:
    """A small vocabulary keeps the per-step masks cheap for the random walks."""
    return SchemaTokenizer.train(starter_texts.values(), load_schema(), vocab_size=1024)


def test_round_trip_every_starter_workflow(tok, starter_texts):
    unparseable = set()
    for name, text in starter_texts.items():
        try:
            expected = canonical(text)
        except DocumentError:
            unparseable.add(name)
            continue
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == expected, name
        assert tok.decode(ids + [tok.eos_id]) == expected
        assert json.loads(expected) == parse_document(text)
    assert unparseable == UNPARSEABLE_STARTERS


def test_fallback_is_reported_and_small_on_valid_workflows(tok, starter_texts):
    total = fallback = 0
    for text in starter_texts.values():
        try:
            ids, stats = tok.encode_with_stats(text)
        except DocumentError:
            continue
        assert stats.tokens == len(ids)
        total += stats.tokens
        fallback += stats.fallback_tokens
    print(f"fallback tokens over the starter workflows: {fallback}/{total} = {fallback / total:.4%}")
    assert fallback / total < 0.01

    # a document that breaks the schema in three places still round-trips, through the fallback
    broken = {"name": 7, "on": "push", "jobs": {"build": {"runs-on": "ubuntu-latest", "steps": [{"run": "make"}],
                                                          "not-a-job-key": {"x": [1, None]}}}, "extra": [[], {}]}
    ids, stats = tok.codec.encode_value(broken)
    assert stats.fallback_values == 3 and stats.fallback_tokens > 0
    assert FALLBACK in ids
    assert tok.decode(ids) == canonical_json(broken)


def test_yaml_and_json_spellings_give_the_same_tokens(tok, starter_texts):
    text = starter_texts["ci__python-package.yml"]
    as_json = json.dumps(parse_document(text), indent=2)
    assert tok.encode(as_json) == tok.encode(text)
    assert parse_document(text)["on"]  # the `on:` key survives YAML parsing as "on", not True


def test_yaml_1_1_quirks_are_not_applied():
    value = parse_document("on: [push]\nenv:\n  A: yes\n  B: off\n  C: 010\n  D: 1:30\n  E: 2024-01-02\n  F: 1.0\n")
    assert value == {"on": ["push"], "env": {"A": "yes", "B": "off", "C": 10, "D": "1:30", "E": "2024-01-02",
                                             "F": 1.0}}
    assert canonical("a: 1.0\nb: 100000000000000000000\nc: 'é'\n") == '{"a":1.0,"b":100000000000000000000,"c":"é"}'
    for bad in ("a: .nan\n", "[1, 2", "{\"a\": NaN}", "? [1, 2]\n: x\n", "---\na: 1\n---\nb: 2\n"):
        with pytest.raises(DocumentError):
            parse_document(bad)


EDGE_DOCUMENTS = [
    {}, [], [[]], [[], [[]]], "", "text", 0, -1.5, 1e-07, 2 ** 70, True, None,
    {"on": [123, "push"]},          # the first item of an array falls back
    {"on": ["push", 123]},          # a later item falls back
    {"on": {"push": None, "pull_request": {"branches": []}}},
    {"jobs": []},                   # wrong type for jobs
    {"jobs": {"a": {"runs-on": ["self-hosted", "linux"], "steps": [{"uses": "x@v1", "with": {"a": 1, "b": True}}]}}},
    {"permissions": "write-all", "concurrency": {"group": "${{ github.ref }}", "cancel-in-progress": True}},
    {"name": "ünïcødé ✓ 🚀 \u0000\t\"\\", "": {"": ""}},
    {"jobs": {"a": {"runs-on": "x", "strategy": {"matrix": {"py": [3.8, "3.10", None, {"k": [1]}]}}}}},
]


@pytest.mark.parametrize("value", EDGE_DOCUMENTS, ids=lambda v: canonical_json(v)[:40])
def test_edge_documents_round_trip(tok, value):
    ids = tok.encode_value(value)
    assert tok.decode(ids) == canonical_json(value)


def _random_json(rng: random.Random, depth: int = 0):
    choice = rng.randrange(9 if depth < 4 else 5)
    if choice == 0:
        return rng.choice(["", "push", "ubuntu-latest", "x y", "${{ a }}", "é\n"])
    if choice == 1:
        return rng.choice([0, 7, -3, 2.5, 1e21])
    if choice in (2, 3, 4):
        return rng.choice([True, False, None, "run", "name"])
    if choice in (5, 6):
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["on", "jobs", "name", "steps", "runs-on", "with", "env", "k", "", "push", "types"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_random_json_documents_round_trip(tok):
    rng = random.Random(7)
    for _ in range(500):
        value = _random_json(rng)
        assert tok.decode(tok.encode_value(value)) == canonical_json(value)


def test_arbitrary_token_ids_raise_one_clear_error(small_tok):
    """100k random sequences through decode and decode_prefix: only TokenDecodeError, never a crash."""
    tok = small_tok
    rng = np.random.default_rng(0)
    structural = np.arange(0, 13)
    literals = np.arange(109, tok.codec.bpe_base)
    pools = [np.arange(tok.vocab_size), np.concatenate([structural, np.arange(13, 45), literals[:64]])]
    errors = ok = 0
    for n in range(100_000):
        pool = pools[n % 2]
        ids = rng.choice(pool, size=int(rng.integers(0, 12))).tolist()
        try:
            tok.decode(ids)
            ok += 1
        except TokenDecodeError:
            errors += 1
        if n % 10 == 0:
            try:
                state = tok.decode_prefix(ids)
            except TokenDecodeError:
                continue
            state.partial_value()
            # whatever prefix a sampler holds (even one reached through fallback tokens), asking is safe
            mask = tok.allowed_next(state)
            assert mask.dtype == bool and mask.shape == (tok.vocab_size,)
            assert not (tok.finishing_next(state) & ~mask).any()
    assert issubclass(TokenDecodeError, ValueError)
    assert errors > 0
    for bad in ([-1], [tok.vocab_size], [2 ** 63], ["a"], [1.5], [True]):
        with pytest.raises(TokenDecodeError):
            tok.decode(bad)
    with pytest.raises(TokenDecodeError):
        tok.decode([OBJ_END, OBJ_END])  # a complete {} cannot go on
    # deep nesting stays bounded: an error, not a RecursionError
    generic_array = [FALLBACK, 7] * 5000
    with pytest.raises(TokenDecodeError):
        tok.decode(generic_array)


def test_decode_prefix_is_incremental(tok, starter_texts):
    ids = tok.encode(starter_texts["ci__node.js.yml"])
    state = tok.new_state()
    for i, token in enumerate(ids):
        assert not state.complete
        assert tok.allowed_next(state)[token], (i, tok.token_name(token))
        state.feed(token)
    assert state.complete
    assert tok.allowed_next(state)[EOS] and tok.allowed_next(state).sum() == 1
    half = tok.decode_prefix(ids[: len(ids) // 2])
    partial = half.partial_value()
    assert isinstance(partial, dict) and "on" in partial and not half.complete


def test_every_valid_starter_workflow_can_be_generated(tok, starter_texts):
    """Constrained decoding is not only sound but covers real workflows: each token of each valid starter
    workflow is allowed at its step, and EOS at the end."""
    validator = Draft7Validator(tok.schema)
    checked = 0
    for name, text in starter_texts.items():
        try:
            value = parse_document(text)
        except DocumentError:
            continue
        if not validator.is_valid(value):
            continue
        state = tok.new_state()
        for step, token in enumerate(tok.encode_value(value) + [EOS]):
            assert tok.allowed_next(state)[token], (name, step, tok.token_name(token))
            state.feed(token)
        checked += 1
    assert checked == 168


def _walk(tok, rng: random.Random, max_tokens: int = 1500, finish_after: int = 100):
    """Uniform random choice among the allowed tokens; past `finish_after` tokens, uniform among the allowed
    tokens that head for the end (`finishing_next`), so that the walk has a bounded length."""
    state = tok.new_state()
    ids = []
    for step in range(max_tokens):
        mask = tok.allowed_next(state)
        allowed = np.flatnonzero(mask)
        assert len(allowed), f"dead end after {[tok.token_name(t) for t in ids[-6:]]}"
        if mask[EOS]:
            return ids
        if step >= finish_after:
            finishing = tok.finishing_next(state)
            assert not (finishing & ~mask).any()
            allowed = np.flatnonzero(finishing)
        token = int(allowed[rng.randrange(len(allowed))])
        assert token != FALLBACK
        state.feed(token)
        ids.append(token)
    return None


def _walks_validate(tok, n_walks: int, seed: int) -> int:
    validator = Draft7Validator(tok.schema)
    rng = random.Random(seed)
    finished = 0
    for _ in range(n_walks):
        ids = _walk(tok, rng)
        if ids is None:
            continue
        finished += 1
        value = tok.decode_value(ids)
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (errors[:3], canonical_json(value)[:500])
    print(f"{finished} of {n_walks} constrained walks finished within 1500 tokens; all validate")
    return finished


def test_constrained_random_walks_always_validate(small_tok):
    assert _walks_validate(small_tok, 150, seed=1) >= 145


@pytest.mark.slow
def test_many_constrained_walks_with_the_full_vocabulary(tok):
    assert _walks_validate(tok, 1000, seed=2) >= 970


def test_save_load_gives_identical_tokens(tok, starter_texts, tmp_path):
    tok.save(tmp_path / "tok")
    loaded = SchemaTokenizer.load(tmp_path / "tok")
    assert loaded.vocab_size == tok.vocab_size and loaded.content_hash() == tok.content_hash()
    text = starter_texts["deployments__azure-webapps-node.yml"]
    assert loaded.encode(text) == tok.encode(text)
    assert json.loads((tmp_path / "tok" / "schema_tokenizer.json").read_text())["format"]


def test_position_tokens_have_their_own_range(tok):
    ids = {tok.position_token(k) for k in range(64)}
    assert len(ids) == 64 and tok.position_token(1000) == tok.position_token(63)
    used = set()
    for value in EDGE_DOCUMENTS:
        used.update(tok.encode_value(value))
    assert not used & ids


def test_shipped_schema_and_small_vocab_errors(starter_texts):
    assert default_schema_path().is_file()
    assert (default_schema_path().parent / "NOTICE.schemastore").is_file()
    from nanoforge.errors import UserError

    with pytest.raises(UserError, match="vocab size"):
        SchemaTokenizer.train(starter_texts.values(), None, vocab_size=300)
