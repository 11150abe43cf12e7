"""The structured-output value generator against jsonschema, over OpenAI's schema subset."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

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
