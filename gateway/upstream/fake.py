"""A function-backed upstream, so the pipeline and the relay can be tested without sockets.

``FakeUpstream(handler)`` answers every ``send`` with whatever ``handler`` returns for the
request it was given; ``FakeResponse`` is an answer whose body arrives in given pieces and may
fail part way, exactly as ``UpstreamResponse`` reports a failure (a ``GatewayError``). The
mock OpenAI server stays the upstream of end-to-end tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import UpstreamConfig
from gateway.errors import GatewayError


@dataclass(slots=True)
class FakeRequest:
    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes | None


@dataclass(slots=True)
class FakeResponse:
    status: int = 200
    header_items: Sequence[tuple[str, str]] = ()
    pieces: Sequence[bytes] = ()
    #: Raised after the last piece, as a cut upstream does.
    error: GatewayError | None = None
    released: bool = field(default=False, init=False)
    closed: bool = field(default=False, init=False)

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict(self.header_items))

    @property
    def content_length(self) -> int | None:
        return None

    async def read(self) -> bytes:
        if self.error is not None:
            raise self.error
        return b"".join(self.pieces)

    async def chunks(self, size: int | None = None) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if size is None:
                yield piece
                continue
            for start in range(0, len(piece), size):
                yield piece[start : start + size]
        if self.error is not None:
            raise self.error

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.released = self.closed = True


Handler = Callable[[FakeRequest], Awaitable[FakeResponse]]


class FakeUpstream:
    """``UpstreamClient`` answering from ``handler``; keeps every request it was sent."""

    def __init__(self, config: UpstreamConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self.requests: list[FakeRequest] = []

    async def send(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> FakeResponse:
        if body is not None and not isinstance(body, bytes):
            body = b"".join([piece async for piece in body])
        request = FakeRequest(method, path, query_string, headers, body)
        self.requests.append(request)
        return await self.handler(request)
