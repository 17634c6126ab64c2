"""A draft-07 JSON Schema compiled into a grammar of nodes and variants.

A *node* is "the schema at one place in a document": a tuple of schemas that must all hold there (a conjunction,
so allOf and a property declared by several branches need no special case). Its combinators (`$ref`, `allOf`,
`anyOf`, `oneOf`, `type` lists, mixed-type `enum`) are multiplied out into *variants*: one JSON kind each
(object, array, string, number, boolean, null) with the local schemas that constrain it. The tokenizer spends a
token on the choice of variant only when a node has more than one; children (a property's node, an item's node)
are compiled lazily and memoized, so recursive schemas are fine.

Two uses, two levels of detail:
- *Structure* (encoding): kinds, declared properties, which keys are allowed and what schema their values have,
  item schemas, enum values. A value that does not fit falls back to generic JSON tokens.
- *Validity* (constrained generation): required, minProperties, minItems, minLength, pattern, dependencies,
  `not: {required: [...]}`, the `if {P: const C} then ...` form. Whatever a node uses beyond that (an overlapping
  oneOf, another `not` or `if`, bounds on numbers) marks the node `check_on_close`: a finished value there is
  checked with `jsonschema` before the grammar lets it close.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from itertools import product

import regex

KINDS = ("object", "array", "string", "number", "boolean", "null")
MAX_ALTERNATIVES = 256
# Keywords that only annotate; a schema with nothing else accepts anything.
ANNOTATIONS = {"$comment", "$id", "$schema", "description", "title", "default", "examples", "definitions",
               "markdownDescription", "deprecationMessage", "format", "readOnly", "writeOnly", "$ref"}
# Keywords whose effect the grammar does not model exactly: nodes using them are checked on close.
UNMODELED = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "maxLength",
             "maxProperties", "maxItems", "uniqueItems", "contains", "propertyNames", "else"}


class SchemaError(ValueError):
    """The schema uses something the compiler cannot follow (a remote $ref, a malformed keyword)."""


def _json_key(value) -> str:
    # True == 1 in Python; enum membership must compare JSON values, so compare their canonical text.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _kind_of(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass(eq=False)
class Variant:
    """One JSON kind at a node, with the local schemas (no combinators left) that constrain it."""

    grammar: "Grammar"
    kind: str
    conjuncts: tuple
    enum: list | None = None  # allowed values (all of this kind), None when free
    integer: bool = False
    # exactly one of these key sets must be present (merged `oneOf: [{required: [a]}, {required: [b]}]`)
    required_choices: list | None = None

    # ----- objects -----
    @cached_property
    def declared(self) -> list[str]:
        names: dict[str, None] = {}
        for c in self.conjuncts:
            for name in c.get("properties", {}):
                names[name] = None
        return [n for n in names if self.child(n) is not None]

    @cached_property
    def declared_set(self) -> frozenset:
        names = set()
        for c in self.conjuncts:
            names.update(c.get("properties", {}))
        return frozenset(names)

    @cached_property
    def required(self) -> frozenset:
        out = set()
        for c in self.conjuncts:
            out.update(c.get("required", []))
        return frozenset(out)

    @cached_property
    def min_properties(self) -> int:
        return max([c.get("minProperties", 0) for c in self.conjuncts] + [0])

    @cached_property
    def dependencies(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for c in self.conjuncts:
            for key, deps in c.get("dependencies", {}).items():
                if isinstance(deps, list):
                    out.setdefault(key, []).extend(deps)
        return out

    @cached_property
    def exclusive_sets(self) -> list[frozenset]:
        """`not: {required: [a, b]}`: a and b may not both be present."""
        out = []
        for c in self.conjuncts:
            negated = c.get("not")
            if isinstance(negated, dict) and set(negated) == {"required"}:
                out.append(frozenset(negated["required"]))
        return out

    @cached_property
    def conditionals(self) -> list[tuple[str, object, dict]]:
        """`if: {properties: {P: {const: C}}, required: [P]}, then: T` as (P, C, T)."""
        out = []
        for c in self.conjuncts:
            if "if" in c and _simple_condition(c["if"]) and isinstance(c.get("then"), dict) and "else" not in c:
                prop, value = _simple_condition(c["if"])
                out.append((prop, value, self.grammar.resolve(c["then"])))
        return out

    @cached_property
    def conditional_keys(self) -> frozenset:
        keys = set()
        for _, _, then in self.conditionals:
            keys.update(then.get("properties", {}))
        return frozenset(keys)

    def _schemas_for_key(self, key: str, extra: tuple = ()) -> tuple | None:
        schemas = []
        for c in self.conjuncts:
            found = False
            if key in c.get("properties", {}):
                schemas.append(c["properties"][key])
                found = True
            for pattern, sub in c.get("patternProperties", {}).items():
                if self.grammar.pattern(pattern).search(key):
                    schemas.append(sub)
                    found = True
            if not found and "additionalProperties" in c:
                schemas.append(c["additionalProperties"])
        schemas.extend(extra)
        if any(s is False for s in schemas):
            return None
        return tuple(s for s in schemas if s is not True)

    def child(self, key: str, extra: tuple = ()) -> "Node | None":
        """The node of the value under `key`, or None when the schema forbids the key."""
        schemas = self._schemas_for_key(key, extra)
        if schemas is None:
            return None
        node = self.grammar.node(schemas)
        return node if node.variants or node.is_any else None

    @cached_property
    def free_keys_allowed(self) -> bool:
        """Whether some key that is not declared can be present (via patternProperties or additionalProperties)."""
        return all(c.get("additionalProperties", True) is not False or c.get("patternProperties")
                   for c in self.conjuncts)

    def free_key_ok(self, key: str) -> bool:
        if key in self.declared_set:
            return False
        return self._schemas_for_key(key) is not None and self.child(key) is not None

    @cached_property
    def free_key_patterns(self) -> list[list]:
        """Per conjunct that forbids additional keys: the patterns a free key must match one of."""
        out = []
        for c in self.conjuncts:
            if c.get("additionalProperties", True) is False:
                out.append([self.grammar.partial_pattern(p) for p in c.get("patternProperties", {})])
        return out

    # ----- arrays -----
    def item(self, index: int) -> "Node | None":
        schemas = []
        for c in self.conjuncts:
            items = c.get("items")
            if isinstance(items, list):
                if index < len(items):
                    schemas.append(items[index])
                elif "additionalItems" in c:
                    schemas.append(c["additionalItems"])
            elif items is not None:
                schemas.append(items)
        if any(s is False for s in schemas):
            return None
        node = self.grammar.node(tuple(s for s in schemas if s is not True))
        return node if node.variants or node.is_any else None

    @cached_property
    def min_items(self) -> int:
        return max([c.get("minItems", 0) for c in self.conjuncts] + [0])

    # ----- strings and numbers -----
    @cached_property
    def patterns(self) -> list:
        return [self.grammar.partial_pattern(c["pattern"]) for c in self.conjuncts if "pattern" in c]

    @cached_property
    def min_length(self) -> int:
        return max([c.get("minLength", 0) for c in self.conjuncts] + [0])

    def string_ok(self, text: str) -> bool:
        return len(text) >= self.min_length and all(p.search(text) for p in self.patterns)

    def pattern_groups(self) -> list[list[str]]:
        """For the automata of constrained decoding: every group needs one matching pattern."""
        return [[p.pattern] for p in self.patterns]

    @cached_property
    def enum_keys(self) -> dict[str, object]:
        return {_json_key(v): v for v in (self.enum or [])}

    def fits(self, value) -> bool:
        """Can `value` be written in this variant's structure (validity aside)?"""
        kind = _kind_of(value)
        if kind != self.kind:
            return False
        if self.enum is not None:
            return _json_key(value) in self.enum_keys
        if self.integer:
            return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return True

    def fit_score(self, value) -> tuple:
        """Among variants that fit, prefer the one the value is most valid under (fewest fallbacks)."""
        if self.kind == "object":
            allowed = sum(1 for k in value if k in self.declared_set or self.free_key_ok(k))
            return (allowed - len(value), self.required.issubset(value))
        if self.kind == "string" and self.enum is None:
            return (0, self.string_ok(value))
        return (0, True)

    @property
    def forced(self) -> bool:
        """The value is determined by the variant alone (a const, a lone null): it costs no token."""
        if self.kind == "null":
            return True
        return self.enum is not None and len(self.enum) == 1


class StringUnion:
    """The free-string variants of a node with several variants, read as one: a string value there needs no
    variant marker (which of them it satisfies does not change how it decodes)."""

    kind = "string"
    enum = None
    integer = False
    forced = False

    def __init__(self, members: list[Variant]):
        self.members = members

    def string_ok(self, text: str) -> bool:
        return any(m.string_ok(text) for m in self.members)

    def pattern_groups(self) -> list[list[str]]:
        if any(not m.patterns for m in self.members):
            return []
        # one pattern per member (the usual case) is exact; with several, the first over-approximates and
        # string_ok still decides at the end
        return [[m.patterns[0].pattern for m in self.members]]


def _simple_condition(condition) -> tuple | None:
    if not isinstance(condition, dict) or set(condition) - {"properties", "required"}:
        return None
    props = condition.get("properties", {})
    if len(props) != 1:
        return None
    (name, sub), = props.items()
    if not isinstance(sub, dict) or set(sub) != {"const"} or condition.get("required") != [name]:
        return None
    return name, sub["const"]


@dataclass(eq=False)
class Node:
    index: int
    schemas: tuple
    variants: list[Variant] = field(default_factory=list)
    is_any: bool = False
    check_on_close: bool = False


class Grammar:
    """Compiles `schema` lazily; `root` is the document's node."""

    def __init__(self, schema: dict):
        if not isinstance(schema, (dict, bool)):
            raise SchemaError("a JSON Schema must be an object or a boolean")
        self.schema = schema
        self.nodes: list[Node] = []
        self._memo: dict[tuple, Node] = {}
        self._patterns: dict[str, re.Pattern] = {}
        self._validators: dict[int, object] = {}
        self.root = self.node((schema,))

    # ----- schema plumbing -----
    def resolve(self, schema, _seen: int = 0):
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise SchemaError(f"only local $ref is supported, got {ref!r}")
            target = self.schema
            for part in [p for p in ref[1:].split("/") if p]:
                part = part.replace("~1", "/").replace("~0", "~")
                try:
                    target = target[int(part)] if isinstance(target, list) else target[part]
                except (KeyError, IndexError, ValueError, TypeError):
                    raise SchemaError(f"$ref {ref!r} points nowhere") from None
            schema = target
            _seen += 1
            if _seen > 100:
                raise SchemaError(f"$ref {ref!r} loops")
        return schema

    def pattern(self, text: str) -> re.Pattern:
        if text not in self._patterns:
            self._patterns[text] = regex.compile(text)
        return self._patterns[text]

    def partial_pattern(self, text: str):
        """The pattern compiled with the `regex` module (its `.pattern` feeds the automata of constrain.py)."""
        return self.pattern(text)

    def validator(self, node: Node):
        """A jsonschema validator for the node's conjunction, resolving $refs against the whole schema."""
        if node.index not in self._validators:
            from jsonschema import Draft7Validator

            root = Draft7Validator(self.schema)
            self._validators[node.index] = root.evolve(schema={"allOf": list(node.schemas)})
        return self._validators[node.index]

    def subschema_validator(self, schema):
        key = ("sub", id(schema))
        if key not in self._validators:
            from jsonschema import Draft7Validator

            self._validators[key] = Draft7Validator(self.schema).evolve(schema=schema)
        return self._validators[key]

    # ----- compilation -----
    def node(self, schemas: tuple) -> Node:
        key = tuple(id(s) for s in schemas)
        if key in self._memo:
            return self._memo[key]
        node = Node(len(self.nodes), schemas)
        self._memo[key] = node
        self.nodes.append(node)
        alternatives, unmodeled = self._expand_all(schemas)
        node.check_on_close = unmodeled
        variants: list[Variant] = []
        seen: set = set()
        for conjuncts in alternatives:
            if all(not (set(c) - ANNOTATIONS) for c in conjuncts):
                node.is_any = True
            for variant in self._variants_of(conjuncts):
                ident = (variant.kind, tuple(id(c) for c in variant.conjuncts),
                         None if variant.enum is None else tuple(_json_key(v) for v in variant.enum), variant.integer)
                if ident not in seen:
                    seen.add(ident)
                    variants.append(variant)
        if node.is_any:
            variants = []
        node.variants = self._merge_required_choices(variants)
        kinds = [v.kind for v in node.variants]
        if len(set(kinds)) != len(kinds):
            node.check_on_close = node.check_on_close or self._has_one_of(schemas)
        return node

    def _merge_required_choices(self, variants: list[Variant]) -> list[Variant]:
        """Object variants that differ only in a `required` list (a step needs `uses` or `run`) become one
        variant with `required_choices`: one token fewer per step, and the choice is checked exactly."""
        groups: dict[tuple, list] = {}
        order: list = []
        for v in variants:
            if v.kind != "object":
                order.append(v)
                continue
            core = tuple(c for c in v.conjuncts if set(c) - ANNOTATIONS - {"required"})
            choice = frozenset(r for c in v.conjuncts if not set(c) - ANNOTATIONS - {"required"}
                               for r in c.get("required", []))
            key = tuple(id(c) for c in core)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append((v, core, choice))
        out = []
        for item in order:
            if isinstance(item, Variant):
                out.append(item)
                continue
            members = groups[item]
            if len(members) == 1:
                out.append(members[0][0])
                continue
            merged = Variant(self, "object", members[0][1])
            merged.required_choices = [choice for _, _, choice in members]
            out.append(merged)
        return out

    def _has_one_of(self, schemas, depth: int = 0) -> bool:
        if depth > 20:
            return True
        for s in schemas:
            s = self.resolve(s)
            if not isinstance(s, dict):
                continue
            if "oneOf" in s:
                return True
            subs = list(s.get("allOf", [])) + list(s.get("anyOf", []))
            if subs and self._has_one_of(tuple(subs), depth + 1):
                return True
        return False

    def _expand_all(self, schemas: tuple) -> tuple[list[list[dict]], bool]:
        alternatives: list[list[dict]] = [[]]
        unmodeled = False
        for s in schemas:
            alts, flag = self._expand(s, 0)
            unmodeled |= flag
            alternatives = [a + b for a, b in product(alternatives, alts)][:MAX_ALTERNATIVES]
        return alternatives, unmodeled

    def _expand(self, schema, depth: int) -> tuple[list[list[dict]], bool]:
        """Disjunctive normal form: a list of alternatives, each a list of combinator-free local schemas."""
        if depth > 50:
            raise SchemaError("schema combinators nest deeper than 50 levels")
        schema = self.resolve(schema)
        if schema is True:
            return [[]], False
        if schema is False:
            return [], False
        if not isinstance(schema, dict):
            raise SchemaError(f"a subschema must be an object or a boolean, got {schema!r}")
        unmodeled = bool(UNMODELED & set(schema))
        if "not" in schema and not (isinstance(schema["not"], dict) and set(schema["not"]) == {"required"}):
            unmodeled = True
        if "if" in schema and (not _simple_condition(schema["if"]) or "else" in schema):
            unmodeled = True
        if any(not isinstance(d, list) for d in schema.get("dependencies", {}).values()):
            unmodeled = True
        alternatives: list[list[dict]] = [[schema]]
        for sub in schema.get("allOf", []):
            alts, flag = self._expand(sub, depth + 1)
            unmodeled |= flag
            alternatives = [a + b for a, b in product(alternatives, alts)][:MAX_ALTERNATIVES]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                union: list[list[dict]] = []
                for branch in schema[key]:
                    alts, flag = self._expand(branch, depth + 1)
                    unmodeled |= flag
                    union.extend(alts)
                alternatives = [a + b for a, b in product(alternatives, union)][:MAX_ALTERNATIVES]
        return alternatives, unmodeled

    def _variants_of(self, conjuncts: list[dict]) -> list[Variant]:
        allowed = {"object", "array", "string", "number", "integer", "boolean", "null"}
        enum_values = None
        for c in conjuncts:
            if "type" in c:
                types = c["type"] if isinstance(c["type"], list) else [c["type"]]
                here = set(types)
                if "number" in here:
                    here.add("integer")
                allowed &= here
            values = None
            if "const" in c:
                values = [c["const"]]
            elif "enum" in c:
                values = list(c["enum"])
            if values is not None:
                if enum_values is None:
                    enum_values = values
                else:
                    keys = {_json_key(v) for v in values}
                    enum_values = [v for v in enum_values if _json_key(v) in keys]
        conj = tuple(conjuncts)
        out = []
        if enum_values is not None:
            by_kind: dict[str, list] = {}
            for v in enum_values:
                kind = _kind_of(v)
                if kind == "number":
                    ok = "number" in allowed or ("integer" in allowed and float(v).is_integer())
                else:
                    ok = kind in allowed
                if ok and kind not in ("object", "array"):
                    by_kind.setdefault(kind, []).append(v)
            for kind in KINDS:
                if kind in by_kind:
                    out.append(Variant(self, kind, conj, enum=by_kind[kind]))
            return out
        for kind in KINDS:
            if kind == "number":
                if "number" in allowed:
                    out.append(Variant(self, "number", conj))
                elif "integer" in allowed:
                    out.append(Variant(self, "number", conj, integer=True))
            elif kind in allowed:
                out.append(Variant(self, kind, conj))
        return out

    # ----- the whole reachable grammar (for the vocabulary) -----
    def walk(self, limit: int = 20000):
        """Every reachable node (declared properties and items followed), breadth first."""
        seen, queue = {self.root.index}, [self.root]
        while queue and len(seen) < limit:
            node = queue.pop(0)
            yield node
            for variant in node.variants:
                children = []
                if variant.kind == "object":
                    children = [variant.child(k) for k in variant.declared]
                    for c in variant.conjuncts:
                        for pattern in c.get("patternProperties", {}):
                            sub = c["patternProperties"][pattern]
                            children.append(self.node((sub,)) if isinstance(sub, dict) else None)
                        extra = c.get("additionalProperties")
                        if isinstance(extra, dict):
                            children.append(self.node((extra,)))
                elif variant.kind == "array":
                    children = [variant.item(i) for i in range(4)]
                for child in children:
                    if child is not None and child.index not in seen:
                        seen.add(child.index)
                        queue.append(child)

    def vocabulary_strings(self) -> list[str]:
        """Property names and string enum values the schema names: candidates for one-token literals."""
        out: dict[str, None] = {}
        for node in self.walk():
            for variant in node.variants:
                if variant.kind == "object":
                    for name in variant.declared:
                        out[name] = None
                elif variant.kind == "string" and variant.enum:
                    for value in variant.enum:
                        out[value] = None
        return list(out)
