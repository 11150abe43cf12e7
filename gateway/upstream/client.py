"""The upstream client: one pooled session, forwarding, timeouts, and error mapping.

This is the one place aiohttp's client exceptions are caught: ``send`` and the methods of
``UpstreamResponse`` turn them into the gateway's own OpenAI-shaped errors (connection
failures 502, timeouts 504), so the pipeline and the relay never see a foreign exception.

The session is created with ``auto_decompress=False``: bodies are relayed as the upstream sent
them, so ``Content-Encoding`` stays true.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import UpstreamConfig
from gateway.errors import GatewayError, UpstreamTimeoutError, UpstreamUnavailableError

#: What a write to a client that went away raises (aiohttp refuses writes with RuntimeError
#: once the transport is closing). Kept here with the other aiohttp exceptions.
CLIENT_GONE: tuple[type[Exception], ...] = (
    ConnectionError,
    aiohttp.ClientConnectionResetError,
    RuntimeError,
)

#: Raw relays read the upstream body in pieces of at most this size.
RAW_CHUNK_BYTES = 64 * 1024


def read_error(exc: BaseException) -> GatewayError:
    """The gateway error for a failure while reading an upstream body."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError("The upstream API stopped sending data (timeout).")
    return UpstreamUnavailableError("The upstream API connection failed mid-response.")


class UpstreamResponse(Protocol):
    """An upstream answer whose status and headers are in; the body is read on demand.

    Every read raises ``GatewayError`` (never a transport exception) when the upstream fails.
    The holder must ``release`` it.
    """

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def content_length(self) -> int | None: ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def chunks(self, size: int | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives: any size when ``size`` is ``None``, else at most ``size``."""
        ...

    def release(self) -> None: ...

    def close(self) -> None:
        """Drop the connection now, unread body and all: the upstream sees it close and stops
        generating (``release`` may keep a finished connection for reuse)."""
        ...


class AiohttpResponse:
    """``UpstreamResponse`` over an ``aiohttp.ClientResponse``."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    @property
    def content_length(self) -> int | None:
        return self._response.content_length

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise read_error(exc) from None

    async def chunks(self, size: int | None = None) -> AsyncIterator[bytes]:
        content = self._response.content
        source = content.iter_any() if size is None else content.iter_chunked(size)
        iterator = source.__aiter__()
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise read_error(exc) from None
            yield chunk

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class UpstreamClient(Protocol):
    """What the pipeline needs of an upstream: ``Upstream``, or a fake in unit tests."""

    config: UpstreamConfig

    async def send(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> UpstreamResponse: ...


class Upstream:
    """One shared ``ClientSession`` with a sized pool, pointed at the configured upstream."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self._base = str(config.base_url).rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=config.total_timeout_seconds,
            sock_connect=config.connect_timeout_seconds,
            sock_read=config.read_timeout_seconds,
        )

    @staticmethod
    def create_session(config: UpstreamConfig) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=config.max_connections,
            limit_per_host=config.max_connections,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # Keep paths byte-exact: the gateway has already checked them.
            requote_redirect_url=False,
            skip_auto_headers=("User-Agent", "Content-Type"),
        )

    def url_for(self, path: str, query_string: str) -> str:
        url = self._base + path
        return f"{url}?{query_string}" if query_string else url

    async def send(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        """Start the exchange and return once the response status and headers are in.

        The caller must release the response. Connection failures become 502 and timeouts 504,
        both OpenAI-shaped, so the SDKs retry them.
        """
        kwargs: dict[str, Any] = {"headers": headers, "timeout": self._timeout}
        if body is not None:
            kwargs["data"] = body
        try:
            response = await self.session.request(
                method, self.url_for(path, query_string), allow_redirects=False, **kwargs
            )
        except TimeoutError:
            raise UpstreamTimeoutError("The upstream API did not answer in time.") from None
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, GatewayError):
                # Raised by the request body while aiohttp streamed it (a client's upload went
                # past ``server.max_upload_bytes``): the client's error (413), not a 502.
                raise exc.__cause__ from None
            raise UpstreamUnavailableError(
                f"The upstream API could not be reached ({type(exc).__name__})."
            ) from None
        return AiohttpResponse(response)
