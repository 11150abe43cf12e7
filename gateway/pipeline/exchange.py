"""One request as the gateway saw it (``Exchange``): its id, what it asked and what it cost,
recorded once into metrics and the access log when it ends."""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.apis import OTHER, ApiSpec, Usage
from gateway.config_pricing import nano_to_usd
from gateway.log import ACCESS
from gateway.metrics import Metrics
from gateway.quota.early_stop import EarlyStop
from gateway.quota.pricing import UnitPrice

_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}


def _status_class(status: int) -> str:
    return _STATUS_CLASS.get(status // 100, "5xx")


REQUEST_ID: web.RequestKey[str] = web.RequestKey("gateway.request_id", str)


@dataclass(slots=True)
class Exchange:
    """What the access log says about one request."""

    request_id: str
    started: float
    method: str
    path: str
    team: str | None = None
    user: str | None = None  # auth.user_claim: logged, never a metric label (unbounded)
    api: ApiSpec = OTHER
    model: str | None = None
    stream: bool = False
    status: int = 0
    outcome: str = "ok"
    upstream_request_id: str | None = None
    upstream_seconds: float | None = None
    usage: Usage | None = None
    released: bool = False  # the upstream produced nothing billable
    early_stop: EarlyStop | None = None  # the client left before the usage arrived
    cache: str = "none"  # hit | miss | bypass | error | none (not cacheable)
    first_byte_seconds: float | None = None  # streams: request start to first body bytes
    upstream_error: str | None = None  # connect | timeout | status_4xx | status_5xx | stream_cut
    extra: dict[str, Any] = field(default_factory=dict)
    price: UnitPrice | None = None  # the request's prices, when its model has one
    #: What a request its client left early was charged (nano-dollars), when it has a price.
    early_stop_cost: int | None = None

    def cost(self) -> int | None:
        """What the request cost (nano-dollars): its usage at its prices, or, stopped early,
        what it was charged; None for an unpriced model."""
        if self.price is None:
            return None
        if self.usage is not None:
            return self.price.cost(self.usage)
        return self.early_stop_cost

    def record(self, metrics: Metrics, cost: int | None) -> None:
        """Metrics for a finished request; labels are folded to bounded sets here."""
        team = self.team or "unauthenticated"
        model = metrics.model_label(self.model)
        endpoint = self.api.name
        child = metrics.child
        child(metrics.requests, team, model, endpoint, _status_class(self.status), self.cache).inc()
        if self.cache != "none":
            child(metrics.cache_lookups, self.cache).inc()
        total = time.perf_counter() - self.started
        child(metrics.duration, endpoint).observe(total)
        if self.upstream_seconds is not None:
            child(metrics.upstream_duration, endpoint).observe(self.upstream_seconds)
            child(metrics.overhead, endpoint).observe(max(0.0, total - self.upstream_seconds))
        if self.first_byte_seconds is not None:
            child(metrics.time_to_first_byte, endpoint).observe(self.first_byte_seconds)
        if self.upstream_error is not None:
            child(metrics.upstream_errors, self.upstream_error).inc()
        usage = self.usage
        if usage is not None:
            counter = metrics.saved_tokens if self.cache == "hit" else metrics.tokens
            metrics.count_usage(counter, team, model, endpoint, usage)
        if cost:
            spent = metrics.saved_cost if self.cache == "hit" else metrics.cost
            child(spent, team, model).inc(nano_to_usd(cost))

    def log(self, cost: int | None) -> None:
        """The access line; ``cost`` is ``self.cost()``, computed once by the caller."""
        usage = self.usage
        ACCESS.write(
            {
                "request_id": self.request_id,
                "upstream_request_id": self.upstream_request_id,
                "team": self.team,
                "user": self.user,
                "method": self.method,
                "path": self.path,
                "endpoint": self.api.name,
                "model": self.model,
                "stream": self.stream,
                "status": self.status,
                "outcome": self.outcome,
                "cache": self.cache,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "cached_prompt_tokens": usage.cached_prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
                "reasoning_tokens": usage.reasoning_tokens if usage else None,
                # A cache hit cost nothing; its usage is what it saved.
                "cost_usd": None
                if cost is None
                else 0.0
                if self.cache == "hit"
                else nano_to_usd(cost),
                "upstream_ms": _ms(self.upstream_seconds),
                "duration_ms": _ms(time.perf_counter() - self.started),
                **self.extra,
            }
        )


def _ms(seconds: float | None) -> float | None:
    # Not round(x, 2): it costs several times as much, on two fields of every access line.
    return None if seconds is None else int(seconds * 100_000 + 0.5) / 100


_ID_PREFIX = "gw-" + secrets.token_hex(6)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """Unique across replicas (random per-process prefix) without a system call per request."""
    return f"{_ID_PREFIX}{next(_id_counter):012x}"
