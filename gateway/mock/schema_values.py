"""Deterministic values that satisfy a JSON Schema, for structured outputs and tool arguments.

Covers the subset OpenAI's structured outputs accept: ``object`` (``properties``,
``required``, ``additionalProperties``), ``array`` (``items``, ``minItems``, ``maxItems``),
``string`` (``enum``, ``const``, ``format``, ``minLength``/``maxLength``), ``number`` and
``integer`` (``minimum``/``maximum`` and their exclusive forms, ``multipleOf``),
``boolean``, ``null``, ``anyOf``, ``$ref`` into ``$defs``/``definitions``, and nullable
fields written as type lists. ``pattern`` is not honoured: no generator can satisfy every
regular expression, and the real model does not promise to either.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

from gateway.mock.content import N_WORDS, WORDS

# Recursive schemas (a tree of nodes) stop growing here: optional branches go null/empty.
MAX_DEPTH = 4
_DEFAULT_ITEMS = 2
_FORMATS = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "12:00:00Z",
    "duration": "P1D",
    "email": "mock@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
}


def schema_value(schema: Any, seed: str = "") -> Any:
    """A value valid for ``schema``; the same schema and seed always give the same value."""
    return _Generator(schema if isinstance(schema, dict) else {}).value(schema, seed, 0)


class _Generator:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return {}
            node = node[part]
        return node

    def value(self, schema: Any, path: str, depth: int) -> Any:
        if not isinstance(schema, dict):
            return None if schema is False else _words(path, 2)
        if "$ref" in schema:
            if depth > 2 * MAX_DEPTH:
                return None
            return self.value(self.resolve(str(schema["$ref"])), path, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[_pick(path, len(enum))]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                return self.value(self.branch(branches, path, depth), path, depth)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.value(_merge(self, all_of), path, depth)
        kind = self.kind(schema, depth)
        if kind == "object":
            return self.object(schema, path, depth)
        if kind == "array":
            return self.array(schema, path, depth)
        if kind == "string":
            return _string(schema, path)
        if kind == "integer":
            return _integer(schema, path)
        if kind == "number":
            return _number(schema, path)
        if kind == "boolean":
            return _pick(path, 2) == 0
        if kind == "null":
            return None
        return _words(path, 2)

    def kind(self, schema: dict[str, Any], depth: int) -> str:
        declared = schema.get("type")
        if isinstance(declared, str):
            return declared
        if isinstance(declared, list) and declared:
            kinds = [str(k) for k in declared]
            real = [k for k in kinds if k != "null"]
            # Deep in a recursive schema, null ends the recursion.
            if not real or ("null" in kinds and depth >= MAX_DEPTH):
                return "null"
            return real[0]
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return "any"

    def branch(self, branches: list[Any], path: str, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            for candidate in branches:
                if isinstance(candidate, dict) and candidate.get("type") == "null":
                    return candidate
            for candidate in branches:
                if isinstance(candidate, dict) and "$ref" not in candidate:
                    return candidate
        return branches[_pick(path, len(branches))]

    def object(self, schema: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        out: dict[str, Any] = {}
        if isinstance(props, dict):
            required = schema.get("required")
            needed = set(required) if isinstance(required, list) else set(props)
            for name, sub in props.items():
                # Optional properties are left out once recursion is deep.
                if name in needed or depth < MAX_DEPTH:
                    out[name] = self.value(sub, f"{path}.{name}", depth + 1)
        elif isinstance(schema.get("required"), list):
            for name in schema["required"]:
                out[str(name)] = _words(f"{path}.{name}", 1)
        return out

    def array(self, schema: dict[str, Any], path: str, depth: int) -> list[Any]:
        low = _int_field(schema, "minItems", 0) or 0
        high = _int_field(schema, "maxItems", None)
        count = low if depth >= MAX_DEPTH else max(low, _DEFAULT_ITEMS)
        if high is not None:
            count = min(count, high)
        items = schema.get("items", {})
        return [self.value(items, f"{path}[{i}]", depth + 1) for i in range(count)]


def _merge(gen: _Generator, parts: list[Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    props: dict[str, Any] = {}
    required: list[Any] = []
    for part in parts:
        if isinstance(part, dict) and "$ref" in part:
            part = gen.resolve(str(part["$ref"]))
        if not isinstance(part, dict):
            continue
        merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
        props.update(part.get("properties") or {})
        required.extend(part.get("required") or [])
    if props:
        merged["properties"] = props
        merged["required"] = required
    return merged


def _pick(path: str, n: int) -> int:
    return zlib.crc32(path.encode()) % n


def _words(path: str, count: int) -> str:
    start = zlib.crc32(path.encode())
    return " ".join(WORDS[(start + k) % N_WORDS] for k in range(count))


def _int_field(schema: dict[str, Any], key: str, default: int | None) -> int | None:
    value = schema.get(key)
    return value if type(value) is int and value >= 0 else default


def _string(schema: dict[str, Any], path: str) -> str:
    fmt = schema.get("format")
    text = _FORMATS[fmt] if isinstance(fmt, str) and fmt in _FORMATS else _words(path, 3)
    low = _int_field(schema, "minLength", 0) or 0
    high = _int_field(schema, "maxLength", None)
    while len(text) < low:
        text += " " + _words(text, 1)
    if high is not None:
        text = text[:high]
    return text


def _bounds(schema: dict[str, Any]) -> tuple[float, float]:
    low, high = -math.inf, math.inf
    if isinstance(schema.get("minimum"), int | float):
        low = float(schema["minimum"])
    if isinstance(schema.get("maximum"), int | float):
        high = float(schema["maximum"])
    return low, high


def _integer(schema: dict[str, Any], path: str) -> int:
    low, high = _bounds(schema)
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = max(low, math.floor(schema["exclusiveMinimum"]) + 1)
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = min(high, math.ceil(schema["exclusiveMaximum"]) - 1)
    lo = math.ceil(low) if low > -math.inf else None
    hi = math.floor(high) if high < math.inf else None
    step = schema.get("multipleOf")
    step = step if type(step) is int and step > 0 else 1
    if lo is None and hi is None:
        value = 1 + _pick(path, 100)
    elif lo is None:
        value = (hi or 0) - _pick(path, 100)
    elif hi is None:
        value = lo + _pick(path, 100)
    else:
        value = lo + _pick(path, hi - lo + 1) if hi >= lo else lo
    value = (value // step) * step
    if lo is not None and value < lo:
        value += step
    return int(value)


def _number(schema: dict[str, Any], path: str) -> float | int:
    if type(schema.get("multipleOf")) is int:
        return _integer(schema, path)
    low, high = _bounds(schema)
    ex_low = schema.get("exclusiveMinimum")
    ex_high = schema.get("exclusiveMaximum")
    if isinstance(ex_low, int | float):
        low = max(low, float(ex_low))
    if isinstance(ex_high, int | float):
        high = min(high, float(ex_high))
    fraction = (1 + _pick(path, 98)) / 100  # strictly inside (0, 1)
    if low > -math.inf and high < math.inf:
        return low + (high - low) * fraction
    if low > -math.inf:
        return low + fraction * 100
    if high < math.inf:
        return high - fraction * 100
    return round(fraction * 100, 2)
