"""What the gateway knows about each OpenAI API it meters.

Everything here is a pure function of the method, path and decoded JSON body, so the request
handler can classify, validate and rewrite a request without touching I/O, and so the rules can
be tested exhaustively. Paths not listed in ``classify`` are passed through untouched: each SDK
release adds endpoints, and an allow-list would break them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway import json_codec
from gateway.errors import InvalidRequestError

__all__ = [
    "BAD_JSON",
    "MAX_CHOICES",
    "MAX_OUTPUT_TOKENS",
    "REASONING_EFFORTS",
    "Api",
    "RequestInfo",
    "Usage",
    "classify",
    "parse_request",
    "usage_from_json",
    "usage_from_object",
    "with_output_limit",
    "with_reasoning_effort",
    "with_usage_requested",
]


class Api(StrEnum):
    CHAT = "chat_completions"
    RESPONSES = "responses"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    IMAGES = "images_generations"
    OTHER = "other"


_KNOWN_PATHS: dict[str, Api] = {
    "/chat/completions": Api.CHAT,
    "/responses": Api.RESPONSES,
    "/completions": Api.COMPLETIONS,
    "/embeddings": Api.EMBEDDINGS,
    "/images/generations": Api.IMAGES,
}

#: Ordered from cheapest to most expensive, so a policy can cap effort by index.
REASONING_EFFORTS: tuple[str, ...] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_EFFORT_SET = frozenset(REASONING_EFFORTS)

#: No model produces this many tokens; anything above is garbage that would only poison the
#: quota arithmetic (and Redis' integer range) downstream.
MAX_OUTPUT_TOKENS = 10_000_000
#: OpenAI allows at most 128 choices; the bound is looser so the upstream, not the gateway,
#: decides what is valid, while still keeping reservations (limit x n) finite.
MAX_CHOICES = 1_000

#: What decoding untrusted JSON can raise (stdlib json raises RecursionError on deep nesting).
BAD_JSON: tuple[type[Exception], ...] = (*json_codec.JSONDecodeError, RecursionError, TypeError)


def classify(method: str, path: str) -> Api:
    """Which metered API a request targets; anything unknown is ``OTHER`` (passthrough).

    ``path`` is relative to the upstream base URL (no ``/v1``). A query string, if the caller
    left one on, is ignored; one trailing slash is tolerated because clients that build URLs
    by joining strings sometimes add it.
    """
    if method.upper() != "POST":
        return Api.OTHER
    if "?" in path:
        path = path.partition("?")[0]
    if len(path) > 1 and path[-1] == "/":
        path = path[:-1]
    return _KNOWN_PATHS.get(path, Api.OTHER)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    api: Api
    model: str | None
    stream: bool
    #: The output limit the client sent (for Chat with both fields, the smaller one).
    max_output_tokens: int | None
    #: The field ``with_output_limit`` writes; ``None`` for APIs without an output limit.
    output_limit_field: str | None
    reasoning_effort: str | None
    #: The client itself asked for the usage chunk of a Chat/Completions stream. Always
    #: ``False`` for non-streaming requests and for other APIs.
    include_usage: bool
    #: How many outputs the request produces (Completions: ``max(n, best_of)``).
    n: int
    temperature: float | None


# --------------------------------------------------------------------------------------------
# Request validation
# --------------------------------------------------------------------------------------------


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


def _wrong_type(param: str, expected: str, value: object) -> InvalidRequestError:
    # Same wording as OpenAI's own validation errors, so clients see familiar messages.
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
    )


def _model(body: dict[str, Any], *, required: bool) -> str | None:
    value = body.get("model")
    if value is None:
        if required:
            raise InvalidRequestError("you must provide a model parameter", param="model")
        return None
    if not isinstance(value, str):
        raise _wrong_type("model", "a string", value)
    if not value:
        raise InvalidRequestError("Invalid 'model': empty string.", param="model")
    return value


def _opt_bool(container: dict[str, Any], key: str, param: str) -> bool | None:
    value = container.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _wrong_type(param, "a boolean", value)


def _opt_int(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # ``type() is int`` rather than isinstance: JSON true/false decode to bool, a subclass of
    # int, and ``"max_tokens": true`` must not silently become a limit of 1.
    if type(value) is not int:
        raise _wrong_type(key, "an integer", value)
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


def _opt_dict(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise _wrong_type(key, "an object", value)


def _opt_number(body: dict[str, Any], key: str) -> float | None:
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
    raise _wrong_type(key, "a number", value)


def _opt_effort(container: dict[str, Any], key: str, param: str) -> str | None:
    value = container.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _wrong_type(param, "a string", value)
    if value not in _EFFORT_SET:
        raise InvalidRequestError(
            f"Invalid value for '{param}': {value!r}. Supported values are: "
            + ", ".join(f"'{e}'" for e in REASONING_EFFORTS)
            + ".",
            param=param,
        )
    return value


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = _opt_dict(body, "stream_options")
    if options is None:
        return False
    flag = _opt_bool(options, "include_usage", "stream_options.include_usage")
    return stream and flag is True


def _limit(body: dict[str, Any], key: str) -> int | None:
    return _opt_int(body, key, 1, MAX_OUTPUT_TOKENS)


def _n(body: dict[str, Any], key: str = "n", lo: int = 1) -> int | None:
    return _opt_int(body, key, lo, MAX_CHOICES)


def parse_request(api: Api, body: object) -> RequestInfo:
    """Validate the fields the gateway acts on and extract them.

    Only fields the gateway itself reads are checked: a wrong type there would otherwise make
    the gateway reserve, route or rewrite on garbage. Everything else is the upstream's job,
    so the gateway never rejects a request OpenAI would accept for reasons it does not need.
    """
    if api is Api.OTHER:
        return _parse_other(body)
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", param=None)

    if api is Api.CHAT:
        model = _model(body, required=True)
        stream = _opt_bool(body, "stream", "stream") is True
        max_completion = _limit(body, "max_completion_tokens")
        max_tokens = _limit(body, "max_tokens")
        field = "max_completion_tokens"
        limit = max_completion
        if max_tokens is not None:
            if max_completion is None:
                field, limit = "max_tokens", max_tokens
            else:
                limit = min(max_completion, max_tokens)
        return RequestInfo(
            api=api,
            model=model,
            stream=stream,
            max_output_tokens=limit,
            output_limit_field=field,
            reasoning_effort=_opt_effort(body, "reasoning_effort", "reasoning_effort"),
            include_usage=_include_usage(body, stream),
            n=_n(body) or 1,
            temperature=_opt_number(body, "temperature"),
        )

    if api is Api.COMPLETIONS:
        model = _model(body, required=True)
        stream = _opt_bool(body, "stream", "stream") is True
        n = _n(body) or 1
        # OpenAI accepts best_of 0..20; 0 must not be rejected here, it just does not raise n.
        best_of = _n(body, "best_of", lo=0) or 0
        return RequestInfo(
            api=api,
            model=model,
            stream=stream,
            max_output_tokens=_limit(body, "max_tokens"),
            output_limit_field="max_tokens",
            reasoning_effort=None,
            include_usage=_include_usage(body, stream),
            n=max(n, best_of),
            temperature=_opt_number(body, "temperature"),
        )

    if api is Api.RESPONSES:
        model = _model(body, required=True)
        stream = _opt_bool(body, "stream", "stream") is True
        _opt_dict(body, "stream_options")  # Responses has no include_usage; just type-check
        reasoning = _opt_dict(body, "reasoning")
        effort = (
            _opt_effort(reasoning, "effort", "reasoning.effort") if reasoning is not None else None
        )
        return RequestInfo(
            api=api,
            model=model,
            stream=stream,
            max_output_tokens=_limit(body, "max_output_tokens"),
            output_limit_field="max_output_tokens",
            reasoning_effort=effort,
            include_usage=False,
            n=1,
            temperature=_opt_number(body, "temperature"),
        )

    if api is Api.EMBEDDINGS:
        return RequestInfo(
            api=api,
            model=_model(body, required=True),
            stream=False,
            max_output_tokens=None,
            output_limit_field=None,
            reasoning_effort=None,
            include_usage=False,
            n=1,
            temperature=None,
        )

    # Api.IMAGES: model is optional (OpenAI defaults to dall-e-2).
    return RequestInfo(
        api=api,
        model=_model(body, required=False),
        stream=_opt_bool(body, "stream", "stream") is True,
        max_output_tokens=None,
        output_limit_field=None,
        reasoning_effort=None,
        include_usage=False,
        n=_n(body) or 1,
        temperature=None,
    )


def _parse_other(body: object) -> RequestInfo:
    # Passthrough requests are never rejected by the gateway: the upstream owns their schema.
    model = None
    if isinstance(body, dict):
        value = body.get("model")
        if isinstance(value, str) and value:
            model = value
    return RequestInfo(
        api=Api.OTHER,
        model=model,
        stream=False,
        max_output_tokens=None,
        output_limit_field=None,
        reasoning_effort=None,
        include_usage=False,
        n=1,
        temperature=None,
    )


# --------------------------------------------------------------------------------------------
# Request rewriting. Each returns ``body`` itself when nothing changes, so a caller can skip
# re-encoding the body with an ``is`` check; otherwise a shallow copy (the input is never
# mutated, since it may also serve as the cache key).
# --------------------------------------------------------------------------------------------


def with_output_limit(info: RequestInfo, body: dict[str, Any], limit: int) -> dict[str, Any]:
    """Cap the request's output at ``limit`` tokens.

    The cap only ever tightens: if the client already asked for fewer tokens, its own value
    stays, because the gateway must not change what the client gets beyond its policy.
    """
    if limit < 1:
        raise ValueError(f"output limit must be >= 1, got {limit}")
    field = info.output_limit_field
    if field is None:
        return body
    if info.max_output_tokens is not None:
        limit = min(limit, info.max_output_tokens)
    changed = body.get(field) != limit
    # Chat with both fields set: upstream enforces both, so lowering only one would not bind.
    other = body.get("max_tokens") if field == "max_completion_tokens" else None
    lower_other = type(other) is int and other > limit
    if not changed and not lower_other:
        return body
    out = dict(body)
    out[field] = limit
    if lower_other:
        out["max_tokens"] = limit
    return out


def with_usage_requested(info: RequestInfo, body: dict[str, Any]) -> dict[str, Any]:
    """Make a Chat/Completions stream end with a usage chunk, so the gateway can meter it.

    Other ``stream_options`` keys (``include_obfuscation``) are kept: they change what the
    client receives, and the gateway must not.
    """
    if info.api not in (Api.CHAT, Api.COMPLETIONS) or not info.stream:
        return body
    options = body.get("stream_options")
    if isinstance(options, dict):
        if options.get("include_usage") is True:
            return body
        options = dict(options)
    else:
        options = {}
    options["include_usage"] = True
    out = dict(body)
    out["stream_options"] = options
    return out


def with_reasoning_effort(info: RequestInfo, body: dict[str, Any], effort: str) -> dict[str, Any]:
    """Set the reasoning effort (e.g. a policy capping cost); other APIs are unchanged."""
    if effort not in _EFFORT_SET:
        raise ValueError(f"unknown reasoning effort {effort!r}")
    if info.api is Api.CHAT:
        if body.get("reasoning_effort") == effort:
            return body
        out = dict(body)
        out["reasoning_effort"] = effort
        return out
    if info.api is Api.RESPONSES:
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict):
            if reasoning.get("effort") == effort:
                return body
            reasoning = dict(reasoning)  # nested copy: the caller's dict stays untouched
        else:
            reasoning = {}
        reasoning["effort"] = effort
        out = dict(body)
        out["reasoning"] = reasoning
        return out
    return body


# --------------------------------------------------------------------------------------------
# Usage
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    #: Includes reasoning tokens (both APIs bill them as output).
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    #: A subset of ``prompt_tokens``.
    cached_prompt_tokens: int = 0
    total_tokens: int = 0


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    # bool is an int subclass; a negative or non-integer count is garbage, never a refund.
    if type(value) is int and value >= 0:
        return value
    return 0


def _detail(obj: dict[str, Any], details_key: str, key: str) -> int:
    details = obj.get(details_key)
    return _count(details, key) if isinstance(details, dict) else 0


def _usage(usage: dict[str, Any], input_key: str, output_key: str) -> Usage:
    prompt = _count(usage, f"{input_key}_tokens")
    completion = _count(usage, f"{output_key}_tokens")
    total = usage.get("total_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        reasoning_tokens=_detail(usage, f"{output_key}_tokens_details", "reasoning_tokens"),
        cached_prompt_tokens=_detail(usage, f"{input_key}_tokens_details", "cached_tokens"),
        # A missing total would otherwise meter as zero; the sum is what OpenAI reports.
        total_tokens=total if type(total) is int and total >= 0 else prompt + completion,
    )


def usage_from_object(api: Api, usage: object) -> Usage | None:
    """Normalise the two usage shapes (``prompt_*``/``completion_*`` vs ``input_*``/``output_*``).

    Every ``*_details`` object and key is optional: older models and compatible servers omit
    them, and metering must not fail on that. For ``OTHER`` the shape is guessed from the keys
    (Assistants runs use ``prompt_tokens``, transcriptions ``input_tokens``).
    """
    if not isinstance(usage, dict):
        return None
    if api is Api.RESPONSES or api is Api.IMAGES:
        return _usage(usage, "input", "output")
    if api is Api.OTHER and ("input_tokens" in usage or "output_tokens" in usage):
        return _usage(usage, "input", "output")
    return _usage(usage, "prompt", "completion")


def usage_from_json(api: Api, body: bytes) -> Usage | None:
    """Usage of a complete (non-streaming) JSON response; ``None`` for anything unreadable.

    Never raises: a garbled upstream body must not turn a delivered response into a 500.
    """
    try:
        obj = json_codec.loads(body)
    except BAD_JSON:
        return None
    if not isinstance(obj, dict):
        return None
    return usage_from_object(api, obj.get("usage"))
