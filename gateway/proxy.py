"""The upstream client: header hygiene, forwarding, timeouts, and error mapping.

Header rules (see shared OpenAI contract §2 and §9):

- To upstream: the client's ``Authorization`` is replaced by the real key; ``OpenAI-Organization``
  and ``OpenAI-Project`` are dropped and replaced by the configured values, so a client cannot
  choose who is billed; hop-by-hop headers, ``Host`` and ``Content-Length`` are dropped (aiohttp
  writes the right ones); the gateway's own ``x-gateway-*`` control headers stay here.
- From upstream: hop-by-hop headers, the upstream's ``x-ratelimit-*`` (they describe the shared
  organisation key, not the team), ``openai-organization`` (it names the real org), cookies and
  CDN headers are dropped.

The session is created with ``auto_decompress=False``: bodies are relayed as the upstream sent
them, so ``Content-Encoding`` stays true. On the metered APIs the gateway must read the body (for
usage), so it asks upstream for ``identity`` there; elsewhere the client's ``Accept-Encoding``
is forwarded and compressed bytes pass through untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import UpstreamConfig
from gateway.errors import GatewayError, UpstreamTimeoutError, UpstreamUnavailableError

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

_DROP_FROM_CLIENT = HOP_BY_HOP | {
    "host",
    "authorization",
    "openai-organization",
    "openai-project",
    "content-length",
    "accept-encoding",
    "cookie",
    "x-gateway-cache",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
}

_DROP_FROM_UPSTREAM = HOP_BY_HOP | {
    "content-length",
    "openai-organization",
    "set-cookie",
    "server",
    "date",
    "alt-svc",
    "cf-ray",
    "cf-cache-status",
    "strict-transport-security",
}


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    """Headers named in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1)."""
    value = headers.get("connection")
    if not value:
        return set()
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def upstream_request_headers(
    client_headers: CIMultiDictProxy[str],
    config: UpstreamConfig,
    *,
    accept_encoding: str | None,
) -> CIMultiDict[str]:
    extra_drop = _connection_tokens(client_headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client_headers.items():
        lower = name.lower()
        if lower in _DROP_FROM_CLIENT or lower in extra_drop:
            continue
        out.add(name, value)
    out["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
    if config.organization:
        out["OpenAI-Organization"] = config.organization
    if config.project:
        out["OpenAI-Project"] = config.project
    out["Accept-Encoding"] = accept_encoding or "identity"
    return out


def client_response_headers(upstream_headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    extra_drop = _connection_tokens(upstream_headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream_headers.items():
        lower = name.lower()
        if lower in _DROP_FROM_UPSTREAM or lower in extra_drop or lower.startswith("x-ratelimit-"):
            continue
        out.add(name, value)
    return out


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
    ) -> aiohttp.ClientResponse:
        """Start the exchange and return once the response status and headers are in.

        The caller must release the response. Connection failures become 502 and timeouts 504,
        both OpenAI-shaped, so the SDKs retry them.
        """
        kwargs: dict[str, Any] = {"headers": headers, "timeout": self._timeout}
        if body is not None:
            kwargs["data"] = body
        try:
            return await self.session.request(
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
