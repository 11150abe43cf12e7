"""What every request reads: the config in force and the objects built from it.

One ``GatewayState`` lives for the whole process. A config reload builds the new pieces first
and then swaps them in with plain attribute assignments (no await in between), so a request
sees either the old config or the new one, never a mix; requests in flight keep the objects
they already hold. Counters live in the store and are keyed without limit values, so a reload
never resets usage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

from gateway.auth import Authenticator, JwksCache
from gateway.cache.service import CacheService
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.quota.jobs import JobLedger
from gateway.quota.service import QuotaService
from gateway.upstream import Upstream

log = logging.getLogger("gateway")


def build_authenticator(config: GatewayConfig, session: aiohttp.ClientSession) -> Authenticator:
    jwks = None
    if config.auth.jwks_url is not None:
        jwks = JwksCache(
            str(config.auth.jwks_url),
            lambda: session,
            cache_seconds=config.auth.jwks_cache_seconds,
            min_refresh_interval_seconds=config.auth.jwks_min_refresh_interval_seconds,
        )
    return Authenticator(config.auth, jwks=jwks)


class GatewayState:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        session: aiohttp.ClientSession,
        quotas: QuotaService,
        cache: CacheService,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.session = session
        self.quotas = quotas
        self.jobs = JobLedger(quotas)
        self.cache = cache
        self.metrics = metrics
        self.clock = clock
        self.draining = False
        self.config = config
        self.authenticator = build_authenticator(config, session)
        self.upstream = Upstream(config.upstream, session)
        self._configure(config)

    def _configure(self, config: GatewayConfig) -> None:
        self.quotas.on_error = config.store.on_error
        self.quotas.hold_seconds = (
            config.upstream.total_timeout_seconds + config.store.reservation_grace_seconds
        )
        self.quotas.configure_admission(config.admission)
        self.metrics.configure(config)

    def reload(self, config: GatewayConfig) -> list[str]:
        """Swap in a new config; returns the settings that only a restart can change."""
        needs_restart = [
            name
            for name, old, new in (
                ("store", self.config.store.redis_url, config.store.redis_url),
                ("store.key_prefix", self.config.store.key_prefix, config.store.key_prefix),
                ("server", self.config.server, config.server),
                ("metrics.port", self.config.metrics.port, config.metrics.port),
                (
                    "upstream.max_connections",
                    self.config.upstream.max_connections,
                    config.upstream.max_connections,
                ),
            )
            if old != new
        ]
        authenticator = build_authenticator(config, self.session)
        upstream = Upstream(config.upstream, self.session)
        self.config = config
        self.authenticator = authenticator
        self.upstream = upstream
        self._configure(config)
        return needs_restart


STATE: web.AppKey[GatewayState] = web.AppKey("gateway.state", GatewayState)
