"""What a chat or Responses request gets back: lorem text, JSON for a schema, or a tool call.

Tool choice follows the real models closely enough for gateway tests: with ``tools`` and
``tool_choice`` ``auto`` (the default) the mock calls a tool when the conversation ends with
a user turn, and answers in text once tool results (``role: "tool"`` messages or
``function_call_output`` items) come back. ``required`` and a named function always call;
``none`` never does. The call's ``arguments`` are JSON valid for the function's
``parameters``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import json_codec
from gateway.mock.content import hex_id
from gateway.mock.errors import invalid
from gateway.mock.schema_values import schema_value

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# Roughly OpenAI's four characters per token, so usage grows with the JSON.
_PIECE = 4


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


def pieces(text: str) -> list[str]:
    """``text`` cut into token-sized pieces, the unit of streaming and of usage."""
    return [text[i : i + _PIECE] for i in range(0, len(text), _PIECE)] or [""]


def tool_call(function: dict[str, Any], seed: str) -> ToolCall:
    parameters = function.get("parameters")
    schema = parameters if isinstance(parameters, dict) else _EMPTY_PARAMETERS
    value = schema_value(schema, seed + "|" + str(function.get("name")))
    return ToolCall(hex_id("call_"), str(function["name"]), json_codec.dumps(value).decode())


def _pick_tool(
    functions: dict[str, dict[str, Any]], choice: Any, user_last: bool, named: str | None
) -> dict[str, Any] | None:
    if choice is None:
        choice = "auto" if functions else "none"
    if choice == "none":
        return None
    if not functions:
        raise invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
        )
    if named is not None:
        if named not in functions:
            raise invalid(
                f"Invalid value for 'tool_choice': function '{named}' not found in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
        return functions[named]
    if choice == "required" or (choice == "auto" and user_last):
        return next(iter(functions.values()))
    if choice == "auto":
        return None
    raise invalid(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function.",
        param="tool_choice",
        code="invalid_value",
    )


# --- Chat Completions ------------------------------------------------------------------


def chat_tool(payload: dict[str, Any], messages: list[Any]) -> dict[str, Any] | None:
    """The function definition the reply calls, if any."""
    functions: dict[str, dict[str, Any]] = {}
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("Invalid type for 'tools': expected an array.", param="tools")
    for index, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(
                f"Missing required parameter: 'tools[{index}].function.name'.",
                param=f"tools[{index}].function.name",
                code="missing_required_parameter",
            )
        functions[function["name"]] = function
    choice = payload.get("tool_choice")
    named = None
    if isinstance(choice, dict):
        function = choice.get("function")
        named = str(function.get("name")) if isinstance(function, dict) else ""
    last = messages[-1] if messages else None
    user_last = isinstance(last, dict) and last.get("role") == "user"
    return _pick_tool(functions, choice, user_last, named)


def chat_json(payload: dict[str, Any], seed: str) -> str | None:
    """The JSON text ``response_format`` asks for, or None for a plain text answer."""
    fmt = payload.get("response_format")
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return _json_object(seed)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise invalid(
                "Missing required parameter: 'response_format.json_schema.name'.",
                param="response_format.json_schema.name",
                code="missing_required_parameter",
            )
        return _schema_json(spec.get("schema"), seed)
    return None


# --- Responses -------------------------------------------------------------------------


def responses_tool(payload: dict[str, Any]) -> dict[str, Any] | None:
    functions: dict[str, dict[str, Any]] = {}
    tools = payload.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue  # built-in tools (web search, ...) are never called by the mock
        if not isinstance(tool.get("name"), str):
            raise invalid(
                f"Missing required parameter: 'tools[{index}].name'.",
                param=f"tools[{index}].name",
                code="missing_required_parameter",
            )
        functions[tool["name"]] = tool
    choice = payload.get("tool_choice")
    named = None
    if isinstance(choice, dict):
        named = str(choice.get("name"))
    items = payload.get("input")
    user_last = True
    if isinstance(items, list) and items:
        last = items[-1]
        user_last = isinstance(last, dict) and last.get("role") == "user"
    if not functions and choice in (None, "auto"):
        return None
    return _pick_tool(functions, choice, user_last, named)


def responses_json(payload: dict[str, Any], seed: str) -> str | None:
    text = payload.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return _json_object(seed)
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str):
            raise invalid(
                "Missing required parameter: 'text.format.name'.",
                param="text.format.name",
                code="missing_required_parameter",
            )
        return _schema_json(fmt.get("schema"), seed)
    return None


def _json_object(seed: str) -> str:
    value = schema_value({"type": "object", "required": ["answer"]}, seed)
    return json_codec.dumps(value).decode()


def _schema_json(schema: Any, seed: str) -> str:
    if not isinstance(schema, dict):
        raise invalid("Invalid schema: expected an object.", param="schema", code="invalid_value")
    return json_codec.dumps(schema_value(schema, seed)).decode()
