"""The structured-output value generator against jsonschema, over OpenAI's schema subset."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mock.schema_values import schema_value

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 30},
        "age": {"type": "integer", "minimum": 18, "maximum": 20},
        "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "admin": {"type": "boolean"},
        "nickname": {"type": ["string", "null"]},
        "role": {"type": "string", "enum": ["owner", "member"]},
        "kind": {"const": "person"},
        "email": {"type": "string", "format": "email"},
        "born": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3},
        "nothing": {"type": "null"},
        "step": {"type": "integer", "multipleOf": 5, "minimum": 1},
        "short": {"type": "string", "maxLength": 2},
    },
    "required": [
        "name", "age", "score", "admin", "nickname", "role", "kind",
        "email", "born", "tags", "nothing", "step", "short",
    ],
    "additionalProperties": False,
}  # fmt: skip

TREE = {
    "type": "object",
    "properties": {"root": {"$ref": "#/$defs/node"}},
    "required": ["root"],
    "additionalProperties": False,
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                "parent": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
            },
            "required": ["value", "children", "parent"],
            "additionalProperties": False,
        }
    },
}

UNION = {
    "type": "object",
    "properties": {
        "item": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"sku": {"type": "string"}},
                    "required": ["sku"],
                    "additionalProperties": False,
                },
                {"type": "integer", "maximum": -5},
            ]
        },
        "legacy": {"$ref": "#/definitions/flag"},
    },
    "required": ["item", "legacy"],
    "definitions": {"flag": {"type": "boolean"}},
}


@pytest.mark.parametrize("schema", [PERSON, TREE, UNION], ids=["person", "tree", "union"])
@pytest.mark.parametrize("seed", ["", "a", "another seed"])
def test_values_validate(schema: dict[str, Any], seed: str) -> None:
    value = schema_value(schema, seed)
    jsonschema.validate(value, schema)
    assert schema_value(schema, seed) == value  # deterministic


def test_every_union_branch_is_reachable() -> None:
    seen = {type(schema_value(UNION, str(i))["item"]) for i in range(40)}
    assert seen == {dict, int}


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "string"},
        {"type": "number"},
        {"type": "number", "minimum": -3, "maximum": -2},
        {"type": "integer", "exclusiveMaximum": 0},
        {"type": "array"},
        {"type": "object"},
        {"type": "object", "properties": {}, "additionalProperties": False},
        {"type": ["null"]},
    ],
)
def test_small_schemas(schema: dict[str, Any]) -> None:
    jsonschema.validate(schema_value(schema, "x"), schema)


# --- property test: any schema of the supported subset gets a valid value ---------------

_names = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)


@st.composite
def _integer_schema(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    low = draw(st.none() | st.integers(-1000, 1000))
    high = draw(st.none() | st.integers(-1000, 1000))
    if low is not None and high is not None and low > high:
        low, high = high, low
    if low is not None:
        schema[draw(st.sampled_from(["minimum", "exclusiveMinimum"]))] = low
    if high is not None:
        key = draw(st.sampled_from(["maximum", "exclusiveMaximum"]))
        # Leave room for an integer between exclusive bounds.
        schema[key] = high + 2 if low is not None else high
    return schema


@st.composite
def _number_schema(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    low = draw(st.none() | st.floats(-1e6, 1e6))
    high = draw(st.none() | st.floats(-1e6, 1e6))
    if low is not None and high is not None:
        low, high = min(low, high), max(low, high) + 1.0
    if low is not None:
        schema[draw(st.sampled_from(["minimum", "exclusiveMinimum"]))] = low
    if high is not None:
        schema[draw(st.sampled_from(["maximum", "exclusiveMaximum"]))] = high
    return schema


@st.composite
def _string_schema(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    choice = draw(st.sampled_from(["plain", "enum", "format", "lengths"]))
    if choice == "enum":
        schema["enum"] = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    elif choice == "format":
        schema["format"] = draw(st.sampled_from(["date-time", "date", "email", "uuid", "uri"]))
    elif choice == "lengths":
        low = draw(st.integers(0, 40))
        schema["minLength"] = low
        schema["maxLength"] = low + draw(st.integers(0, 10))
    return schema


_leaves = st.one_of(
    _string_schema(),
    _integer_schema(),
    _number_schema(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(lambda v: {"const": v}, st.integers() | _names),
)


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def obj(props: dict[str, dict[str, Any]], strict: bool) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "properties": props}
        schema["required"] = list(props) if strict else list(props)[:1]
        schema["additionalProperties"] = False
        return schema

    def arr(items: dict[str, Any], low: int, extra: int) -> dict[str, Any]:
        return {"type": "array", "items": items, "minItems": low, "maxItems": low + extra}

    def nullable(schema: dict[str, Any]) -> dict[str, Any]:
        kind = schema.get("type")
        if isinstance(kind, str) and kind != "null":
            return {**schema, "type": [kind, "null"]}
        return schema

    return st.one_of(
        st.builds(obj, st.dictionaries(_names, children, max_size=4), st.booleans()),
        st.builds(arr, children, st.integers(0, 3), st.integers(0, 3)),
        st.builds(lambda bs: {"anyOf": bs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(nullable, children),
    )


_schemas = st.recursive(_leaves, _extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(schema=_schemas, seed=st.text(max_size=8))
def test_any_supported_schema_gets_a_valid_value(schema: dict[str, Any], seed: str) -> None:
    jsonschema.validate(schema_value(schema, seed), schema)


@settings(max_examples=100, deadline=None)
@given(schema=_schemas)
def test_schemas_behind_refs_get_valid_values(schema: dict[str, Any]) -> None:
    wrapped = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/thing"}, "b": {"$ref": "#/definitions/thing"}},
        "required": ["a", "b"],
        "$defs": {"thing": schema},
        "definitions": {"thing": schema},
    }
    jsonschema.validate(schema_value(wrapped), wrapped)
