"""The response cache as the request handler uses it: decide, look up, coalesce, store.

Redis trouble never fails a request: every backend error becomes a miss (or a skipped store)
and is counted in ``gateway_cache_lookups_total{result="error"}`` and
``gateway_store_errors_total{operation="cache_*"}``.

Order in a request: the key is computed after the team's policy rewrites (effort ceiling) and
before the quota clamp and the injected ``include_usage``, so it names what the client asked
for. A hit is served before any quota reservation: hits cost no upstream tokens and are not
charged to token caps. A response is not stored when the gateway lowered the client's output
limit and the response was cut by it (``finish_reason: length``): another request with budget
left must not be replayed a truncated answer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from gateway.apis import ApiSpec, RequestInfo, Usage
from gateway.cache.backend import CacheBackend
from gateway.cache.entry import CachedResponse, decode, encode, json_storable
from gateway.cache.policy import (
    CacheSettings,
    Directives,
    cache_key,
    cache_scope,
    decide,
    effective_settings,
    request_directives,
    upstream_identity,
)
from gateway.cache.recorder import SseRecorder, replay_events
from gateway.cache.singleflight import SingleFlight, Slot, coalesce
from gateway.config import GatewayConfig, TeamConfig
from gateway.metrics import Metrics
from gateway.sse import StreamMeter
from gateway.storage.breaker import StoreBreaker
from gateway.storage.errors import StoreError as CacheBackendError

log = logging.getLogger("gateway.cache")

_TRUNCATED = (b'"finish_reason":"length"', b'"finish_reason": "length"')


#: The in-process first level: recent entries, decoded, with their stream replays rendered.
#: Entries are immutable (a key names one response), so serving them from memory for a short
#: while is safe; it only delays a purge by at most ``L1_TTL_SECONDS`` on other replicas.
L1_TTL_SECONDS = 30.0
L1_MAX_BYTES = 32 * 1024 * 1024


@dataclass(slots=True)
class _Local:
    entry: CachedResponse
    expires_at: float
    size: int
    rendered: dict[bool, bytes]  # include_usage -> the SSE bytes a client receives


class LocalEntries:
    """A bounded LRU of decoded entries (the cache's first level, per process)."""

    def __init__(self, max_bytes: int = L1_MAX_BYTES, clock: Callable[[], float] = time.monotonic):
        self._items: OrderedDict[str, _Local] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._clock = clock

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> _Local | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires_at <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item

    def put(self, key: str, entry: CachedResponse, ttl_seconds: float) -> None:
        size = entry.content_bytes
        if size > self._max_bytes // 16:
            return  # a few huge entries must not evict everything else
        self._drop(key)
        expires = self._clock() + min(ttl_seconds, L1_TTL_SECONDS)
        self._items[key] = _Local(entry, expires, size, {})
        self._bytes += size
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._items)))

    def purge(self, scope: str | None) -> None:
        for key in [k for k in self._items if scope is None or k.startswith(scope + ":")]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item.size


@dataclass(slots=True)
class CachePlan:
    key: str
    settings: CacheSettings
    directives: Directives
    api: ApiSpec
    slot: Slot | None = None
    output_lowered: bool = False  # the gateway wrote a lower output limit than asked
    backend_failed: bool = False  # the lookup could not reach the backend


class CacheService:
    def __init__(
        self,
        backend: CacheBackend,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        breaker: StoreBreaker | None = None,
    ) -> None:
        self.backend = backend
        self.breaker = breaker if breaker is not None else StoreBreaker()
        self.metrics = metrics
        self.clock = clock
        self.flight = SingleFlight()
        self.local = LocalEntries()
        # Effective settings per (global, team) config objects; a reload brings new objects.
        self._settings: dict[tuple[int, int], tuple[object, object, CacheSettings]] = {}

    def settings_for(self, config: GatewayConfig, team: TeamConfig) -> CacheSettings:
        key = (id(config.cache), id(team.cache))
        known = self._settings.get(key)
        if known is not None and known[0] is config.cache and known[1] is team.cache:
            return known[2]
        if len(self._settings) > 4096:
            self._settings.clear()
        settings = effective_settings(config.cache, team.cache)
        self._settings[key] = (config.cache, team.cache, settings)
        return settings

    def plan(
        self,
        config: GatewayConfig,
        team_name: str,
        team: TeamConfig,
        info: RequestInfo,
        body: dict[str, Any],
        *,
        method: str,
        path: str,
        headers: Mapping[str, str],
    ) -> CachePlan | None:
        """The cache's part in this request, or None when it may not be cached."""
        settings = self.settings_for(config, team)
        if not settings.enabled:
            return None
        directives = request_directives(
            headers.get("Cache-Control"), headers.get("x-gateway-cache")
        )
        if not decide(info, body, settings, force=directives.force).cacheable:
            return None
        key = cache_key(
            method=method,
            path=path,
            body=body,
            stream=info.stream,
            scope=cache_scope(settings, team_name),
            upstream_id=upstream_identity(config.upstream),
        )
        return CachePlan(key=key, settings=settings, directives=directives, api=info.api)

    async def lookup(self, plan: CachePlan) -> tuple[CachedResponse | None, str]:
        """The entry from this process's memory, if any, and the result so far: hit, miss or
        bypass. The backend is asked by ``coalesce``, together with taking the lock."""
        if not plan.directives.lookup:
            return None, "bypass"
        local = self.local.get(plan.key)
        if local is not None:
            return local.entry, "hit"
        return None, "miss"  # so far: ``coalesce`` asks the backend next

    def replay(self, key: str, entry: CachedResponse, *, include_usage: bool) -> bytes:
        """A stored stream as the client receives it, rendered once per framing."""
        local = self.local.get(key)
        if local is None or local.entry is not entry:
            return b"".join(replay_events(entry, include_usage=include_usage))
        rendered = local.rendered.get(include_usage)
        if rendered is None:
            rendered = local.rendered[include_usage] = b"".join(
                replay_events(entry, include_usage=include_usage)
            )
        return rendered

    @asynccontextmanager
    async def coalesce(self, plan: CachePlan) -> AsyncIterator[CachedResponse | None]:
        """Wait for an identical request in flight (here or on another replica); yields its
        entry, or None when this request must go upstream itself (then ``store`` publishes)."""
        if not self.breaker.available():
            plan.backend_failed = True  # the store failed moments ago: do not wait on it again
            yield None
            return
        async with coalesce(
            self.flight,
            self.backend,
            plan.key,
            lock_seconds=plan.settings.lock_seconds,
            wait_seconds=plan.settings.wait_seconds,
            on_error=lambda exc: self._backend_error("cache_get", exc, plan),
        ) as slot:
            entry = decode(slot.entry) if slot.entry is not None else None
            if entry is None:
                plan.slot = slot
            elif slot.outcome == "remote":
                self.local.put(plan.key, entry, plan.settings.ttl_seconds - entry.age(self.clock()))
            try:
                yield entry
            finally:
                slot.publish(None)  # no-op when store() already published

    def recorder(self, plan: CachePlan, meter: StreamMeter) -> SseRecorder:
        """Records the stream ``meter`` relays, for ``store_stream``."""
        return SseRecorder(meter, max_bytes=plan.settings.max_entry_bytes)

    async def store_json(
        self,
        plan: CachePlan,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        usage: Usage | None,
    ) -> None:
        if json_storable(plan.api, status, body, max_bytes=plan.settings.max_entry_bytes):
            return
        if plan.output_lowered and any(marker in body for marker in _TRUNCATED):
            return
        await self._store(plan, self._entry(plan, status, headers, usage, body=body))

    async def store_stream(
        self, plan: CachePlan, status: int, headers: Mapping[str, str], recorder: SseRecorder
    ) -> None:
        events = recorder.result()
        if events is None:
            return
        if plan.output_lowered and any(m in e for e in events for m in _TRUNCATED):
            return
        entry = self._entry(plan, status, headers, recorder.usage, events=events)
        await self._store(plan, entry)

    def _entry(
        self,
        plan: CachePlan,
        status: int,
        headers: Mapping[str, str],
        usage: Usage | None,
        *,
        body: bytes | None = None,
        events: list[bytes] | None = None,
    ) -> CachedResponse:
        return CachedResponse(
            api=plan.api,
            status=status,
            headers=list(headers.items()),
            created_at=int(self.clock()),
            body=body,
            events=events,
            usage=usage,
        )

    async def _store(self, plan: CachePlan, entry: CachedResponse) -> None:
        data = encode(entry)
        if plan.slot is not None:
            plan.slot.publish(data)  # identical requests waiting here get it at once
        if not plan.directives.store:
            return
        self.local.put(plan.key, entry, plan.settings.ttl_seconds)
        slot = plan.slot
        if not self.breaker.available():
            return
        try:
            if slot is not None and slot.holds_lock:
                slot.holds_lock = False
                await self.backend.put_and_unlock(plan.key, data, plan.settings.ttl_seconds)
            else:
                await self.backend.put(plan.key, data, plan.settings.ttl_seconds)
        except CacheBackendError as exc:
            self._backend_error("cache_put", exc)

    def _backend_error(
        self, operation: str, exc: CacheBackendError, plan: CachePlan | None = None
    ) -> None:
        if plan is not None:
            plan.backend_failed = True
        self.breaker.failed(exc)
        self.metrics.store_errors.labels(operation=operation).inc()
        log.warning("cache backend error", extra={"operation": operation, "error": str(exc)})

    async def purge(self, scope: str | None) -> int:
        self.local.purge(scope)
        return await self.backend.purge(scope)
