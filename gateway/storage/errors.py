"""The one error tree for Redis, and the one place redis-py's exceptions become it.

Quotas and the cache talk to Redis through ``guarded``; nothing else in the gateway catches a
redis-py exception. Callers pick their fallback by class:

- ``StoreTimeoutError``: no answer in time. The command may still run (a frozen server that
  wakes up), so a quota reservation is undone later; the breaker opens.
- ``StoreConnectionError``: refused, reset or lost connection. Fast to notice, so the breaker
  stays closed and a restarted Redis is used again at once.
- ``StoreReplyError``: Redis answered with an error (OOM, READONLY, CLUSTERDOWN, ...) or with
  something the gateway did not expect.
- ``StoreSkippedError``: not asked at all, because the breaker is open.

(``gateway.errors.StoreUnavailableError`` is a different thing: the 503 a client sees.)
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "Guarded",
    "StoreConnectionError",
    "StoreError",
    "StoreReplyError",
    "StoreSkippedError",
    "StoreTimeoutError",
    "guarded",
    "translate",
]


class StoreError(Exception):
    """Redis could not be used; the original exception, if any, is the ``__cause__``."""


class StoreTimeoutError(StoreError):
    """No answer within the bound; the command may still have run or may still run."""


class StoreConnectionError(StoreError):
    """Redis could not be reached, or the connection broke."""


class StoreReplyError(StoreError):
    """Redis answered with an error, or with a reply of the wrong shape."""


class StoreSkippedError(StoreError):
    """Redis was not asked: it failed moments ago (the breaker is open)."""


def translate(exc: BaseException, what: str) -> StoreError:
    """The ``StoreError`` for a failure of a call to Redis (``what`` names the caller)."""
    text = f"{what}: {type(exc).__name__}: {exc}"
    # redis-py's TimeoutError is not a ConnectionError, and asyncio's TimeoutError is an
    # OSError subclass of neither; check timeouts first.
    if isinstance(exc, (RedisTimeoutError, TimeoutError)):
        return StoreTimeoutError(text)
    if isinstance(exc, (RedisConnectionError, OSError)):
        return StoreConnectionError(text)
    return StoreReplyError(text)


#: Where a write on a closed connection fails with something other than ``OSError``.
_WRITE_FRAMES = {
    ("selector_events.py", "writelines"),  # CPython 3.12/3.13: the transport's own internals
    ("selector_events.py", "write"),
    ("connection.py", "_send_packed_command"),  # redis-py: its writer was set to None
    ("connection.py", "send_packed_command"),
}


def closed_transport(exc: BaseException) -> bool:
    """A write on a connection that was closed meanwhile (the server went away), raised by the
    event loop or redis-py as something other than ``ConnectionError``: redis-py 8.1 lets
    these through (redis-py issues 4287 and 3546). uvloop says ``RuntimeError: ... the
    handler is closed``; CPython's transports and redis-py's own writer path raise
    ``TypeError`` or ``AttributeError`` on a ``None``. redis-py has dropped the connection by
    then (``send_packed_command`` disconnects on any exception), so the next call reconnects.
    """
    if isinstance(exc, RuntimeError):
        return "handler is closed" in str(exc)
    if not isinstance(exc, (TypeError, AttributeError)) or "NoneType" not in str(exc):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    code = tb.tb_frame.f_code
    return (code.co_filename.rpartition("/")[2], code.co_name) in _WRITE_FRAMES


def guarded(what: str, bound_seconds: float | None = None) -> Guarded:
    """Run Redis calls within ``bound_seconds`` (whatever the client's retry policy does) and
    raise every failure as a ``StoreError`` whose ``__cause__`` is the original."""
    return Guarded(what, bound_seconds)


class Guarded:
    """``guarded``'s context manager: a class rather than ``@asynccontextmanager`` because it
    wraps every Redis call of every request (a generator per use cost about 3 % of the CPU)."""

    __slots__ = ("_bound", "_timeout", "_what")

    def __init__(self, what: str, bound_seconds: float | None) -> None:
        self._what = what
        self._bound = bound_seconds
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> None:
        if self._bound is not None:
            self._timeout = asyncio.timeout(self._bound)
            await self._timeout.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._timeout is not None:
            try:  # turns the cancellation it caused into TimeoutError
                await self._timeout.__aexit__(exc_type, exc, tb)
            except TimeoutError as expired:
                raise translate(expired, self._what) from expired
        if exc is None:
            return False
        if isinstance(exc, (RedisError, RedisClusterException, OSError, TimeoutError)):
            raise translate(exc, self._what) from exc
        if isinstance(exc, (RuntimeError, TypeError, AttributeError)) and closed_transport(exc):
            raise StoreConnectionError(
                f"{self._what}: connection closed by the server: {exc}"
            ) from exc
        return False
