"""Validating JSON against component schemas of the official OpenAI OpenAPI spec.

The schemas come from ``tests/data/openapi_schemas.json`` (see ``tests/data/README.md``).
OpenAPI 3.0's ``nullable: true`` still appears in the 3.1 spec; JSON Schema ignores it, so it
is rewritten here as a ``null`` alternative before validation.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS_FILE = Path(__file__).resolve().parent.parent / "data" / "openapi_schemas.json"
_PREFIX = "#/components/schemas/"


def _allow_null(node: Any) -> Any:
    if isinstance(node, list):
        return [_allow_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _allow_null(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        elif isinstance(kind, list):
            out["type"] = [*kind, "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _document() -> dict[str, Any]:
    data = json.loads(SCHEMAS_FILE.read_text())
    return {"components": _allow_null(data["components"])}


def schema(name: str) -> dict[str, Any]:
    schemas: dict[str, Any] = _document()["components"]["schemas"]
    return dict(schemas[name])


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    root = {**_document(), "$ref": _PREFIX + name}
    cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator)
    return cls(root)


def validate(instance: Any, name: str) -> None:
    """Raise ``jsonschema.ValidationError`` (the most relevant one) unless ``instance`` fits."""
    error = jsonschema.exceptions.best_match(_validator(name).iter_errors(instance))
    if error is not None:
        raise error


@cache
def stream_event_schemas() -> dict[str, str]:
    """``ResponseStreamEvent`` member schema names by the event ``type`` they carry."""
    by_type: dict[str, str] = {}
    for member in schema("ResponseStreamEvent")["anyOf"]:
        name = member["$ref"][len(_PREFIX) :]
        kind = schema(name).get("properties", {}).get("type", {})
        for value in kind.get("enum", []) or [kind.get("const")]:
            if isinstance(value, str):
                by_type[value] = name
    return by_type
