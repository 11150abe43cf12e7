"""The request's path as the gateway classifies, checks and forwards it: one canonical string."""

from __future__ import annotations

import functools
from urllib.parse import quote, unquote

from aiohttp import web

from gateway.errors import InvalidRequestError

#: The methods the OpenAI API uses. TRACE and CONNECT never reach the upstream: an upstream
#: (or a proxy before it) that answered TRACE would echo the real key back.
FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def api_path(request: web.Request) -> str:
    """The path relative to the upstream's /v1, in one canonical spelling.

    The gateway classifies (metered or not), checks and forwards the *same* string: the
    percent-decoded path, re-encoded canonically. Otherwise ``/v1/%63hat/completions`` would be
    passed through unmetered while the upstream decodes it to ``/chat/completions``. Spellings
    that different servers read differently are refused: encoded separators, empty segments,
    ``;`` parameters, backslashes, dot segments and control characters.
    """
    return _canonical(request.rel_url.raw_path)


@functools.lru_cache(maxsize=2048)
def _canonical(raw: str) -> str:
    # Memoised, bounded: every request asks, and most ask for one of a few paths.
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise InvalidRequestError("Invalid request path.", code="invalid_path")
    decoded = unquote(raw)
    if decoded == "/v1" or decoded.startswith("/v1/"):
        decoded = decoded[3:] or "/"
    if (
        "//" in decoded
        or ";" in decoded
        or "\\" in decoded
        or any(seg in (".", "..") for seg in decoded.split("/"))
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded)
    ):
        raise InvalidRequestError("Invalid request path.", code="invalid_path")
    return quote(decoded, safe=_PATH_SAFE)


_PATH_SAFE = "/-._~!$&'()*+,=:@"
