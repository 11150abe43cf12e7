"""Validation of the request fields the gateway acts on, with OpenAI's own wording.

Only fields the gateway itself reads are checked: a wrong type there would make it reserve,
route or rewrite on garbage. Everything else is the upstream's job.
"""

from __future__ import annotations

from typing import Any

from gateway import json_codec
from gateway.errors import InvalidRequestError

#: Ordered from cheapest to most expensive, so a policy can cap effort by index.
REASONING_EFFORTS: tuple[str, ...] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
EFFORT_SET = frozenset(REASONING_EFFORTS)

#: No model produces this many tokens; anything above is garbage that would only poison the
#: quota arithmetic (and Redis' integer range) downstream.
MAX_OUTPUT_TOKENS = 10_000_000
#: OpenAI allows at most 128 choices; the bound is looser so the upstream, not the gateway,
#: decides what is valid, while still keeping reservations (limit x n) finite.
MAX_CHOICES = 1_000

#: What decoding untrusted JSON can raise (stdlib json raises RecursionError on deep nesting).
BAD_JSON: tuple[type[Exception], ...] = (*json_codec.JSONDecodeError, RecursionError, TypeError)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def wrong_type(param: str, expected: str, value: object) -> InvalidRequestError:
    # Same wording as OpenAI's own validation errors, so clients see familiar messages.
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
    )


def require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", param=None)
    return body


def model(body: dict[str, Any], *, required: bool) -> str | None:
    value = body.get("model")
    if value is None:
        if required:
            raise InvalidRequestError("you must provide a model parameter", param="model")
        return None
    if not isinstance(value, str):
        raise wrong_type("model", "a string", value)
    if not value:
        raise InvalidRequestError("Invalid 'model': empty string.", param="model")
    return value


def opt_bool(container: dict[str, Any], key: str, param: str) -> bool | None:
    value = container.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise wrong_type(param, "a boolean", value)


def stream(body: dict[str, Any]) -> bool:
    return opt_bool(body, "stream", "stream") is True


def opt_int(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # ``type() is int`` rather than isinstance: JSON true/false decode to bool, a subclass of
    # int, and ``"max_tokens": true`` must not silently become a limit of 1.
    if type(value) is not int:
        raise wrong_type(key, "an integer", value)
    if value < lo:
        raise InvalidRequestError(
            f"Invalid '{key}': integer below minimum value. Expected a value >= {lo}, "
            f"but got {value} instead.",
            param=key,
        )
    if value > hi:
        raise InvalidRequestError(
            f"Invalid '{key}': integer above maximum value. Expected a value <= {hi}, "
            f"but got {value} instead.",
            param=key,
        )
    return value


def output_limit(body: dict[str, Any], key: str) -> int | None:
    return opt_int(body, key, 1, MAX_OUTPUT_TOKENS)


def choices(body: dict[str, Any], key: str = "n", lo: int = 1) -> int | None:
    return opt_int(body, key, lo, MAX_CHOICES)


def opt_dict(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise wrong_type(key, "an object", value)


def opt_number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is float:
        return value
    if type(value) is int:
        # An integer beyond float range (the stdlib JSON decoder yields them; orjson turns them
        # into floats) would raise OverflowError here, i.e. a 500 instead of a 400.
        try:
            return float(value)
        except OverflowError:
            raise InvalidRequestError(f"Invalid '{key}': number out of range.", param=key) from None
    raise wrong_type(key, "a number", value)


def opt_effort(container: dict[str, Any], key: str, param: str) -> str | None:
    value = container.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise wrong_type(param, "a string", value)
    if value not in EFFORT_SET:
        raise InvalidRequestError(
            f"Invalid value for '{param}': {value!r}. Supported values are: "
            + ", ".join(f"'{e}'" for e in REASONING_EFFORTS)
            + ".",
            param=param,
        )
    return value


def opt_string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise wrong_type(key, "a string", value)
    return value


def include_usage(body: dict[str, Any], is_stream: bool) -> bool:
    options = opt_dict(body, "stream_options")
    if options is None:
        return False
    flag = opt_bool(options, "include_usage", "stream_options.include_usage")
    return is_stream and flag is True
