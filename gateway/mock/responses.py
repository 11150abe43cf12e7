"""``POST /responses``: a JSON ``response`` or typed SSE events (no ``[DONE]``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from gateway.mock import answers, background, content, stored_responses
from gateway.mock.hooks import Ctx
from gateway.mock.params import collect_text, opt_int, require_model


async def responses(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    model = require_model(p)
    texts: list[str] = []
    instructions = p.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    input_texts: list[str] = []
    collect_text(p.get("input"), input_texts)
    text = "".join(input_texts)
    input_tokens = content.estimate_tokens("".join(texts) + text)
    limit = opt_int(p, "max_output_tokens", 1)
    function = answers.responses_tool(p)
    call = None if function is None else answers.tool_call(function, text)
    structured = None if call is not None else answers.responses_json(p, text)
    if call is not None:
        budget = ctx.budget(model, limit, visible=len(answers.pieces(call.arguments)))
        tokens = answers.pieces(call.arguments)[: budget.visible]
    elif structured is not None:
        budget = ctx.budget(model, limit, visible=len(answers.pieces(structured)))
        tokens = answers.pieces(structured)[: budget.visible]
    else:
        budget = ctx.budget(model, limit)
        tokens = content.tokens(content.seed(text), budget.visible)
    output_text = "".join(tokens)
    output_tokens = budget.reasoning + budget.visible
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": min(budget.cached, input_tokens),
            "cache_write_tokens": 0,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": budget.reasoning},
        "total_tokens": input_tokens + output_tokens,
    }
    reasoning_item: dict[str, Any] | None = None
    if budget.reasoning:
        reasoning_item = {"id": content.hex_id("rs_"), "type": "reasoning", "summary": []}
    message_item: dict[str, Any] | None = None
    status = "incomplete" if budget.truncated else "completed"
    if call is not None:
        message_item = {
            "id": content.hex_id("fc_"),
            "type": "function_call",
            "status": status,
            "arguments": output_text,
            "call_id": call.call_id,
            "name": call.name,
        }
    # Like OpenAI: when reasoning eats the whole budget there is no message at all.
    elif budget.visible or not budget.truncated:
        message_item = {
            "id": content.hex_id("msg_"),
            "type": "message",
            "status": "incomplete" if budget.truncated else "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "annotations": [], "logprobs": [], "text": output_text}
            ],
        }
    created = int(time.time())
    requested_reasoning = p.get("reasoning")
    effort = None
    if content.is_reasoning_model(model):
        effort = "medium"
        if isinstance(requested_reasoning, dict) and requested_reasoning.get("effort"):
            effort = requested_reasoning["effort"]
    final: dict[str, Any] = {
        "id": content.hex_id("resp_"),
        "object": "response",
        "created_at": created,
        "status": "incomplete" if budget.truncated else "completed",
        "background": p.get("background") is True,
        "completed_at": None if budget.truncated else created,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if budget.truncated else None,
        "instructions": instructions,
        "max_output_tokens": limit,
        "max_tool_calls": None,
        "model": model,
        "output": [item for item in (reasoning_item, message_item) if item is not None],
        "parallel_tool_calls": True,
        "previous_response_id": p.get("previous_response_id"),
        "reasoning": {"effort": effort, "summary": None},
        "service_tier": "default",
        "store": p.get("store", True),
        "temperature": p.get("temperature", 1.0),
        "text": {"format": _text_format(p), "verbosity": "medium"},
        "tool_choice": p.get("tool_choice") or "auto",
        "tools": p.get("tools") or [],
        "top_logprobs": 0,
        "top_p": p.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "metadata": p.get("metadata") or {},
    }
    if isinstance(p.get("user"), str):
        final["user"] = p["user"]  # the spec types it as a string: absent, never null
    in_progress = {
        **final,
        "status": "in_progress",
        "completed_at": None,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }

    def events(shown: dict[str, Any]) -> Iterator[bytes]:
        if shown["status"] == "cancelled":
            return iter([content.sse_event("response.created", 0, {"response": shown})])
        terminal = "response.incomplete" if budget.truncated else "response.completed"
        return _events(shown, in_progress, reasoning_item, message_item, tokens, terminal)

    if final["background"]:
        return await _background(ctx, final, events)
    stored_responses.store(ctx, final)
    if p.get("stream") is not True:
        return ctx.json(final)
    return await ctx.stream(events(final))


async def _background(
    ctx: Ctx, final: dict[str, Any], events: background.EventStream
) -> web.StreamResponse:
    delay_ms = ctx.hook_int("x-mock-background-delay-ms")
    delay = background.DEFAULT_DELAY_SECONDS if delay_ms is None else delay_ms / 1000
    run = background.BackgroundRun(final, events, time.monotonic(), delay)
    stored_responses.store(ctx, final, run)
    if ctx.payload.get("stream") is not True:
        return ctx.json(run.view())
    return await ctx.stream(events(await run.finished()))


def _text_format(payload: dict[str, Any]) -> dict[str, Any]:
    text = payload.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    return fmt if isinstance(fmt, dict) else {"type": "text"}


def _events(
    final: dict[str, Any],
    in_progress: dict[str, Any],
    reasoning_item: dict[str, Any] | None,
    message_item: dict[str, Any] | None,
    tokens: list[str],
    terminal: str,
) -> Iterator[bytes]:
    seq = 0

    def event(event_type: str, **fields: Any) -> bytes:
        nonlocal seq
        seq += 1
        return content.sse_event(event_type, seq - 1, fields)

    yield event("response.created", response=in_progress)
    yield event("response.in_progress", response=in_progress)
    index = 0
    if reasoning_item is not None:
        yield event("response.output_item.added", output_index=0, item=reasoning_item)
        yield event("response.output_item.done", output_index=0, item=reasoning_item)
        index = 1
    if message_item is not None and message_item["type"] == "function_call":
        item_id = message_item["id"]
        loc = {"item_id": item_id, "output_index": index}
        pending = {**message_item, "status": "in_progress", "arguments": ""}
        yield event("response.output_item.added", output_index=index, item=pending)
        for tok in tokens:
            yield event("response.function_call_arguments.delta", **loc, delta=tok)
        arguments = message_item["arguments"]
        yield event(
            "response.function_call_arguments.done",
            **loc,
            name=message_item["name"],
            arguments=arguments,
        )
        yield event("response.output_item.done", output_index=index, item=message_item)
    elif message_item is not None:
        item_id = message_item["id"]
        part = message_item["content"][0]
        loc = {"item_id": item_id, "output_index": index, "content_index": 0}
        pending = {**message_item, "status": "in_progress", "content": []}
        yield event("response.output_item.added", output_index=index, item=pending)
        yield event("response.content_part.added", **loc, part={**part, "text": ""})
        for tok in tokens:
            yield event("response.output_text.delta", **loc, delta=tok, logprobs=[])
        yield event("response.output_text.done", **loc, text=part["text"], logprobs=[])
        yield event("response.content_part.done", **loc, part=part)
        yield event("response.output_item.done", output_index=index, item=message_item)
    yield event(terminal, response=final)
