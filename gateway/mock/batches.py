"""``/batches``: create, retrieve, list and cancel.

Every line of the input file is answered at create by the same code as a live request (so
usage is as realistic), and revealed when the batch completes, after a delay
(``x-mock-batch-delay-ms`` on the create, default 200 ms), checked by the clock on each read.
Lines finish evenly over the delay: ``request_counts.completed`` grows as they do, and
cancelling before the end keeps the lines finished so far in the output file. Answers go to
an output file, bad lines (not JSON, unknown url, an error answer) to an error file.
``x-mock-batch-poll-failures: N`` on the create makes the batch's next N retrieves answer 500
(a reconciler's poll failing upstream).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway import json_codec
from gateway.apis.usage import Usage, add_usage, read_guessed_usage
from gateway.mock import chat, completions, embeddings, responses
from gateway.mock.content import hex_id
from gateway.mock.errors import MockError, invalid
from gateway.mock.hooks import Ctx, status_hook_error
from gateway.mock.state import StoredFile

DEFAULT_DELAY_SECONDS = 0.2
Endpoint = Callable[[Ctx], Awaitable[web.StreamResponse]]
ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": chat.chat,
    "/v1/completions": completions.completions,
    "/v1/embeddings": embeddings.embeddings,
    "/v1/responses": responses.responses,
}
_WHAT = "batch"


@dataclass(slots=True)
class Batch:
    meta: dict[str, Any]
    started: float  # monotonic
    delay: float
    done: list[dict[str, Any]] = field(default_factory=list)  # output lines, in order
    failed: list[dict[str, Any]] = field(default_factory=list)  # error lines
    poll_failures: int = 0  # retrieves still to answer 500

    def fraction(self) -> float:
        return 1.0 if self.delay <= 0 else min(1.0, (time.monotonic() - self.started) / self.delay)

    def finished_lines(self, share: float) -> list[dict[str, Any]]:
        return self.done[: int(len(self.done) * share)]


async def create(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    file_id = p.get("input_file_id")
    endpoint = p.get("endpoint")
    if not isinstance(file_id, str):
        raise invalid("Missing required parameter: 'input_file_id'.", param="input_file_id")
    if endpoint not in ENDPOINTS:
        raise invalid(f"Invalid value for 'endpoint': {endpoint!r}.", param="endpoint")
    source = ctx.state.files.get(file_id, "such file")
    delay_ms = ctx.hook_int("x-mock-batch-delay-ms")
    now = int(time.time())
    batch = Batch(
        meta={
            "id": hex_id("batch_")[:30],
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": p.get("completion_window", "24h"),
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": now,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": p.get("metadata"),
        },
        started=time.monotonic(),
        delay=DEFAULT_DELAY_SECONDS if delay_ms is None else delay_ms / 1000,
        poll_failures=ctx.hook_int("x-mock-batch-poll-failures") or 0,
    )
    for number, raw in enumerate(source.data.splitlines(), start=1):
        if raw.strip():
            await _answer(ctx, batch, number, raw)
    batch.meta["request_counts"]["total"] = len(batch.done) + len(batch.failed)
    ctx.state.batches.put(batch.meta["id"], batch)
    return ctx.json(batch.meta)


async def _answer(ctx: Ctx, batch: Batch, number: int, raw: bytes) -> None:
    try:
        line = json_codec.loads(raw)
        custom_id = line["custom_id"]
        url = line["url"]
        body = line["body"]
        if not isinstance(body, dict):
            raise TypeError
    except (*json_codec.JSONDecodeError, KeyError, TypeError):  # type: ignore[misc]
        batch.failed.append(_error_line(None, 400, f"Line {number} is not a valid request."))
        return
    endpoint = ENDPOINTS.get(url)
    if endpoint is None or url != batch.meta["endpoint"]:
        batch.failed.append(_error_line(custom_id, 400, f"Line {number}: url must be {url}."))
        return
    line_ctx = Ctx(
        ctx.request,
        {**body, "stream": False},
        ctx.started,
        gates=ctx.gates,
        chunk_delay=0.0,
        state=ctx.state,
        disconnected=ctx.disconnected,
    )
    try:
        answer = await endpoint(line_ctx)
    except MockError as exc:
        batch.failed.append(_error_line(custom_id, exc.status, exc.message))
        return
    assert isinstance(answer, web.Response) and isinstance(answer.body, bytes)
    batch.done.append(
        {
            "id": hex_id("batch_req_"),
            "custom_id": custom_id,
            "response": {
                "status_code": answer.status,
                "request_id": line_ctx.request_id,
                "body": json_codec.loads(answer.body),
            },
            "error": None,
        }
    )


def _error_line(custom_id: str | None, status: int, message: str) -> dict[str, Any]:
    return {
        "id": hex_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": hex_id("req_"), "body": None},
        "error": {"code": "invalid_request", "message": message},
    }


def _finish(ctx: Ctx, batch: Batch, status: str, share: float) -> None:
    now = int(time.time())
    done = batch.finished_lines(share)
    failed = batch.failed if share >= 1.0 else []
    meta = batch.meta
    meta.update(status=status, finalizing_at=now)
    meta["completed_at" if status == "completed" else "cancelled_at"] = now
    meta["request_counts"].update(completed=len(done), failed=len(failed))
    meta["output_file_id"] = _write(ctx, batch, "output", done)
    meta["error_file_id"] = _write(ctx, batch, "error", failed)
    meta["usage"] = _usage(done)


def _write(ctx: Ctx, batch: Batch, kind: str, lines: list[dict[str, Any]]) -> str | None:
    if not lines:
        return None
    data = b"".join(json_codec.dumps(line) + b"\n" for line in lines)
    file_id = hex_id("file-")[:29]
    meta: dict[str, Any] = {
        "object": "file",
        "id": file_id,
        "purpose": "batch_output",
        "filename": f"{batch.meta['id']}_{kind}.jsonl",
        "bytes": len(data),
        "created_at": int(time.time()),
        "expires_at": None,
        "status": "processed",
        "status_details": None,
    }
    ctx.state.files.put(file_id, StoredFile(meta, data))
    return file_id


def _usage(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch's usage as the Batch object reports it (the spec's ``Batch.usage``)."""
    total = Usage()
    for line in lines:
        found = read_guessed_usage((line["response"]["body"] or {}).get("usage"))
        if found is not None:
            total = add_usage(total, found)
    return {
        "input_tokens": total.prompt_tokens,
        "input_tokens_details": {"cached_tokens": total.cached_prompt_tokens},
        "output_tokens": total.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": total.reasoning_tokens},
        "total_tokens": total.total_tokens,
    }


def _current(ctx: Ctx, batch: Batch) -> dict[str, Any]:
    if batch.meta["status"] == "in_progress":
        share = batch.fraction()
        if share >= 1.0:
            _finish(ctx, batch, "completed", 1.0)
        else:
            batch.meta["request_counts"]["completed"] = len(batch.finished_lines(share))
    return batch.meta


async def retrieve(ctx: Ctx) -> web.StreamResponse:
    batch: Batch = ctx.state.batches.get(ctx.request.match_info["batch_id"], _WHAT)
    if batch.poll_failures:
        batch.poll_failures -= 1
        raise status_hook_error(500, None)
    return ctx.json(_current(ctx, batch))


async def cancel(ctx: Ctx) -> web.StreamResponse:
    batch: Batch = ctx.state.batches.get(ctx.request.match_info["batch_id"], _WHAT)
    if _current(ctx, batch)["status"] == "in_progress":
        _finish(ctx, batch, "cancelled", batch.fraction())
    return ctx.json(batch.meta)


async def list_batches(ctx: Ctx) -> web.StreamResponse:
    shown = [_current(ctx, b) for b in reversed(ctx.state.batches.values())]
    return ctx.json(
        {
            "object": "list",
            "data": shown,
            "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None,
            "has_more": False,
        }
    )
