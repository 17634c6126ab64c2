"""Documents in, canonical JSON out: the one text form the schema tokenizer round-trips to.

Canonical form (docs/workflows.md):
- minified JSON (`,` and `:` without spaces), UTF-8, non-ASCII characters written as themselves;
- object keys in document order (a workflow's author order carries meaning: jobs and steps read top to bottom);
  a repeated key keeps its last value at its first position (what `json.loads` does);
- integers in plain decimal; other numbers as Python's shortest round-trip repr (`1.5`, `1e-05`, `2.0`);
  NaN and infinities are not JSON and are rejected;
- strings escaped the way `json.dumps(ensure_ascii=False)` escapes them (only `"`, `\\` and control characters).

YAML is read with the YAML 1.2 core rules instead of PyYAML's YAML 1.1 defaults, because 1.1 turns the workflow
key `on:` into the boolean True, `yes`/`off` into booleans, `010` into 8, `1:30` into 90 and dates into date
objects. Under 1.2 only true/false are booleans and those all stay as written.
"""

from __future__ import annotations

import json
import math
import re

import yaml


class DocumentError(ValueError):
    """A document that is not valid YAML/JSON, or holds something JSON cannot (NaN, a list as a key)."""


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema resolvers (see the module docstring for why)."""


_Yaml12Loader.yaml_implicit_resolvers = {}
_RESOLVERS = [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", list("~nN") + [""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
]
for _tag, _regex, _first in _RESOLVERS:
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(_regex), _first)


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
# Timestamps are not resolved implicitly any more; an explicit !!timestamp still yields a date, made a string below.


def _normalize(value, depth: int = 0):
    """PyYAML/JSON value -> plain JSON value (dict with str keys, list, str, int, float, bool, None)."""
    if depth > 500:
        raise DocumentError("document nests deeper than 500 levels")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out[_key_text(key)] = _normalize(item, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_normalize(item, depth + 1) for item in value]
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DocumentError(f"number {value!r} is not representable in JSON")
        return value
    if hasattr(value, "isoformat"):  # an explicitly tagged YAML timestamp
        return value.isoformat()
    if isinstance(value, bytes):
        raise DocumentError("binary (!!binary) values are not representable in JSON")
    raise DocumentError(f"value of type {type(value).__name__} is not representable in JSON")


def _key_text(key) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None or isinstance(key, (int, float)):
        return canonical_json(key)
    raise DocumentError(f"mapping key {key!r} is not a scalar; JSON keys must be strings")


def _reject_constant(name):
    raise DocumentError(f"{name} is not valid JSON")


def parse_document(text: str):
    """YAML or JSON text -> JSON value. JSON is tried first (it is also YAML, but parsing it as JSON is exact)."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            return _normalize(json.loads(text, parse_constant=_reject_constant))
        except json.JSONDecodeError:
            pass  # flow-style YAML, e.g. `{a: 1}`
        except RecursionError:
            raise DocumentError("document nests too deeply") from None
    try:
        documents = list(yaml.load_all(text, Loader=_Yaml12Loader))
    except yaml.YAMLError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DocumentError(f"not valid YAML or JSON: {first_line}") from None
    except RecursionError:
        raise DocumentError("document nests too deeply") from None
    if len(documents) != 1:
        raise DocumentError(f"expected one YAML document, found {len(documents)}")
    return _normalize(documents[0])


def canonical_json(value) -> str:
    """The canonical text of a JSON value (see the module docstring)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def canonical_number(value) -> str:
    return json.dumps(value, allow_nan=False)


def canonical(text: str) -> str:
    """Canonical JSON of a YAML or JSON document."""
    return canonical_json(parse_document(text))


def minified_json(text: str) -> str:
    """What the compare command feeds the general tokenizers: the canonical form (minified JSON)."""
    return canonical(text)
