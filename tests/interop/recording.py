"""An httpx2 transport that keeps a copy of every response body an openai-python client reads
(httpx2 is the HTTP client openai-python is built on).

It lets a test see the raw bytes the SDK parsed (for example the last SSE event of a cut
stream) and count the SDK's attempts, without a second request that might be answered
differently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx2 as httpx


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, sink: bytearray) -> None:
        self._inner = inner
        self._sink = sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._sink.extend(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class RecordingTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.bodies: list[bytearray] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        sink = bytearray()
        self.bodies.append(sink)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, sink),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class SseEvent:
    event: str | None
    data: str


def parse_sse(body: bytes) -> list[SseEvent]:
    """Events of an SSE body (``event:``/``data:`` lines; comments and ids ignored)."""
    events: list[SseEvent] = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].removeprefix(" "))
        if name is not None or data:
            events.append(SseEvent(name, "\n".join(data)))
    return events
