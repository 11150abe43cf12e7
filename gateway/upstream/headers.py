"""Header hygiene between client, gateway and upstream (see the OpenAI contract, sections 2, 9).

- To upstream: the client's ``Authorization`` is replaced by the real key; ``OpenAI-Organization``
  and ``OpenAI-Project`` are dropped and replaced by the configured values, so a client cannot
  choose who is billed; hop-by-hop headers, ``Host`` and ``Content-Length`` are dropped (aiohttp
  writes the right ones); the gateway's own ``x-gateway-*`` control headers stay here.
- From upstream: hop-by-hop headers, the upstream's ``x-ratelimit-*`` (they describe the shared
  organisation key, not the team), ``openai-organization`` (it names the real org), cookies and
  CDN headers are dropped.

On the metered APIs the gateway must read the body (for usage), so it asks upstream for
``identity`` there; elsewhere the client's ``Accept-Encoding`` is forwarded and compressed bytes
pass through untouched (the session does not decompress).
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import UpstreamConfig

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
