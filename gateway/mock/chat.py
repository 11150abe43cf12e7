"""``POST /chat/completions``: JSON ``chat.completion`` or SSE chunks ending in ``[DONE]``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from gateway import json_codec
from gateway.mock import content
from gateway.mock.content import FIRST, N_WORDS, NEXT, SYSTEM_FINGERPRINT
from gateway.mock.errors import invalid
from gateway.mock.hooks import Ctx
from gateway.mock.params import include_usage, messages_text, opt_int, require_model


def _choice0(tok: str) -> bytes:
    return json_codec.dumps(
        [{"index": 0, "delta": {"content": tok}, "logprobs": None, "finish_reason": None}]
    )


# The common case (one choice) streams pre-serialised choice arrays.
_CHAT_FIRST = [_choice0(t) for t in FIRST]
_CHAT_NEXT = [_choice0(t) for t in NEXT]


async def chat(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    model = require_model(p)
    messages = p.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    text = messages_text(messages)
    limit = opt_int(p, "max_completion_tokens", 1)
    if limit is None:
        limit = opt_int(p, "max_tokens", 1)
    n = opt_int(p, "n", 1, 128) or 1
    budget = ctx.budget(model, limit)
    seed = content.seed(text)
    finish = "length" if budget.truncated else "stop"
    per_choice = budget.reasoning + budget.visible
    usage = content.chat_usage(content.estimate_tokens(text), n * per_choice, n * budget.reasoning)
    completion_id = content.hex_id("chatcmpl-")
    created = int(time.time())
    if p.get("stream") is True:
        head = content.stream_head(completion_id, "chat.completion.chunk", created, model)
        return await ctx.stream(
            _events(head, n, seed, budget.visible, finish, include_usage(p), usage)
        )
    choices: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {
                "role": "assistant",
                "content": "".join(content.tokens(content.choice_seed(seed, i), budget.visible)),
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": finish,
        }
        for i in range(n)
    ]
    return ctx.json(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def _events(
    head: bytes,
    n: int,
    seed: int,
    visible: int,
    finish: str,
    with_usage: bool,
    usage: dict[str, Any],
) -> Iterator[bytes]:
    # OpenAI ends every chunk with `"usage":null` when include_usage is on, else omits it.
    tail = b',"usage":null}\n\n' if with_usage else b"}\n\n"
    dumps = json_codec.dumps
    for i in range(n):
        role = {"role": "assistant", "content": "", "refusal": None}
        choice = {"index": i, "delta": role, "logprobs": None, "finish_reason": None}
        yield head + dumps([choice]) + tail
    seeds = [content.choice_seed(seed, i) for i in range(n)]
    for k in range(visible):
        for i, s in enumerate(seeds):
            word = (s + k) % N_WORDS
            if i == 0:
                choices = _CHAT_FIRST[word] if k == 0 else _CHAT_NEXT[word]
            else:
                tok = FIRST[word] if k == 0 else NEXT[word]
                choices = dumps(
                    [
                        {
                            "index": i,
                            "delta": {"content": tok},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            yield head + choices + tail
    for i in range(n):
        choice = {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}
        yield head + dumps([choice]) + tail
    if with_usage:
        yield head + b'[],"usage":' + dumps(usage) + b"}\n\n"
    yield b"data: [DONE]\n\n"
