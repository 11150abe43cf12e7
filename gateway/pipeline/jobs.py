"""Settling background responses and batches when they reach a terminal status: on a client's
retrieve or cancel (the answer is read on its way to the client), on a client's streamed
retrieve (its terminal event), and from the reconciler.

Settlement itself (claim once, charge) is ``gateway.quota.jobs``; this module knows what the
upstream's objects look like and reads batch output files.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import apis, json_codec
from gateway.apis import Usage
from gateway.apis.usage import add_usage
from gateway.config_pricing import nano_to_usd
from gateway.pipeline.forward import Call, forward, forward_whole, note_stream_end, start_stream
from gateway.pipeline.response_stream import relay_watched, watch
from gateway.quota.jobs import JobKind
from gateway.sse import StreamMeter
from gateway.state import GatewayState
from gateway.storage.errors import StoreError
from gateway.upstream.headers import upstream_request_headers

log = logging.getLogger("gateway.quota")

TERMINAL: dict[JobKind, frozenset[str]] = {
    "response": frozenset({"completed", "failed", "cancelled", "incomplete"}),
    "batch": frozenset({"completed", "failed", "expired", "cancelled"}),
}
#: Client calls whose answer may show a job finished: (method, path) -> kind.
_RETRIEVE = re.compile(r"/responses/([^/]+)/?")
_READS = (
    ("GET", _RETRIEVE, "response"),
    ("POST", re.compile(r"/responses/([^/]+)/cancel/?"), "response"),
    ("GET", re.compile(r"/batches/([^/]+)/?"), "batch"),
    ("POST", re.compile(r"/batches/([^/]+)/cancel/?"), "batch"),
)
_MAX_JOB_BODY_BYTES = 16 * 1024 * 1024
_SSE = "text/event-stream"


class JobPollError(Exception):
    """The upstream could not say how an open job stands (it stays open)."""


def job_read(method: str, path: str) -> JobKind | None:
    """Which kind of job this client call reads, if it is one the gateway settles from
    (a streamed retrieve, ``?stream=true``, included)."""
    for want, pattern, kind in _READS:
        if method == want and pattern.fullmatch(path):
            return kind  # type: ignore[return-value]
    return None


async def handle_job_read(call: Call, kind: JobKind) -> web.StreamResponse:
    """Forward, answer the client, and settle the job if the answer shows it finished."""
    if call.request.query.get("stream") == "true":
        retrieve = _RETRIEVE.fullmatch(call.path) if call.request.method == "GET" else None
        if retrieve is not None:
            return await _streamed_read(call, retrieve.group(1))
    forwarded, data = await forward_whole(call, await call.request.read() or None)
    upstream = forwarded.upstream
    if upstream.status < 300:
        obj = _object(data)
        if obj is not None:
            await settle_if_terminal(call.state, call.team_name, kind, obj)
    return web.Response(status=upstream.status, body=data, headers=forwarded.headers)


async def _streamed_read(call: Call, response_id: str) -> web.StreamResponse:
    """``GET /responses/{id}?stream=true``: relayed as it comes, metered like a Responses
    stream; its terminal event settles the job exactly as a retrieve's answer would."""
    forwarded = await forward(call, None, accept_encoding=None)
    upstream = forwarded.upstream
    try:
        if upstream.status >= 300 or not upstream.headers.get("Content-Type", "").startswith(_SSE):
            data = await upstream.read()
            return web.Response(status=upstream.status, body=data, headers=forwarded.headers)
        client = web.StreamResponse(status=upstream.status, headers=forwarded.headers)
        if not await start_stream(client, call.request, call.exchange):
            return client
        meter = StreamMeter(apis.RESPONSES, hide_usage=False)
        events = watch(meter, response_id)
        result = await relay_watched(call.request, upstream, client, meter)
        call.exchange.upstream_seconds = time.perf_counter() - forwarded.sent_at
        note_stream_end(call.exchange, result)
        if events.final is not None:
            await settle_after_stream(call.state, call.team_name, events.final)
        return client
    finally:
        upstream.release()


async def settle_after_stream(state: GatewayState, team: str, response: dict[str, Any]) -> None:
    """Settle from a stream's terminal response; the stream is out, so a store failure only
    leaves the job open for a later read or the reconciler."""
    try:
        await settle_if_terminal(state, team, "response", response)
    except StoreError as exc:
        log.warning(
            "could not settle a background response from its stream",
            extra={"team": team, "job": response.get("id"), "error": str(exc)},
        )


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json_codec.loads(data)
    except apis.BAD_JSON:
        return None
    return obj if isinstance(obj, dict) else None


async def settle_if_terminal(
    state: GatewayState, team: str, kind: JobKind, obj: dict[str, Any]
) -> bool:
    """Settle the team's open job ``obj`` names if ``obj`` is terminal; True if this call did."""
    job_id, status = obj.get("id"), obj.get("status")
    if not isinstance(job_id, str) or status not in TERMINAL[kind]:
        return False
    if kind == "response":
        usage = apis.RESPONSES.usage(obj.get("usage"))
        requests = 1
    else:
        usage, requests = await batch_usage(state, obj)
    job = await state.jobs.settle(team, job_id, usage, requests)
    if job is not None and usage is not None:
        model = obj.get("model") if kind == "response" else None
        endpoint = "responses_background" if kind == "response" else "batches"
        metrics = state.metrics
        label = metrics.model_label(model if isinstance(model, str) else None)
        metrics.count_usage(metrics.tokens, team, label, endpoint, usage)
        if job.price is not None:
            cost = job.price.cost(usage)
            metrics.child(metrics.cost, team, label).inc(nano_to_usd(cost))
    return job is not None


async def batch_usage(state: GatewayState, batch: dict[str, Any]) -> tuple[Usage | None, int]:
    """The usage a batch's output file reports, line by line, and how many lines ran; None
    when the file cannot be read (the reservation then stays charged)."""
    endpoint = str(batch.get("endpoint") or "")
    api = apis.classify("POST", endpoint.removeprefix("/v1"))
    file_id = batch.get("output_file_id")
    if not isinstance(file_id, str):
        return Usage(), 0  # nothing ran (cancelled or failed before any line)
    status, data = await upstream_get(state, f"/files/{file_id}/content")
    if status >= 300:
        return None, 0
    total = Usage()
    lines = 0
    for raw in data.splitlines():
        line = _object(raw)
        response = line.get("response") if line else None
        body = response.get("body") if isinstance(response, dict) else None
        if not isinstance(body, dict):
            continue
        lines += 1
        usage = api.usage(body.get("usage"))
        if usage is not None:
            total = add_usage(total, usage)
    return total, lines


async def upstream_get(state: GatewayState, path: str) -> tuple[int, bytes]:
    """A GET with the real key and no client behind it (reconciler, batch files)."""
    headers = upstream_request_headers(
        CIMultiDictProxy(CIMultiDict()), state.upstream.config, accept_encoding=None
    )
    upstream = await state.upstream.send("GET", path, "", headers, None)
    data = bytearray()
    try:
        async for chunk in upstream.chunks():
            data += chunk
            if len(data) > _MAX_JOB_BODY_BYTES:
                return 413, b""  # stop reading: nothing this large is a job or its file
    finally:
        upstream.release()
    return upstream.status, bytes(data)


async def poll_job(state: GatewayState, team: str, kind: JobKind, job_id: str) -> bool:
    """Ask the upstream about one open job and settle it if it finished."""
    path = f"/responses/{job_id}" if kind == "response" else f"/batches/{job_id}"
    status, data = await upstream_get(state, path)
    obj = _object(data) if status < 300 else None
    if obj is None:
        if status == 404:  # deleted upstream: its usage is gone, keep what was reserved
            return await state.jobs.settle(team, job_id, None, 1) is not None
        raise JobPollError(f"upstream answered {status} for {kind} {job_id}")
    return await settle_if_terminal(state, team, kind, obj)
