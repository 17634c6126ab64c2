"""Which token may come next so that the document can still end valid under its schema.

`allowed_mask(state)` is what a sampler calls every step: a boolean mask over the vocabulary for the decoder
state it keeps feeding. It never allows FALLBACK (generic JSON may violate the schema) and it allows a closing
token (OBJ_END, ARR_END, STR_END, an enum literal) only when the value it closes is valid: required keys
present, exactly one of a `oneOf` of required lists, dependencies met, `not: {required: [...]}` respected,
minItems/minLength/minProperties reached, patterns matched (prefixes are kept matchable with the `regex`
module's partial matching), strings complete UTF-8. A node that uses more than that (`check_on_close`) has each
finished value checked with jsonschema. A key that an `if {P: const C} then` retypes (a workflow_dispatch
input's `default`) is only proposed before P; P's value is then limited to those whose `then` agrees.

Masks that depend only on the grammar (a node's first tokens, a variant's literal values) are cached on the
codec; string masks are cached by (constraint, bytes so far), so a sampler pays a regex scan over the BPE
vocabulary at most once per distinct string prefix.
"""

from __future__ import annotations

import codecs

import numpy as np
import regex

from nanoforge.workflows.codec import (ARR_END, EOS, FALSE, G_ARR, G_NUM, G_OBJ, G_STR, LITERAL_BASE, NULL, OBJ_END,
                                       STR_END, TRUE, Codec, DecodeState, TokenDecodeError, _Array, _Forced,
                                       _Generic, _Literal, _Object, _String, _Value, parse_number)
from nanoforge.workflows.grammar import Node, Variant

# Numbers the sampler may write: no exponent, bounded digits, so every one is a finite JSON number.
_NUMBER_PARTIAL = regex.compile(r"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,6})?")
_INTEGER_PARTIAL = regex.compile(r"-?(?:0|[1-9][0-9]{0,14})")
_CACHE_LIMIT = 4096


def _utf8_split(data: bytes) -> tuple[str, bytes] | None:
    """(decoded complete part, incomplete tail) or None when `data` is not a UTF-8 prefix that some bytes
    can complete (Python's incremental decoder accepts b'\\xed\\xa0', a surrogate that nothing completes)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=False)
    except UnicodeDecodeError:
        return None
    tail = decoder.getstate()[0]
    if tail and not _completable(tail):
        return None
    return text, tail


_COMPLETABLE: dict[bytes, bool] = {}


def _completable(tail: bytes) -> bool:
    result = _COMPLETABLE.get(tail)
    if result is None:
        lead = tail[0]
        length = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        result = False
        # only the second byte of a character is restricted beyond "a continuation byte"
        seconds = [bytes([c]) for c in range(0x80, 0xC0)] if len(tail) == 1 else [b""]
        for second in seconds:
            candidate = tail + second
            candidate += b"\x80" * (length - len(candidate))
            try:
                candidate.decode("utf-8")
                result = True
                break
            except UnicodeDecodeError:
                continue
        _COMPLETABLE[tail] = result
    return result


def _anchored(pattern: str) -> str:
    """A JSON Schema pattern (search semantics) as a full-match pattern for an automaton."""
    body = pattern
    body = body[1:] if body.startswith("^") else r"[\s\S]*(?:" + body + ")"
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    else:
        body = "(?:" + body + r")[\s\S]*"
    return body


class _Automaton:
    """A pattern compiled to a finite automaton (interegular), with the states that can still reach a match."""

    def __init__(self, pattern: str):
        import interegular
        from interegular.fsm import anything_else

        fsm = interegular.parse_pattern(_anchored(pattern)).to_fsm()
        self.map = fsm.map
        self.initial = fsm.initial
        self.alphabet = fsm.alphabet
        self.other = fsm.alphabet[anything_else] if anything_else in fsm.alphabet else None
        self.live = {state for state in fsm.states if fsm.islive(state)}
        # characters still needed to reach a match from each state (reverse breadth-first search)
        reverse: dict = {}
        for source, moves in fsm.map.items():
            for target in moves.values():
                reverse.setdefault(target, set()).add(source)
        self.distance = {state: 0 for state in fsm.finals}
        frontier = list(fsm.finals)
        while frontier:
            nxt = []
            for state in frontier:
                for source in reverse.get(state, ()):
                    if source not in self.distance:
                        self.distance[source] = self.distance[state] + 1
                        nxt.append(source)
            frontier = nxt

    def advance(self, state, text: str):
        for char in text:
            symbol = self.alphabet[char] if char in self.alphabet else self.other
            state = self.map.get(state, {}).get(symbol)
            if state is None or state not in self.live:
                return None
        return state


class StringConstraint:  # noqa: D101 (docstring below)
    """Viability of a growing string: every group needs one pattern that can still match."""

    def __init__(self, groups: list[list[str]]):
        self.groups = []
        for group in groups:
            compiled = []
            for pattern in group:
                try:
                    compiled.append(_Automaton(pattern))
                except Exception:  # syntax interegular cannot read: only the check on close applies
                    compiled.append(None)
            self.groups.append(compiled)

    def start(self):
        return tuple(tuple(a.initial if a is not None else "any" for a in group) for group in self.groups)

    def distance(self, state) -> int:
        """Characters still needed (at least) before every group can match."""
        total = 0
        for group, states in zip(self.groups, state):
            best = min((a.distance.get(s, 10 ** 6) if a is not None else 0)
                       for a, s in zip(group, states) if s is not None)
            total += best
        return total

    def advance(self, state, text: str):
        out = []
        for group, states in zip(self.groups, state):
            new = tuple(a.advance(s, text) if a is not None and s is not None else (s if a is None else None)
                        for a, s in zip(group, states))
            if all(x is None for x in new):
                return None
            out.append(new)
        return tuple(out)


_NUMBER_CONSTRAINT = {
    "number": [[r"^-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,6})?$"]],
    "integer": [[r"^-?(0|[1-9][0-9]{0,14})$"]],
}


class Masks:
    """Per-codec caches of masks that depend only on the grammar and the vocabulary."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.size = codec.vocab_size
        self.n_bpe = len(codec.bpe_bytes)
        self.bpe_base = codec.bpe_base
        self._tail_masks: dict[bytes, np.ndarray] = {}
        self._bpe_masks: dict[tuple, np.ndarray] = {}
        self._constraints: dict[tuple, StringConstraint] = {}
        self._static: dict[tuple, np.ndarray] = {}
        # the text of each BPE token that is whole UTF-8 by itself (constrained strings split only there)
        self.token_text = []
        for token in codec.bpe_bytes:
            try:
                self.token_text.append(token.decode("utf-8"))
            except UnicodeDecodeError:
                self.token_text.append(None)
        generic = np.zeros(self.size, dtype=bool)
        generic[[G_OBJ, G_ARR, G_STR, G_NUM, TRUE, FALSE, NULL]] = True
        generic[LITERAL_BASE:codec.bpe_base] = True
        self.generic_start = generic

    def empty(self) -> np.ndarray:
        return np.zeros(self.size, dtype=bool)

    def constraint(self, key, groups) -> StringConstraint | None:
        if not groups:
            return None
        if key not in self._constraints:
            self._constraints[key] = StringConstraint(groups)
        return self._constraints[key]

    def utf8_mask(self, tail: bytes) -> np.ndarray:
        """BPE tokens that keep `tail` (an unfinished character, or b'') a completable UTF-8 prefix."""
        mask = self._tail_masks.get(tail)
        if mask is None:
            mask = np.array([_utf8_split(tail + t) is not None for t in self.codec.bpe_bytes], dtype=bool)
            self._tail_masks[tail] = mask
        return mask

    def _constrained_bpe(self, key, constraint: StringConstraint, state) -> np.ndarray:
        cache_key = (key, state)
        mask = self._bpe_masks.get(cache_key)
        if mask is None:
            mask = np.zeros(self.n_bpe, dtype=bool)
            for index, text in enumerate(self.token_text):
                if text is not None and constraint.advance(state, text) is not None:
                    mask[index] = True
            if len(self._bpe_masks) > _CACHE_LIMIT:
                self._bpe_masks.clear()
            self._bpe_masks[cache_key] = mask
        return mask

    def string_mask(self, key, buf: bytes, groups, accept) -> np.ndarray:
        """Mask for an open string: BPE tokens after which the patterns in `groups` can still match, STR_END
        if `accept(text)`, literals (only as the first token) that `accept` takes whole."""
        mask = self.empty()
        split = _utf8_split(bytes(buf))
        if split is None:
            return mask
        text, tail = split
        constraint = self.constraint(key[:2], groups)
        if constraint is None:
            mask[self.bpe_base:] = self.utf8_mask(tail)
        elif not tail:
            state = constraint.advance(constraint.start(), text)
            if state is not None:
                mask[self.bpe_base:] = self._constrained_bpe(key[:2], constraint, state)
        if not tail and accept(text):
            mask[STR_END] = True
        if not buf:
            mask |= self.literal_mask(("lit",) + tuple(key), accept)
        return mask

    def closer_bpe(self, key, groups, buf: bytes) -> np.ndarray | None:
        """BPE tokens that bring a pattern-constrained string closer to matching (None: no patterns)."""
        constraint = self.constraint(key[:2], groups)
        split = _utf8_split(bytes(buf))
        if constraint is None or split is None or split[1]:
            return None
        state = constraint.advance(constraint.start(), split[0])
        if state is None:
            return None
        cache_key = ("closer", key[:2], state)
        mask = self._bpe_masks.get(cache_key)
        if mask is None:
            now = constraint.distance(state)
            mask = np.zeros(self.n_bpe, dtype=bool)
            for index, text in enumerate(self.token_text):
                if text is not None:
                    after = constraint.advance(state, text)
                    if after is not None and constraint.distance(after) < now:
                        mask[index] = True
            self._bpe_masks[cache_key] = mask
        return mask

    def literal_mask(self, key, accept) -> np.ndarray:
        mask = self._static.get(key)
        if mask is None:
            mask = self.empty()
            for i, text in enumerate(self.codec.literals):
                if accept(text):
                    mask[LITERAL_BASE + i] = True
            self._static[key] = mask
        return mask


def _masks(codec: Codec) -> Masks:
    if codec.masks is None:
        codec.masks = Masks(codec)
    return codec.masks


def _valid(codec: Codec, node: Node | None, value) -> bool:
    if node is None or not node.check_on_close:
        return True
    return codec.grammar.validator(node).is_valid(value)


# ----- strings -----
def _value_string_rules(codec: Codec, node: Node | None, variant: Variant | None, role: str):
    """(cache key, pattern groups, accept(text)) for a string or number body."""
    if role == "number":
        integer = variant is not None and variant.integer
        enum = variant.enum_keys if variant is not None and variant.enum is not None else None

        def accept(text):
            pattern = _INTEGER_PARTIAL if integer else _NUMBER_PARTIAL
            if not pattern.fullmatch(text):
                return False
            try:
                value = parse_number(text)
            except TokenDecodeError:
                return False
            if enum is not None and text not in enum:
                return False
            return _valid(codec, node, value)

        kind = "integer" if integer else "number"
        return ("num", kind, id(variant), id(node)), _NUMBER_CONSTRAINT[kind], accept
    if variant is None:
        return ("free", None), None, lambda text: True
    groups = variant.pattern_groups()

    def accept(text):
        return variant.string_ok(text) and _valid(codec, node, text)

    return ("str", id(variant), id(node)), groups, accept


def _key_rules(codec: Codec, frame: _Object):
    """(cache key, pattern groups, accept) for a key spelled out in an object; `accept` ignores the keys
    already present (callers remove those), so its masks can be cached per object variant."""
    if frame.generic:
        return ("gkey", None), None, (lambda text: True)
    variant = frame.variant
    groups = [[p.pattern for p in group] for group in variant.free_key_patterns]

    def accept(text):
        return variant.free_key_ok(text) and _key_allowed(variant, {}, text)

    return ("key", id(variant)), groups, accept


def _without_present(codec: Codec, mask: np.ndarray, present, text: str | None) -> np.ndarray:
    for key in present:
        token = codec.literal_ids.get(key)
        if token is not None:
            mask[token] = False
    if text is not None and text in present:
        mask[STR_END] = False
    return mask


def _string_mask(codec: Codec, state: DecodeState, frame: _String) -> np.ndarray:
    masks = _masks(codec)
    if frame.role == "key":
        parent = state.stack[-2]
        key, groups, accept = _key_rules(codec, parent)
        mask = masks.string_mask(key, frame.buf, groups, accept)
        if not parent.generic and parent.obj:
            # a key's acceptability also depends on its siblings (exclusive sets, oneOf of required lists)
            text = _utf8_split(bytes(frame.buf))
            if mask[STR_END] and text is not None and not _key_allowed(parent.variant, parent.obj, text[0]):
                mask[STR_END] = False
        split = _utf8_split(bytes(frame.buf))
        return _without_present(codec, mask, parent.obj, split[0] if split else None)
    key, groups, accept = _value_string_rules(codec, frame.node, frame.variant, frame.role)
    return masks.string_mask(key, frame.buf, groups, accept)


# ----- objects -----
def _choices_satisfied(variant: Variant, keys) -> int:
    return sum(1 for choice in variant.required_choices if choice <= keys)


def _key_allowed(variant: Variant, present, key: str, depth: int = 0) -> bool:
    if key in present:
        return False
    if key in variant.conditional_keys and any(prop in present for prop, _, _ in variant.conditionals):
        # an if/then retypes this key once its discriminator is known: only allowed before it (the
        # discriminator's value is then chosen to agree, see _conditional_filter)
        return False
    if variant.child(key) is None and (key in variant.declared_set or not variant.free_key_ok(key)):
        return False
    keys = set(present) | {key}
    for group in variant.exclusive_sets:
        if group <= keys:
            return False
    if variant.required_choices and _choices_satisfied(variant, keys) > 1:
        return False
    if depth == 0:
        # keys this one makes necessary (or that were already) must stay addable, or the object could never close
        needed = set(variant.required)
        for owner in keys:
            needed.update(variant.dependencies.get(owner, []))
        for dep in needed - keys:
            if not _key_allowed(variant, keys, dep, depth + 1):
                return False
    return True


def _object_closable(codec: Codec, frame: _Object) -> bool:
    if frame.generic:
        return True
    variant, obj = frame.variant, frame.obj
    keys = set(obj)
    if not variant.required <= keys or len(obj) < variant.min_properties:
        return False
    if variant.required_choices and _choices_satisfied(variant, keys) != 1:
        return False
    for key in keys:
        if not set(variant.dependencies.get(key, [])) <= keys:
            return False
    for prop, value, then in variant.conditionals:
        if prop in obj and obj[prop] == value and not set(then.get("required", [])) <= keys:
            return False
    return _valid(codec, frame.node, obj)


def _object_mask(codec: Codec, frame: _Object) -> np.ndarray:
    masks = _masks(codec)
    mask = masks.empty()
    present = frame.obj
    if frame.generic:
        mask |= masks.string_mask(("gkey", None), b"", None, lambda text: True)
        _without_present(codec, mask, present, "")
        mask[OBJ_END] = True
        return mask
    variant = frame.variant
    for key in variant.declared:
        token = codec.literal_ids.get(key)
        if token is not None and _key_allowed(variant, present, key):
            mask[token] = True
    if variant.free_keys_allowed:
        key, groups, accept = _key_rules(codec, frame)
        free = masks.string_mask(key, b"", groups, accept)
        if present:
            for token in np.flatnonzero(free[LITERAL_BASE:codec.bpe_base]):
                if not _key_allowed(variant, present, codec.literals[token]):
                    free[LITERAL_BASE + token] = False
            if free[STR_END] and not _key_allowed(variant, present, ""):
                free[STR_END] = False
        mask |= free
    if _object_closable(codec, frame):
        mask[OBJ_END] = True
    return mask


# ----- value starts -----
def _start_mask(codec: Codec, node: Node | None, position: str) -> np.ndarray:
    """First tokens of a value at `node` (cached: it does not depend on the state)."""
    masks = _masks(codec)
    if node is None:
        return masks.empty()
    if node.is_any:
        return masks.generic_start
    key = ("start", node.index, position)
    mask = masks._static.get(key)
    if mask is not None:
        return mask
    masks._static[key] = masks.empty()  # a recursive schema reaching itself adds nothing new
    plan = codec.plan(node, position)
    if plan.direct is not None:
        mask = _body_start_mask(codec, node, plan.direct)
    else:
        mask = _multi_start_mask(codec, node, plan)
    masks._static[key] = mask
    return mask


def _body_start_mask(codec: Codec, node: Node, variant: Variant) -> np.ndarray:
    masks = _masks(codec)
    kind = variant.kind
    if kind == "object":
        return _object_mask(codec, _Object(node, variant, at_start=False))
    if kind == "array":
        return _array_mask(codec, _Array(node, variant, at_start=False))
    if kind == "string" and variant.enum is not None:
        return _literal_mask(codec, node, variant, {codec.literal_ids[v]: v for v in variant.enum})
    if kind == "boolean":
        return _literal_mask(codec, node, variant, {TRUE: True, FALSE: False})
    if kind in ("string", "number"):
        role = "number" if kind == "number" else "value"
        key, groups, accept = _value_string_rules(codec, node, variant, role)
        return masks.string_mask(key, b"", groups, accept)
    mask = masks.empty()
    return mask


def _literal_mask(codec: Codec, node: Node, variant: Variant, tokens: dict) -> np.ndarray:
    masks = _masks(codec)
    key = ("litvals", id(variant), node.index)
    mask = masks._static.get(key)
    if mask is None:
        mask = masks.empty()
        for token, value in tokens.items():
            if (variant.kind != "string" or variant.string_ok(value)) and _valid(codec, node, value):
                mask[token] = True
        masks._static[key] = mask
    return mask


def _array_mask(codec: Codec, frame: _Array) -> np.ndarray:
    masks = _masks(codec)
    if frame.generic:
        mask = masks.generic_start.copy()
        mask[ARR_END] = True
        return mask
    variant = frame.variant
    item = variant.item(len(frame.items))
    mask = _start_mask(codec, item, "item").copy() if item is not None else masks.empty()
    if len(frame.items) >= variant.min_items and _valid(codec, frame.node, frame.items):
        mask[ARR_END] = True
    return mask


def allowed_mask(state: DecodeState) -> np.ndarray:
    """Boolean mask over the vocabulary of the tokens that keep the document schema-valid (see module doc)."""
    codec = state.codec
    masks = _masks(codec)
    if state.ended:
        return masks.empty()
    state.finish_input()  # constrained decoding never falls back, so values the schema fixes are final now
    if state.complete:
        mask = masks.empty()
        mask[EOS] = True
        return mask
    frame = state.stack[-1]
    if isinstance(frame, _Value):
        mask = _value_frame_mask(codec, frame)
        literals = {token: value for token, (_, value) in frame.plan.literal_starts.items()}
        return _conditional_filter(codec, state, mask, literals)
    if isinstance(frame, _Generic):
        return masks.generic_start.copy()
    if isinstance(frame, _Literal):
        mask = _literal_mask(codec, frame.node, frame.variant, frame.tokens).copy()
        return _conditional_filter(codec, state, mask, frame.tokens)
    if isinstance(frame, _String):
        if frame.generic and frame.role != "key":
            if frame.role == "number":
                return masks.string_mask(("num", "number", None, None), frame.buf, _NUMBER_CONSTRAINT["number"],
                                         lambda text: _NUMBER_PARTIAL.fullmatch(text) is not None)
            return masks.string_mask(("gstr", None), frame.buf, None, lambda text: True)
        return _string_mask(codec, state, frame)
    if isinstance(frame, _Object):
        return _object_mask(codec, frame)
    if isinstance(frame, _Array):
        return _array_mask(codec, frame)
    if isinstance(frame, _Forced):  # finish_input resolved these
        return masks.empty()
    return masks.empty()


def _conditional_filter(codec: Codec, state: DecodeState, mask: np.ndarray, literals: dict) -> np.ndarray:
    """When the value being chosen is an if/then discriminator (a workflow_dispatch input's `type`), drop the
    values whose `then` the keys already present would break (`default: true` rules out `type: string`)."""
    if len(state.stack) < 2:
        return mask
    parent = state.stack[-2]
    if not isinstance(parent, _Object) or parent.generic or not parent.variant.conditionals:
        return mask
    grammar = codec.grammar
    for prop, value, then in parent.variant.conditionals:
        if prop != parent.key:
            continue
        for token, candidate in literals.items():
            if not mask[token] or candidate != value or type(candidate) is not type(value):
                continue
            for key, sub in then.get("properties", {}).items():
                if key in parent.obj and not grammar.subschema_validator(sub).is_valid(parent.obj[key]):
                    mask[token] = False
    return mask


def _value_frame_mask(codec: Codec, frame: _Value) -> np.ndarray:
    masks = _masks(codec)
    key = ("valueframe", frame.node.index, id(frame.plan))
    mask = masks._static.get(key)
    if mask is None:
        mask = _multi_start_mask(codec, frame.node, frame.plan)
        masks._static[key] = mask
    return mask.copy()


def _multi_start_mask(codec: Codec, node: Node, plan) -> np.ndarray:
    """First tokens of a value at a node with several variants: literals that name a variant, free strings,
    and the markers of variants that can produce a valid value."""
    masks = _masks(codec)
    mask = masks.empty()
    for token, (index, value) in plan.literal_starts.items():
        variant = node.variants[index]
        if (variant.kind != "string" or variant.string_ok(value)) and _valid(codec, node, value):
            mask[token] = True
    if plan.strings is not None:
        key, groups, accept = _value_string_rules(codec, node, plan.strings, "value")
        mask |= masks.string_mask(key, b"", groups, accept)
    for token, index in plan.markers.items():
        variant = node.variants[index]
        if variant.forced:
            value = None if variant.kind == "null" else variant.enum[0]
            mask[token] = _valid(codec, node, value)
        elif _body_start_mask(codec, node, variant).any():
            mask[token] = True
    return mask


def finishing_mask(state: DecodeState) -> np.ndarray:
    """Among the allowed tokens, those that head for the end of the document: a closing token (or EOS) when
    one is allowed; inside a string that must match a pattern, the tokens that bring it closer to a match;
    else one-token values (literals, true/false/null); else all allowed tokens. A sampler that has run out of
    length budget masks with this instead of `allowed_mask` to finish the document it has started."""
    allowed = allowed_mask(state)
    codec = state.codec
    closers = np.zeros_like(allowed)
    closers[[STR_END, OBJ_END, ARR_END, EOS]] = True
    closers &= allowed
    if closers.any():
        return closers
    frame = state.stack[-1] if state.stack else None
    if isinstance(frame, _String) and not frame.generic and frame.role != "key":
        key, groups, _ = _value_string_rules(codec, frame.node, frame.variant, frame.role)
        closer = _masks(codec).closer_bpe(key, groups, frame.buf)
        if closer is not None:
            toward = np.zeros_like(allowed)
            toward[codec.bpe_base:] = closer
            toward &= allowed
            if toward.any():
                return toward
    one_token = np.zeros_like(allowed)
    one_token[[TRUE, FALSE, NULL]] = True
    one_token[LITERAL_BASE:codec.bpe_base] = True
    one_token &= allowed
    return one_token if one_token.any() else allowed
