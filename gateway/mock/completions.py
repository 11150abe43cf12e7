"""``POST /completions``: the legacy ``text_completion``, streamed like chat."""

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
from gateway.mock.params import include_usage, is_token_list, opt_int, require_model

# OpenAI's default ``max_tokens`` for legacy completions.
DEFAULT_MAX_TOKENS = 16


def _choice0(tok: str) -> bytes:
    return json_codec.dumps([{"text": tok, "index": 0, "logprobs": None, "finish_reason": None}])


_COMPL_FIRST = [_choice0(t) for t in FIRST]
_COMPL_NEXT = [_choice0(t) for t in NEXT]


async def completions(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    model = require_model(p)
    prompts = _prompts(p.get("prompt"))
    limit = opt_int(p, "max_tokens", 1)
    n = opt_int(p, "n", 1, 128) or 1
    budget = ctx.budget(model, DEFAULT_MAX_TOKENS if limit is None else limit)
    finish = "length" if budget.truncated else "stop"
    prompt_tokens = 0
    seeds: list[int] = []
    for prompt in prompts:
        if isinstance(prompt, str):
            prompt_tokens += content.estimate_tokens(prompt)
            base = content.seed(prompt)
        else:
            prompt_tokens += len(prompt)
            base = content.seed(repr(prompt))
        seeds.extend(content.choice_seed(base, j) for j in range(n))
    per_choice = budget.reasoning + budget.visible
    usage = content.chat_usage(
        prompt_tokens, len(seeds) * per_choice, len(seeds) * budget.reasoning
    )
    completion_id = content.hex_id("cmpl-")
    created = int(time.time())
    if p.get("stream") is True:
        head = content.stream_head(completion_id, "text_completion", created, model)
        return await ctx.stream(
            _events(head, seeds, budget.visible, finish, include_usage(p), usage)
        )
    return ctx.json(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "text": "".join(content.tokens(s, budget.visible)),
                    "index": i,
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i, s in enumerate(seeds)
            ],
            "usage": usage,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if is_token_list(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        out: list[str | list[int]] = []
        for item in prompt:
            if not (isinstance(item, str) or is_token_list(item)):
                break
            out.append(item)
        else:
            return out
    raise invalid(
        "Invalid 'prompt': expected a string, an array of strings, or token arrays.",
        param="prompt",
        code="invalid_type",
    )


def _events(
    head: bytes,
    seeds: list[int],
    visible: int,
    finish: str,
    with_usage: bool,
    usage: dict[str, Any],
) -> Iterator[bytes]:
    tail = b',"usage":null}\n\n' if with_usage else b"}\n\n"
    dumps = json_codec.dumps
    for k in range(visible):
        for i, s in enumerate(seeds):
            word = (s + k) % N_WORDS
            if i == 0:
                choices = _COMPL_FIRST[word] if k == 0 else _COMPL_NEXT[word]
            else:
                tok = FIRST[word] if k == 0 else NEXT[word]
                choices = dumps(
                    [{"text": tok, "index": i, "logprobs": None, "finish_reason": None}]
                )
            yield head + choices + tail
    for i in range(len(seeds)):
        choice = {"text": "", "index": i, "logprobs": None, "finish_reason": finish}
        yield head + dumps([choice]) + tail
    if with_usage:
        yield head + b'[],"usage":' + dumps(usage) + b"}\n\n"
    yield b"data: [DONE]\n\n"
