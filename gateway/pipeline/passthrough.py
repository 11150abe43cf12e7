"""Every API the gateway does not meter: body streamed through unparsed, response as is."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import RequestTooLargeError
from gateway.pipeline.forward import Call, forward, note_stream_end, start_stream
from gateway.upstream.relay import relay_raw

_UPLOAD_CHUNK_BYTES = 64 * 1024


async def passthrough(call: Call) -> web.StreamResponse:
    request, exchange = call.request, call.exchange
    body: AsyncIterator[bytes] | None = None
    length: int | None = None
    if request.body_exists:
        limit = call.config.server.max_upload_bytes
        if request.content_length is not None:
            if request.content_length > limit:
                raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
            length = request.content_length
        body = _bounded_body(request, limit)
    forwarded = await forward(
        call,
        body,
        accept_encoding=request.headers.get("Accept-Encoding"),
        content_length=length,
    )
    upstream = forwarded.upstream
    try:
        client = web.StreamResponse(status=upstream.status, headers=forwarded.headers)
        # Bytes pass through undecoded (the session does not decompress): the length holds.
        client.content_length = upstream.content_length
        if not await start_stream(client, request, exchange):
            return client
        result = await relay_raw(request, upstream, client)
        exchange.upstream_seconds = time.perf_counter() - forwarded.sent_at
        note_stream_end(exchange, result)
        return client
    finally:
        upstream.release()


async def _bounded_body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.content.iter_chunked(_UPLOAD_CHUNK_BYTES):
        received += len(chunk)
        if received > limit:
            # Past the limit mid-upload: aborting the upstream request is all that is left.
            raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
        yield chunk
