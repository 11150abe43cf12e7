"""Moving upstream response bodies to the client: buffered JSON, metered SSE, raw passthrough.

After the status line has gone out, a failure can only be reported inside the stream: an SSE
``data: {"error": ...}`` event (the SDKs raise ``APIError`` on it). Reading from upstream and
writing to the client are guarded separately, so a client that went away is never mistaken
for an upstream failure (aiohttp's write-side reset is also a ``ClientConnectionError``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.cache.entry import SseRecorder
from gateway.errors import (
    GatewayError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    render_sse_event,
)
from gateway.sse import StreamMeter


class StreamEnd(enum.Enum):
    COMPLETE = "complete"  # upstream finished normally (terminal event seen when metered)
    UPSTREAM_CUT = "upstream_cut"  # upstream failed or ended early after headers were sent
    CLIENT_GONE = "client_gone"  # the client disconnected mid-stream


@dataclass(slots=True)
class RelayResult:
    end: StreamEnd
    bytes_sent: int = 0
    first_byte_at: float | None = None  # perf_counter() when the first body bytes went out


def upstream_read_error(exc: BaseException) -> GatewayError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError("The upstream API stopped sending data (timeout).")
    return UpstreamUnavailableError("The upstream API connection failed mid-response.")


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes | BaseException | None:
    """The next upstream chunk, None at EOF, or the read error (so the caller can tell)."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return exc


async def relay_sse(
    upstream: aiohttp.ClientResponse,
    client: web.StreamResponse,
    meter: StreamMeter | None,
    recorder: SseRecorder | None = None,
) -> RelayResult:
    """Relay an event stream chunk by chunk; ``meter`` (if any) reads usage and hides chunks;
    ``recorder`` (if any) keeps the upstream's bytes for the cache."""
    result = RelayResult(StreamEnd.COMPLETE)
    chunks = upstream.content.iter_any().__aiter__()
    failure: GatewayError | None = None
    while True:
        item = await _next_chunk(chunks)
        if item is None:
            break
        if isinstance(item, BaseException):
            failure = upstream_read_error(item)
            break
        if recorder is not None:
            recorder.feed(item)
        data = meter.feed(item) if meter is not None else item
        if data and not await _write(client, data, result):
            return result
    if meter is not None:
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
        if not await _write(client, render_sse_event(failure), result):
            return result
        result.end = StreamEnd.UPSTREAM_CUT
    await _finish(client, result)
    return result


async def relay_events(client: web.StreamResponse, events: Iterable[bytes]) -> RelayResult:
    """Write stored events (a cache hit's replay) and end the stream."""
    result = RelayResult(StreamEnd.COMPLETE)
    for event in events:
        if not await _write(client, event, result):
            return result
    await _finish(client, result)
    return result


async def relay_raw(
    request: web.Request, upstream: aiohttp.ClientResponse, client: web.StreamResponse
) -> RelayResult:
    """Pass a body through unchanged (files, audio, anything unmetered)."""
    result = RelayResult(StreamEnd.COMPLETE)
    chunks = upstream.content.iter_chunked(64 * 1024).__aiter__()
    while True:
        item = await _next_chunk(chunks)
        if item is None:
            break
        if isinstance(item, BaseException):
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
    except (ConnectionError, aiohttp.ClientConnectionResetError, RuntimeError):
        # RuntimeError: aiohttp refuses writes once the transport is closing.
        result.end = StreamEnd.CLIENT_GONE
        return False
    if result.first_byte_at is None:
        result.first_byte_at = time.perf_counter()
    result.bytes_sent += len(data)
    return True


async def _finish(client: web.StreamResponse, result: RelayResult) -> None:
    try:
        await client.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError, RuntimeError):
        result.end = StreamEnd.CLIENT_GONE
