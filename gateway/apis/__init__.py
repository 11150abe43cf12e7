"""The OpenAI APIs the gateway knows, one module each, behind ``base.ApiSpec``.

Adding a metered API means one module here (a subclass of ``ApiSpec`` and its instance) and
one line in ``METERED`` below; the pipeline, the SSE meter, the cache and the quota planner
ask the spec and need no change.
"""

from __future__ import annotations

from gateway.apis.base import ApiSpec, RequestInfo, StreamFormat
from gateway.apis.chat import CHAT
from gateway.apis.completions import COMPLETIONS
from gateway.apis.embeddings import EMBEDDINGS
from gateway.apis.fields import BAD_JSON, MAX_CHOICES, MAX_OUTPUT_TOKENS, REASONING_EFFORTS
from gateway.apis.images import IMAGES
from gateway.apis.other import OTHER
from gateway.apis.responses import RESPONSES
from gateway.apis.usage import Usage

__all__ = [
    "BAD_JSON",
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "IMAGES",
    "MAX_CHOICES",
    "MAX_OUTPUT_TOKENS",
    "METERED",
    "OTHER",
    "REASONING_EFFORTS",
    "RESPONSES",
    "ApiSpec",
    "RequestInfo",
    "StreamFormat",
    "Usage",
    "by_name",
    "classify",
]

METERED: tuple[ApiSpec, ...] = (CHAT, RESPONSES, COMPLETIONS, EMBEDDINGS, IMAGES)
_BY_PATH: dict[str, ApiSpec] = {api.path: api for api in METERED if api.path is not None}
_BY_NAME: dict[str, ApiSpec] = {api.name: api for api in (*METERED, OTHER)}


def by_name(name: str) -> ApiSpec:
    """The API whose ``name`` this is (``KeyError`` otherwise): stored cache entries name it."""
    return _BY_NAME[name]


def classify(method: str, path: str) -> ApiSpec:
    """Which metered API a request targets; anything unknown is ``OTHER`` (passthrough).

    ``path`` is relative to the upstream base URL (no ``/v1``). A query string, if the caller
    left one on, is ignored; one trailing slash is tolerated because clients that build URLs
    by joining strings sometimes add it.
    """
    if method.upper() != "POST":
        return OTHER
    if "?" in path:
        path = path.partition("?")[0]
    if len(path) > 1 and path[-1] == "/":
        path = path[:-1]
    return _BY_PATH.get(path, OTHER)
