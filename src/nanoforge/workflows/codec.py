"""Token ids <-> JSON values along a compiled schema grammar.

The layout of the vocabulary (ids in this order):
  13 structural tokens | 32 variant markers | 64 window-position tokens | literal strings | byte-level BPE.

How a value is written at a place whose schema node is N (docs/workflows.md has worked examples):
- N has one variant and the value fits it: only its body. A const or a lone null costs nothing.
- N has several variants: the value's literal token when that names the variant (an enum string, true, false,
  null); a free string directly (a literal, or BPE tokens then STR_END: which free-string variant it satisfies
  does not change how it decodes); else VARIANT_i and then the body. Array items and the root always take the marker for arrays and
  forced values (otherwise `[[]]` and `[]` would read the same).
- The value fits no variant: FALLBACK and the value in generic JSON tokens (G_OBJ/G_ARR/G_STR/G_NUM/...).
  At the start of an array, FALLBACK FALLBACK means "the first item falls back" (a single FALLBACK there means
  the whole array does).
Bodies: object = (key value)* OBJ_END; array = item* ARR_END; string = a literal token, or BPE tokens then
STR_END; number = its canonical text as a string body; boolean = TRUE/FALSE. A key is a literal token or a
string body; the object's variant then gives the key's value node.

Decoding runs one incremental state machine (`DecodeState`), used alike by `decode`, `decode_prefix` and
constrained sampling (`allowed_mask`). It keeps an explicit stack (no recursion) and grows by at most one frame
and one token's bytes per token, so arbitrary ids cost memory linear in their number and fail with
`TokenDecodeError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from nanoforge.workflows.canonical import canonical_number
from nanoforge.workflows.grammar import Grammar, Node, StringUnion, Variant, _json_key

STRUCTURAL = ("PAD", "EOS", "FALLBACK", "OBJ_END", "ARR_END", "STR_END", "G_OBJ", "G_ARR", "G_STR", "G_NUM",
              "TRUE", "FALSE", "NULL")
(PAD, EOS, FALLBACK, OBJ_END, ARR_END, STR_END, G_OBJ, G_ARR, G_STR, G_NUM, TRUE, FALSE, NULL) = range(13)
N_VARIANTS = 32
N_POSITIONS = 64
VARIANT_BASE = len(STRUCTURAL)
POSITION_BASE = VARIANT_BASE + N_VARIANTS
LITERAL_BASE = POSITION_BASE + N_POSITIONS
MAX_DEPTH = 512
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


class TokenDecodeError(ValueError):
    """Token ids that are not a document of this tokenizer (or not one that is allowed where it stands)."""


@dataclass
class EncodeStats:
    tokens: int = 0
    fallback_tokens: int = 0  # tokens spent on values the schema does not cover or that violate it
    fallback_values: int = 0

    def add(self, other: "EncodeStats") -> None:
        self.tokens += other.tokens
        self.fallback_tokens += other.fallback_tokens
        self.fallback_values += other.fallback_values

    @property
    def fallback_fraction(self) -> float:
        return self.fallback_tokens / self.tokens if self.tokens else 0.0


@dataclass
class Plan:
    """How a value at one node and kind of place starts (see the module docstring)."""

    direct: Variant | None = None
    literal_starts: dict = field(default_factory=dict)  # token -> (variant index, value)
    markers: dict = field(default_factory=dict)  # token -> variant index
    strings: StringUnion | None = None  # free-string variants: a literal, BPE or STR_END starts one directly


def _literal_key(value):
    return ("s", value) if isinstance(value, str) else ("j", _json_key(value))


class Codec:
    """Encoder and decoder state machine over one grammar, one literal list and one BPE."""

    def __init__(self, grammar: Grammar, literals: list[str], bpe_encoding, bpe_token_bytes: list[bytes]):
        self.grammar = grammar
        self.literals = list(literals)
        self.literal_ids = {s: LITERAL_BASE + i for i, s in enumerate(self.literals)}
        self.bpe_base = LITERAL_BASE + len(self.literals)
        self.bpe = bpe_encoding
        self.bpe_bytes = list(bpe_token_bytes)
        self.vocab_size = self.bpe_base + len(self.bpe_bytes)
        self._plans: dict[tuple, Plan] = {}
        self.masks = None  # built on first use by constrained decoding (nanoforge.workflows.constrain)

    # ----- plans -----
    def literal_token(self, value) -> int | None:
        if value is True:
            return TRUE
        if value is False:
            return FALSE
        if value is None:
            return NULL
        if isinstance(value, str):
            return self.literal_ids.get(value)
        return None

    def plan(self, node: Node, position: str) -> Plan:
        key = (node.index, position)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        plan = Plan()
        variants = node.variants
        only = variants[0] if len(variants) == 1 else None
        if only is not None and (position == "prop" or not (only.forced or only.kind == "array")):
            plan.direct = only
        else:
            free = [v for v in variants if v.kind == "string" and v.enum is None]
            if free:
                plan.strings = StringUnion(free)
            for i, variant in enumerate(variants):
                if plan.strings is not None and variant in free:
                    continue
                literal_ok = variant.kind in ("string", "boolean", "null") and (
                    variant.enum is not None or variant.kind == "null")
                values = [None] if variant.kind == "null" else (variant.enum or [])
                tokens = [self.literal_token(v) for v in values] if literal_ok else []
                if literal_ok and all(t is not None and t not in plan.literal_starts for t in tokens):
                    for t, v in zip(tokens, values):
                        plan.literal_starts[t] = (i, v)
                elif i < N_VARIANTS:
                    plan.markers[VARIANT_BASE + i] = i
        self._plans[key] = plan
        return plan

    # ----- encoding -----
    def encode_value(self, value) -> tuple[list[int], EncodeStats]:
        out: list[int] = []
        stats = EncodeStats()
        self._value(value, self.grammar.root, "root", out, stats)
        stats.tokens = len(out)
        return out, stats

    def _string(self, text: str, out: list[int]) -> None:
        token = self.literal_ids.get(text)
        if token is not None:
            out.append(token)
            return
        base = self.bpe_base
        out.extend(base + r for r in self.bpe.encode_ordinary(text))
        out.append(STR_END)

    def _generic(self, value, out: list[int]) -> None:
        if isinstance(value, dict):
            out.append(G_OBJ)
            for key, item in value.items():
                self._string(key, out)
                self._generic(item, out)
            out.append(OBJ_END)
        elif isinstance(value, list):
            out.append(G_ARR)
            for item in value:
                self._generic(item, out)
            out.append(ARR_END)
        elif isinstance(value, str):
            token = self.literal_ids.get(value)
            if token is not None:
                out.append(token)
            else:
                out.append(G_STR)
                self._string(value, out)
        elif value is True or value is False or value is None:
            out.append(self.literal_token(value))
        else:
            out.append(G_NUM)
            self._string(canonical_number(value), out)

    def _fallback(self, value, out, stats, marker: bool) -> None:
        start = len(out)
        if marker:
            out.append(FALLBACK)
        self._generic(value, out)
        stats.fallback_tokens += len(out) - start
        stats.fallback_values += 1

    def _value(self, value, node: Node | None, position: str, out: list[int], stats: EncodeStats) -> None:
        if node is None:  # the schema forbids this key or item: generic, and the decoder knows it
            self._fallback(value, out, stats, marker=False)
            return
        if node.is_any:
            self._generic(value, out)
            return
        plan = self.plan(node, position)
        if plan.direct is None and plan.strings is not None and isinstance(value, str):
            token = self.literal_ids.get(value)
            if token is not None and token in plan.literal_starts:
                out.append(token)  # an enum value: the same string whichever variant it names
                return
            if any(member.fits(value) for member in plan.strings.members):
                self._string(value, out)
                return
        best, best_score = None, None
        for i, variant in enumerate(node.variants):
            if plan.direct is None and VARIANT_BASE + i not in plan.markers and not any(
                    i == j for j, _ in plan.literal_starts.values()):
                continue
            if variant.fits(value):
                score = variant.fit_score(value)
                if best is None or score > best_score:
                    best, best_score = i, score
        if best is None:
            self._fallback(value, out, stats, marker=True)
            return
        variant = node.variants[best]
        if plan.direct is None:
            token = self.literal_token(value)
            start = plan.literal_starts.get(token) if token is not None else None
            if start is not None and start[0] == best:
                out.append(token)
                return
            out.append(VARIANT_BASE + best)
        if variant.forced:
            return
        self._body(value, variant, out, stats, at_start=plan.direct is not None)

    def _body(self, value, variant: Variant, out: list[int], stats: EncodeStats, at_start: bool) -> None:
        kind = variant.kind
        if kind == "object":
            for key, item in value.items():
                self._string(key, out)
                self._value(item, variant.child(key), "prop", out, stats)
            out.append(OBJ_END)
        elif kind == "array":
            for index, item in enumerate(value):
                start = len(out)
                self._value(item, variant.item(index), "item", out, stats)
                if at_start and index == 0 and len(out) > start and out[start] == FALLBACK:
                    out.insert(start, FALLBACK)
                    stats.fallback_tokens += 1
            out.append(ARR_END)
        elif kind == "string":
            if variant.enum is not None:
                out.append(self.literal_ids[value])
            else:
                self._string(value, out)
        elif kind == "number":
            self._string(canonical_number(value), out)
        elif kind == "boolean":
            out.append(TRUE if value else FALSE)
        # null: forced, nothing to write

    # ----- decoding -----
    def new_state(self) -> "DecodeState":
        return DecodeState(self)

    def decode_value(self, ids) -> object:
        state = DecodeState(self)
        for token in ids:
            state.feed(token)
        state.finish_input()
        if not state.complete:
            raise TokenDecodeError("the token ids end before the document does")
        return state.value


# ----- decoder frames -----
class _Frame:
    __slots__ = ("node", "at_start")

    def partial(self):
        return None


class _Value(_Frame):
    """Waiting for the first token of a value at a node with several variants (a literal or VARIANT_i)."""

    __slots__ = ("plan",)

    def __init__(self, node, plan):
        self.node, self.plan, self.at_start = node, plan, True


class _Generic(_Frame):
    """Waiting for the first token of a generic JSON value."""

    __slots__ = ("fallback",)

    def __init__(self, node, fallback):
        self.node, self.fallback, self.at_start = node, fallback, True


class _Forced(_Frame):
    """A value the schema fixes; it completes on the next token unless that token is FALLBACK."""

    __slots__ = ("value",)

    def __init__(self, node, value):
        self.node, self.value, self.at_start = node, value, True


class _Literal(_Frame):
    """One enum token (or TRUE/FALSE) of a variant with several allowed values."""

    __slots__ = ("variant", "tokens")

    def __init__(self, node, variant, tokens, at_start):
        self.node, self.variant, self.tokens, self.at_start = node, variant, tokens, at_start


class _String(_Frame):
    __slots__ = ("variant", "role", "buf", "generic")

    def __init__(self, node, variant, role, at_start, generic=False):
        self.node, self.variant, self.role, self.at_start = node, variant, role, at_start
        self.buf = bytearray()
        self.generic = generic

    def partial(self):
        return self.buf.decode("utf-8", errors="replace")


class _Object(_Frame):
    __slots__ = ("variant", "obj", "key", "expect", "generic")

    def __init__(self, node, variant, at_start, generic=False):
        self.node, self.variant, self.at_start, self.generic = node, variant, at_start, generic
        self.obj: dict = {}
        self.key = None
        self.expect = "key"  # key | keystr | value

    def partial(self):
        return self.obj


class _Array(_Frame):
    __slots__ = ("variant", "items", "generic", "first_fallback")

    def __init__(self, node, variant, at_start, generic=False):
        self.node, self.variant, self.at_start, self.generic = node, variant, at_start, generic
        self.items: list = []
        self.first_fallback = False

    def partial(self):
        return self.items


class DecodeState:
    """What a token prefix means so far; `feed` one token at a time (a sampler's per-step state)."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.stack: list[_Frame] = []
        self.complete = False
        self.ended = False  # EOS seen
        self.value = None
        self.n_tokens = 0
        self.fallback_tokens = 0
        self._push_value(codec.grammar.root, "root")

    # --- pushing frames ---
    def _push(self, frame: _Frame) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise TokenDecodeError(f"the document nests deeper than {MAX_DEPTH} levels")
        self.stack.append(frame)

    def _push_value(self, node: Node | None, position: str) -> None:
        if node is None:
            self._push(_Generic(None, fallback=True))
            return
        if node.is_any:
            self._push(_Generic(node, fallback=False))
            return
        plan = self.codec.plan(node, position)
        if plan.direct is None:
            self._push(_Value(node, plan))
            return
        variant = plan.direct
        if variant.forced:
            self._push(_Forced(node, None if variant.kind == "null" else variant.enum[0]))
        else:
            self._push_body(node, variant, at_start=True)

    def _push_body(self, node: Node, variant: Variant, at_start: bool) -> None:
        kind = variant.kind
        if kind == "object":
            self._push(_Object(node, variant, at_start))
        elif kind == "array":
            self._push(_Array(node, variant, at_start))
        elif kind == "string" and variant.enum is not None:
            tokens = {self.codec.literal_ids[v]: v for v in variant.enum}
            self._push(_Literal(node, variant, tokens, at_start))
        elif kind == "string":
            self._push(_String(node, variant, "value", at_start))
        elif kind == "number":
            self._push(_String(node, variant, "number", at_start))
        elif kind == "boolean":
            self._push(_Literal(node, variant, {TRUE: True, FALSE: False}, at_start))
        else:
            raise TokenDecodeError("internal: a null variant has no body")

    # --- completing values ---
    def _finish(self, value) -> None:
        self.stack.pop()
        if not self.stack:
            self.value = value
            self.complete = True
            return
        parent = self.stack[-1]
        if isinstance(parent, _Object):
            if parent.expect == "keystr":
                self._take_key(parent, value)
            else:
                parent.obj[parent.key] = value
                parent.key = None
                parent.expect = "key"
        elif isinstance(parent, _Array):
            parent.items.append(value)
        else:
            raise TokenDecodeError("internal: a value finished under a frame that holds none")

    def _take_key(self, frame: _Object, key: str) -> None:
        if key in frame.obj:
            raise TokenDecodeError(f"key {key!r} appears twice in one object")
        frame.key = key
        frame.expect = "value"
        frame.at_start = False
        if frame.generic:
            self._push(_Generic(None, fallback=False))
        else:
            self._push_value(frame.variant.child(key), "prop")

    def _fall_back(self) -> None:
        frame = self.stack.pop()
        self._push(_Generic(frame.node, fallback=True))

    # --- the public surface ---
    def feed(self, token) -> None:
        """Consume one token id; raises TokenDecodeError (and leaves the state unusable) when it cannot be."""
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise TokenDecodeError(f"token ids must be integers, got {token!r}")
        token = int(token)
        codec = self.codec
        if not 0 <= token < codec.vocab_size:
            raise TokenDecodeError(f"token id {token} is outside the vocabulary (0..{codec.vocab_size - 1})")
        self.n_tokens += 1
        if self.ended:
            raise TokenDecodeError("token after the end-of-document token")
        pending = token
        while pending is not None:
            if self.complete:
                if pending == EOS:
                    self.ended = True
                    return
                raise TokenDecodeError("token after the end of the document")
            pending = self._step(pending)

    def finish_input(self) -> None:
        """The ids ended: values the schema fixes that were still open complete now."""
        while self.stack and isinstance(self.stack[-1], _Forced):
            self._finish(self.stack[-1].value)

    def _step(self, token: int):
        """Give `token` to the top frame; return it again when the frame finished without consuming it."""
        codec = self.codec
        frame = self.stack[-1]
        if token == FALLBACK and frame.at_start and not isinstance(frame, (_Generic, _Array)):
            self._fall_back()
            self.fallback_tokens += 1
            return None
        if isinstance(frame, _Forced):
            self._finish(frame.value)
            return token
        if isinstance(frame, _Value):
            start = frame.plan.literal_starts.get(token)
            if start is not None:
                self._finish(start[1])
                return None
            index = frame.plan.markers.get(token)
            if index is None and frame.plan.strings is not None:
                if LITERAL_BASE <= token < codec.bpe_base:
                    self._finish(codec.literals[token - LITERAL_BASE])
                    return None
                if token == STR_END or token >= codec.bpe_base:
                    self.stack.pop()
                    self._push(_String(frame.node, frame.plan.strings, "value", at_start=False))
                    return token
            if index is None:
                raise TokenDecodeError(self._unexpected(token, "a value"))
            variant = frame.node.variants[index]
            self.stack.pop()
            if variant.forced:
                self._push(_Forced(frame.node, None if variant.kind == "null" else variant.enum[0]))
                self._finish(self.stack[-1].value)
            else:
                self._push_body(frame.node, variant, at_start=False)
            return None
        if isinstance(frame, _Generic):
            return self._step_generic(frame, token)
        if isinstance(frame, _Literal):
            if token not in frame.tokens:
                raise TokenDecodeError(self._unexpected(token, "one of the allowed values"))
            self._finish(frame.tokens[token])
            return None
        if isinstance(frame, _String):
            return self._step_string(frame, token)
        if isinstance(frame, _Object):
            if token == OBJ_END:
                self._finish(frame.obj)
                return None
            if LITERAL_BASE <= token < codec.bpe_base:
                self._take_key(frame, codec.literals[token - LITERAL_BASE])
                return None
            if token == STR_END or token >= codec.bpe_base:
                frame.expect = "keystr"
                frame.at_start = False
                self._push(_String(None, None, "key", at_start=False))
                return token
            raise TokenDecodeError(self._unexpected(token, "a key or the end of an object"))
        if isinstance(frame, _Array):
            if token == ARR_END:
                self._finish(frame.items)
                return None
            if frame.generic:
                self._push(_Generic(None, fallback=False))
                return token
            if token == FALLBACK and frame.at_start and not frame.first_fallback:
                frame.first_fallback = True  # FALLBACK FALLBACK: the first item falls back; else the array does
                return None
            if frame.first_fallback:
                frame.first_fallback = False
                frame.at_start = False
                if token != FALLBACK:
                    self.stack.pop()
                    self._push(_Generic(frame.node, fallback=True))
                    self.fallback_tokens += 1
                    return token
                self.fallback_tokens += 1
                self._push_value(frame.variant.item(len(frame.items)), "item")
                self._fall_back()
                return None
            frame.at_start = False
            self._push_value(frame.variant.item(len(frame.items)), "item")
            return token
        raise TokenDecodeError("internal: unknown frame")

    def _step_generic(self, frame: _Generic, token: int):
        codec = self.codec
        if frame.fallback:
            self.fallback_tokens += 1
        self.stack.pop()
        if token == G_OBJ:
            self._push(_Object(frame.node, None, at_start=False, generic=True))
        elif token == G_ARR:
            self._push(_Array(frame.node, None, at_start=False, generic=True))
        elif token == G_STR:
            self._push(_String(frame.node, None, "value", at_start=False, generic=True))
        elif token == G_NUM:
            self._push(_String(frame.node, None, "number", at_start=False, generic=True))
        elif token in (TRUE, FALSE, NULL):
            self.stack.append(frame)
            self._finish({TRUE: True, FALSE: False, NULL: None}[token])
        elif LITERAL_BASE <= token < codec.bpe_base:
            self.stack.append(frame)
            self._finish(codec.literals[token - LITERAL_BASE])
        else:
            self.stack.append(frame)
            raise TokenDecodeError(self._unexpected(token, "a JSON value"))
        return None

    def _step_string(self, frame: _String, token: int):
        codec = self.codec
        if token >= codec.bpe_base:
            frame.buf += codec.bpe_bytes[token - codec.bpe_base]
            frame.at_start = False
            return None
        if token == STR_END:
            try:
                text = frame.buf.decode("utf-8")
            except UnicodeDecodeError:
                raise TokenDecodeError("a string's bytes are not valid UTF-8") from None
        elif LITERAL_BASE <= token < codec.bpe_base and not frame.buf:
            text = codec.literals[token - LITERAL_BASE]
        else:
            raise TokenDecodeError(self._unexpected(token, "string bytes or the end of a string"))
        self._finish(parse_number(text) if frame.role == "number" else text)
        return None

    def _unexpected(self, token: int, wanted: str) -> str:
        return f"token {token} ({self.codec.token_name(token)}) where {wanted} was expected"

    def partial_value(self):
        """The value so far: finished parts as they are, open containers with what they hold, an open string
        as its text so far (bytes of a split character shown as U+FFFD)."""
        value = None
        for frame in reversed(self.stack):
            inner = value
            value = frame.partial()
            if isinstance(frame, _Object) and frame.key is not None and inner is not None:
                value = dict(value)
                value[frame.key] = inner
            elif isinstance(frame, _Array) and inner is not None:
                value = list(value) + [inner]
        return self.value if self.complete else value


def parse_number(text: str):
    if not _NUMBER_RE.fullmatch(text):
        raise TokenDecodeError(f"{text[:40]!r} is not a JSON number")
    try:
        if "." in text or "e" in text or "E" in text:
            value = float(text)
            if value != value or value in (float("inf"), float("-inf")):
                raise TokenDecodeError(f"number {text[:40]!r} is out of range")
            return value
        return int(text)
    except ValueError:
        raise TokenDecodeError(f"number {text[:40]!r} is too long") from None


def _token_name(codec: Codec, token: int) -> str:
    if token < VARIANT_BASE:
        return STRUCTURAL[token]
    if token < POSITION_BASE:
        return f"VARIANT_{token - VARIANT_BASE}"
    if token < LITERAL_BASE:
        return f"POSITION_{token - POSITION_BASE}"
    if token < codec.bpe_base:
        return f"literal {codec.literals[token - LITERAL_BASE]!r}"
    return f"bytes {codec.bpe_bytes[token - codec.bpe_base]!r}"


Codec.token_name = _token_name
