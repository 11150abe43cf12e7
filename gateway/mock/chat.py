"""``POST /chat/completions``: JSON ``chat.completion`` or SSE chunks ending in ``[DONE]``.

The answer is lorem text, JSON for ``response_format``, or tool calls (see ``answers``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway import json_codec
from gateway.mock import answers, content
from gateway.mock.content import FIRST, N_WORDS, NEXT, SYSTEM_FINGERPRINT, Budget
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
    reply = _Reply(
        model, n, content.estimate_tokens(text), p.get("stream") is True, include_usage(p)
    )
    function = answers.chat_tool(p, messages)
    if function is not None:
        calls = [answers.tool_call(function, text) for _ in range(n)]
        budget = ctx.budget(model, limit, visible=len(answers.pieces(calls[0].arguments)))
        return await reply.tool_calls(ctx, budget, calls)
    structured = answers.chat_json(p, text)
    if structured is not None:
        budget = ctx.budget(model, limit, visible=len(answers.pieces(structured)))
        return await reply.text(ctx, budget, [answers.pieces(structured)] * n)
    budget = ctx.budget(model, limit)
    seed = content.seed(text)
    if reply.stream:
        return await reply.send_stream(
            ctx,
            budget,
            lambda head, finish, usage: _events(
                head, n, seed, budget.visible, finish, reply.with_usage, usage
            ),
        )
    return reply.send_json(
        ctx,
        budget,
        [
            _message("".join(content.tokens(content.choice_seed(seed, i), budget.visible)))
            for i in range(n)
        ],
    )


def _message(text: str | None, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    message["annotations"] = []
    return message


EventSource = Callable[[bytes, str, dict[str, Any]], Iterator[bytes]]


@dataclass(slots=True)
class _Reply:
    """The parts of a chat reply that do not depend on what the answer is."""

    model: str
    n: int
    prompt_tokens: int
    stream: bool
    with_usage: bool
    completion_id: str = field(default_factory=lambda: content.hex_id("chatcmpl-"))
    created: int = field(default_factory=lambda: int(time.time()))

    def finish(self, budget: Budget, done: str = "stop") -> str:
        return "length" if budget.truncated else done

    def usage(self, budget: Budget) -> dict[str, Any]:
        per_choice = budget.reasoning + budget.visible
        return content.chat_usage(
            self.prompt_tokens, self.n * per_choice, self.n * budget.reasoning, budget.cached
        )

    def send_json(
        self, ctx: Ctx, budget: Budget, messages: list[dict[str, Any]], done: str = "stop"
    ) -> web.Response:
        finish = self.finish(budget, done)
        choices = [
            {"index": i, "message": m, "logprobs": None, "finish_reason": finish}
            for i, m in enumerate(messages)
        ]
        return ctx.json(
            {
                "id": self.completion_id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                "usage": self.usage(budget),
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )

    async def send_stream(
        self, ctx: Ctx, budget: Budget, events: EventSource, done: str = "stop"
    ) -> web.StreamResponse:
        head = content.stream_head(
            self.completion_id, "chat.completion.chunk", self.created, self.model
        )
        return await ctx.stream(events(head, self.finish(budget, done), self.usage(budget)))

    async def text(
        self, ctx: Ctx, budget: Budget, per_choice: list[list[str]]
    ) -> web.StreamResponse:
        kept = [toks[: budget.visible] for toks in per_choice]
        if not self.stream:
            return self.send_json(ctx, budget, [_message("".join(toks)) for toks in kept])
        role = {"role": "assistant", "content": "", "refusal": None}
        deltas = [[role] + [{"content": tok} for tok in toks] for toks in kept]
        return await self.send_stream(
            ctx,
            budget,
            lambda head, finish, usage: _delta_events(head, deltas, finish, self.with_usage, usage),
        )

    async def tool_calls(
        self, ctx: Ctx, budget: Budget, calls: list[answers.ToolCall]
    ) -> web.StreamResponse:
        args = [answers.pieces(call.arguments)[: budget.visible] for call in calls]
        if not self.stream:
            messages = [
                _message(None, [_call_json(call, "".join(toks))])
                for call, toks in zip(calls, args, strict=True)
            ]
            return self.send_json(ctx, budget, messages, "tool_calls")
        deltas: list[list[dict[str, Any]]] = []
        for call, toks in zip(calls, args, strict=True):
            # As OpenAI streams them: id, type and name first with empty arguments.
            first = {**_call_json(call, ""), "index": 0}
            role = {"role": "assistant", "content": None, "tool_calls": [first], "refusal": None}
            more = [{"tool_calls": [{"index": 0, "function": {"arguments": t}}]} for t in toks]
            deltas.append([role, *more])
        return await self.send_stream(
            ctx,
            budget,
            lambda head, finish, usage: _delta_events(head, deltas, finish, self.with_usage, usage),
            "tool_calls",
        )


def _call_json(call: answers.ToolCall, arguments: str) -> dict[str, Any]:
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


def _delta_events(
    head: bytes,
    deltas: list[list[dict[str, Any]]],
    finish: str,
    with_usage: bool,
    usage: dict[str, Any],
) -> Iterator[bytes]:
    """The general stream: each choice's deltas, round-robin like ``n > 1`` on OpenAI."""
    tail = b',"usage":null}\n\n' if with_usage else b"}\n\n"
    dumps = json_codec.dumps
    for k in range(max(len(d) for d in deltas)):
        for i, choice_deltas in enumerate(deltas):
            if k < len(choice_deltas):
                choice = {
                    "index": i,
                    "delta": choice_deltas[k],
                    "logprobs": None,
                    "finish_reason": None,
                }
                yield head + dumps([choice]) + tail
    for i in range(len(deltas)):
        choice = {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}
        yield head + dumps([choice]) + tail
    if with_usage:
        yield head + b'[],"usage":' + dumps(usage) + b"}\n\n"
    yield b"data: [DONE]\n\n"


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
