"""Config reload without a restart: on SIGHUP, and when the file's content (or that of the
price list it includes) changes.

Kubernetes updates a mounted ConfigMap by swapping a symlink, which inotify on the file itself
misses; polling a hash of the content sees every kind of update (symlink swap, editor rename,
in-place write) at the cost of reading a small file every few seconds.

A valid new file takes effect for new requests (``GatewayState.reload``); an invalid one is
logged with its exact error and counted, and the config in force stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.config_loader import ConfigError, included_prices_path, load_config
from gateway.state import GatewayState

log = logging.getLogger("gateway")


class ConfigReloader:
    def __init__(
        self,
        path: str | Path,
        state: GatewayState,
        *,
        env: Mapping[str, str] | None = None,
        adjust: Callable[[GatewayConfig], GatewayConfig] | None = None,
    ) -> None:
        """``adjust`` is applied to every config loaded (``gateway serve``'s --host/--port)."""
        self.path = Path(path)
        self.state = state
        self.env = env
        self.adjust = adjust
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        """A digest of the config file and the price list it includes (either may change)."""
        digest = hashlib.sha256()
        try:
            digest.update(self.path.read_bytes())
        except OSError:
            return None
        include = self.state.config.pricing.include
        if include is not None:
            try:
                digest.update(included_prices_path(self.path.parent, include).read_bytes())
            except OSError:
                digest.update(b"\0missing")
        return digest.hexdigest()

    def reload(self) -> bool:
        """Load and apply the file now; True when the new config is in force."""
        metrics = self.state.metrics
        self._digest = self._read_digest()
        try:
            config = load_config(self.path, env=self.env)
            if self.adjust is not None:
                config = self.adjust(config)
        except ConfigError as exc:
            metrics.config_reloads.labels(result="failure").inc()
            log.error(
                "config reload rejected; keeping the config in force", extra={"error": str(exc)}
            )
            return False
        needs_restart = self.state.reload(config)
        metrics.config_reloads.labels(result="success").inc()
        metrics.config_loaded.set(time.time())
        log.info(
            "config reloaded",
            extra={"teams": len(config.teams), "needs_restart": needs_restart or None},
        )
        return True

    def changed(self) -> bool:
        digest = self._read_digest()
        return digest is not None and digest != self._digest

    async def watch(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            if self.changed():
                self.reload()
