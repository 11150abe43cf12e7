"""Reading request fields the way OpenAI validates them (only as far as the mock needs)."""

from __future__ import annotations

from typing import Any

from gateway.mock.errors import invalid


def require_model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise invalid(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    return model


def opt_int(payload: dict[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise invalid(
            f"Invalid type for '{key}': expected an integer.", param=key, code="invalid_type"
        )
    if value < low or (high is not None and value > high):
        raise invalid(
            f"Invalid '{key}': integer out of range ({value}).", param=key, code="invalid_value"
        )
    return value


def collect_text(obj: Any, out: list[str]) -> None:
    """Append every text-bearing string in a Responses ``input`` (messages, parts, outputs)."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, list):
        for item in obj:
            collect_text(item, out)
    elif isinstance(obj, dict):
        for key in ("content", "text", "output", "arguments"):
            if key in obj:
                collect_text(obj[key], out)


def messages_text(messages: list[Any]) -> str:
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise invalid(
                "Invalid 'messages': each message must be an object.",
                param="messages",
                code="invalid_type",
            )
        collect_text(message.get("content"), parts)
    return "".join(parts)


def include_usage(payload: dict[str, Any]) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int and t >= 0 for t in value)


def require_string(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise invalid(
            f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter"
        )
    return value
