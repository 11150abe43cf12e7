"""Token usage as the gateway counts it, read from either of OpenAI's two usage shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import json_codec
from gateway.apis.fields import BAD_JSON


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    #: Includes reasoning tokens (both APIs bill them as output).
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    #: A subset of ``prompt_tokens``.
    cached_prompt_tokens: int = 0
    total_tokens: int = 0


def add_usage(a: Usage, b: Usage) -> Usage:
    """Two usages together (a batch's lines); a missing total counts as its sum."""
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens,
        cached_prompt_tokens=a.cached_prompt_tokens + b.cached_prompt_tokens,
        total_tokens=(a.total_tokens or a.prompt_tokens + a.completion_tokens)
        + (b.total_tokens or b.prompt_tokens + b.completion_tokens),
    )


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    # bool is an int subclass; a negative or non-integer count is garbage, never a refund.
    if type(value) is int and value >= 0:
        return value
    return 0


def _detail(obj: dict[str, Any], details_key: str, key: str) -> int:
    details = obj.get(details_key)
    return _count(details, key) if isinstance(details, dict) else 0


def read_usage(usage: object, input_key: str, output_key: str) -> Usage | None:
    """One usage object (``prompt``/``completion`` or ``input``/``output`` keys).

    Every ``*_details`` object and key is optional: older models and compatible servers omit
    them, and metering must not fail on that.
    """
    if not isinstance(usage, dict):
        return None
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


def read_guessed_usage(usage: object) -> Usage | None:
    """A usage object of unknown shape: the keys tell (Assistants runs use ``prompt_tokens``,
    transcriptions and Responses ``input_tokens``)."""
    if isinstance(usage, dict) and ("input_tokens" in usage or "output_tokens" in usage):
        return read_usage(usage, "input", "output")
    return read_usage(usage, "prompt", "completion")


def decode_object(body: bytes) -> dict[str, Any] | None:
    """A JSON object from untrusted bytes, or ``None``; never raises."""
    try:
        obj = json_codec.loads(body)
    except BAD_JSON:
        return None
    return obj if isinstance(obj, dict) else None
