"""Moving upstream response bodies to the client: buffered JSON, metered SSE, raw passthrough.

After the status line has gone out, a failure can only be reported inside the stream, as the
API's own error event (``ApiSpec.stream_error_event``: ``data: {"error": ...}`` on Chat, an
``event: error`` on Responses; the SDKs raise ``APIError`` on both). Reading from upstream and
writing to the client are guarded separately, so a client that went away is never mistaken
for an upstream failure (aiohttp's write-side reset is also a ``ClientConnectionError``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiohttp import web

from gateway.errors import GatewayError, UpstreamUnavailableError
from gateway.sse import StreamMeter
from gateway.upstream.client import CLIENT_GONE, RAW_CHUNK_BYTES, UpstreamResponse


class StreamEnd(enum.Enum):
    COMPLETE = "complete"  # upstream finished normally (terminal event seen when metered)
    UPSTREAM_CUT = "upstream_cut"  # upstream failed or ended early after headers were sent
    CLIENT_GONE = "client_gone"  # the client disconnected mid-stream


@dataclass(slots=True)
class RelayResult:
    end: StreamEnd
    bytes_sent: int = 0
    first_byte_at: float | None = None  # perf_counter() when the first body bytes went out


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes | GatewayError | None:
    """The next upstream chunk, None at EOF, or the read error (so the caller can tell)."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
    except GatewayError as exc:
        return exc


async def prepare(client: web.StreamResponse, request: web.Request) -> bool:
    """Send a stream's status and headers; False when the client has already gone."""
    try:
        await client.prepare(request)
    except CLIENT_GONE:
        return False
    return True


async def relay_sse(
    upstream: UpstreamResponse,
    client: web.StreamResponse,
    meter: StreamMeter,
    result: RelayResult | None = None,
) -> RelayResult:
    """Relay an event stream chunk by chunk; ``meter`` reads usage and hides chunks (and hands
    the upstream's bytes to its ``tap``, the cache recorder, if any). ``result``, when given,
    is filled in as the relay goes, so a caller that cancels the relay still has it."""
    if result is None:
        result = RelayResult(StreamEnd.COMPLETE)
    chunks = upstream.chunks().__aiter__()
    failure: GatewayError | None = None
    ended = False
    while True:
        item = await _next_chunk(chunks)
        if item is None:
            break
        if isinstance(item, GatewayError):
            failure = item
            break
        data = meter.feed(item)
        if ended:
            continue  # read on to the upstream's EOF, so its connection goes back to the pool
        if meter.done:
            # The terminal event is in: it goes out with the end of the stream, in one write
            # instead of two, without waiting for the upstream's EOF.
            ended = True
            if not await _finish(client, result, data):
                return result
            continue
        if data and not await _write(client, data, result):
            return result
    if ended:
        meter.flush()  # anything held after the terminal event still reaches the tap
        return result  # a transport error after the terminal event is not a cut
    tail = meter.flush()
    if meter.done:
        # The terminal event arrived, so the client has the whole answer: a transport error
        # after it (say, the chunked terminator lost) is not a cut. An error event here
        # would make the SDKs raise on a complete Responses stream.
        failure = None
    elif failure is None:
        failure = UpstreamUnavailableError(
            "The upstream API ended the stream before it was complete."
        )
    # On a cut stream the held partial event is dropped: written before the error event
    # it would merge with it into one undecodable event (the SDKs would raise a JSON
    # decode error, not APIError). SSE clients discard an unterminated event anyway.
    if failure is None and tail and not await _write(client, tail, result):
        return result
    if failure is not None:
        # Responses streams number their events from 0: the error event comes next.
        event = meter.api.stream_error_event(failure, meter.events)
        if not await _write(client, event, result):
            return result
        result.end = StreamEnd.UPSTREAM_CUT
    await _finish(client, result)
    return result


async def relay_events(client: web.StreamResponse, events: Iterable[bytes]) -> RelayResult:
    """Write stored events (a cache hit's replay) and end the stream."""
    result = RelayResult(StreamEnd.COMPLETE)
    pieces = list(events)
    for event in pieces[:-1]:
        if not await _write(client, event, result):
            return result
    await _finish(client, result, pieces[-1] if pieces else b"")
    return result


async def relay_raw(
    request: web.Request, upstream: UpstreamResponse, client: web.StreamResponse
) -> RelayResult:
    """Pass a body through unchanged (files, audio, anything unmetered)."""
    result = RelayResult(StreamEnd.COMPLETE)
    chunks = upstream.chunks(RAW_CHUNK_BYTES).__aiter__()
    while True:
        item = await _next_chunk(chunks)
        if item is None:
            break
        if isinstance(item, GatewayError):
            # Headers (maybe a Content-Length) are out; the only honest signal left is a cut
            # connection, so the client cannot take a truncated body for a whole one.
            result.end = StreamEnd.UPSTREAM_CUT
            if request.transport is not None:
                request.transport.abort()
            return result
        if not await _write(client, item, result):
            return result
    await _finish(client, result)
    return result


async def _write(client: web.StreamResponse, data: bytes, result: RelayResult) -> bool:
    try:
        await client.write(data)
    except CLIENT_GONE:
        result.end = StreamEnd.CLIENT_GONE
        return False
    if result.first_byte_at is None:
        result.first_byte_at = time.perf_counter()
    result.bytes_sent += len(data)
    return True


async def _finish(client: web.StreamResponse, result: RelayResult, data: bytes = b"") -> bool:
    """End the stream, ``data`` last (one write for both); False when the client has gone."""
    try:
        await client.write_eof(data)
    except CLIENT_GONE:
        result.end = StreamEnd.CLIENT_GONE
        return False
    if data:
        if result.first_byte_at is None:
            result.first_byte_at = time.perf_counter()
        result.bytes_sent += len(data)
    return True
