"""Deterministic content: words, tokens, seeds, ids, usage blocks and SSE framing."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

from gateway import json_codec

DEFAULT_COMPLETION_TOKENS = 12
DEFAULT_REASONING_TOKENS = 16
SYSTEM_FINGERPRINT = "fp_mock"

_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud "
    "exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute "
    "irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur "
    "excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt "
    "mollit anim id est"
)
WORDS = _LOREM.split()
N_WORDS = len(WORDS)
# Token k of a text: the first has no leading space, later ones do.
FIRST = WORDS
NEXT = [" " + w for w in WORDS]


@dataclass(slots=True, frozen=True)
class Budget:
    """Output tokens per choice after the limit is applied."""

    reasoning: int
    visible: int
    truncated: bool
    #: Prompt tokens reported as served from OpenAI's prompt cache (``x-mock-cached-tokens``).
    cached: int = 0


def hex_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def is_reasoning_model(model: str) -> bool:
    return model.startswith("gpt-5") or (len(model) > 1 and model[0] == "o" and model[1].isdigit())


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def seed(text: str) -> int:
    return zlib.crc32(text.encode()) % N_WORDS


def tokens(seed: int, count: int) -> list[str]:
    return [
        FIRST[w % N_WORDS] if k == 0 else NEXT[w % N_WORDS]
        for k, w in enumerate(range(seed, seed + count))
    ]


def choice_seed(seed: int, index: int) -> int:
    # Different choices of one request say different things, deterministically.
    return (seed + 7 * index) % N_WORDS


def chat_usage(prompt: int, completion: int, reasoning: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": min(cached, prompt), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def stream_head(object_id: str, obj: str, created: int, model: str) -> bytes:
    """Everything of a chunk before its ``choices`` array; orjson keeps key order."""
    return (
        b'data: {"id":"'
        + object_id.encode()
        + b'","object":"'
        + obj.encode()
        + b'","created":'
        + str(created).encode()
        + b',"model":'
        + json_codec.dumps(model)
        + b',"service_tier":"default","system_fingerprint":"'
        + SYSTEM_FINGERPRINT.encode()
        + b'","choices":'
    )


def sse_event(event_type: str, seq: int, fields: dict[str, Any]) -> bytes:
    payload = {"type": event_type, "sequence_number": seq, **fields}
    return b"event: " + event_type.encode() + b"\ndata: " + json_codec.dumps(payload) + b"\n\n"
