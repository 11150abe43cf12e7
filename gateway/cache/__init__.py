"""Response cache: what may be cached and under which key (``policy``), the stored form of a
response (``entry``), SSE record/replay (``recorder``), storage (``backend``), and single-flight
(``singleflight``). Only ``backend`` and ``singleflight`` do I/O.
"""

from gateway.cache.backend import (
    CacheBackend,
    MemoryCacheBackend,
    RedisCacheBackend,
)
from gateway.cache.entry import (
    CONTENT_HEADERS,
    CachedResponse,
    content_headers,
    decode,
    encode,
    json_storable,
)
from gateway.cache.policy import (
    IGNORED_FIELDS,
    CacheSettings,
    Decision,
    Directives,
    cache_key,
    cache_scope,
    decide,
    effective_settings,
    request_directives,
    upstream_identity,
)
from gateway.cache.recorder import SseRecorder, replay_events
from gateway.cache.singleflight import Outcome, SingleFlight, Slot, coalesce

__all__ = [
    "CONTENT_HEADERS",
    "IGNORED_FIELDS",
    "CacheBackend",
    "CacheSettings",
    "CachedResponse",
    "Decision",
    "Directives",
    "MemoryCacheBackend",
    "Outcome",
    "RedisCacheBackend",
    "SingleFlight",
    "Slot",
    "SseRecorder",
    "cache_key",
    "cache_scope",
    "coalesce",
    "content_headers",
    "decide",
    "decode",
    "effective_settings",
    "encode",
    "json_storable",
    "replay_events",
    "request_directives",
    "upstream_identity",
]
