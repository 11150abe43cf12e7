"""A store that just failed is not asked again for a moment.

Without this, every request pays the full store timeout while Redis is down or frozen, and a
cacheable request pays it several times (cache lookup, quota reserve, cache store). After a
*timeout* the breaker is open for ``cooldown_seconds``: callers take their fallback at once (a
cache miss, the quota ``on_error`` mode). The first call after the cooldown tries the store
again. Other failures (connection refused, a reset connection after a Redis restart) are fast
already and do not open it, so a restarted Redis is used again at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.storage.errors import StoreError, StoreSkippedError, StoreTimeoutError


class StoreBreaker:
    def __init__(
        self, cooldown_seconds: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._open_until = 0.0

    def available(self) -> bool:
        return self._clock() >= self._open_until

    def check(self) -> None:
        """Raise ``StoreSkippedError`` while the breaker is open."""
        if not self.available():
            raise StoreSkippedError("store failed moments ago; not asked again yet")

    def failed(self, error: StoreError | None = None) -> None:
        if error is None or isinstance(error, StoreTimeoutError):
            self._open_until = self._clock() + self.cooldown_seconds

    def succeeded(self) -> None:
        self._open_until = 0.0
