"""Noticing a client that left while the gateway waits on the upstream.

aiohttp finds out at once (``connection_lost``), but a handler only learns of it when it next
writes, and a non-stream handler writes nothing until the upstream has answered: the upstream
call would run to its end (and be charged) for nobody. aiohttp's ``handler_cancellation``
would cancel the whole handler at any await instead, including mid-way through a quota store
call whose result must not be lost. So the connection handler signals the loss
(``WatchedRequestHandler``), and only the blocks that wait on the upstream are cancelled by it
(``cancel_on_disconnect``), which then raise ``ClientGone``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["ClientGone", "WatchedRequestHandler", "cancel_on_disconnect", "connection_lost"]


class ClientGone(Exception):
    """The client disconnected while a ``cancel_on_disconnect`` block was waiting."""


class WatchedRequestHandler(RequestHandler):
    """A connection handler that tells waiters when its connection is lost."""

    __slots__ = ("_lost",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost: asyncio.Future[None] | None = None

    def lost(self) -> asyncio.Future[None]:
        """Resolved once the connection is lost (made on first use: most requests never ask)."""
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
            if self.transport is None:  # already gone
                self._lost.set_result(None)
        return self._lost

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)


class cancel_on_disconnect:  # lower case: used like ``asyncio.timeout``
    """``with cancel_on_disconnect(request):`` cancels the block's awaits when the client goes
    and raises ``ClientGone`` in place of the ``CancelledError``.

    One request per connection is in flight at a time (HTTP/1.1), so the connection's loss is
    this request's client leaving. A cancellation from elsewhere (shutdown) still propagates.
    On a connection handler that is not a ``WatchedRequestHandler`` the block just runs.
    """

    __slots__ = ("_entered_with", "_lost", "_state", "_task")

    def __init__(self, request: web.BaseRequest) -> None:
        protocol = request.protocol
        self._lost = protocol.lost() if isinstance(protocol, WatchedRequestHandler) else None
        self._task: asyncio.Task[object] | None = None
        self._entered_with = 0
        self._state = "new"  # new -> entered -> (cancelled) -> exited

    def __enter__(self) -> cancel_on_disconnect:
        if self._lost is None:
            return self
        if self._lost.done():
            raise ClientGone
        task = asyncio.current_task()
        assert task is not None, "cancel_on_disconnect outside a task"
        self._task = task
        self._entered_with = task.cancelling()
        self._state = "entered"
        self._lost.add_done_callback(self._on_lost)
        return self

    def _on_lost(self, _: asyncio.Future[None]) -> None:
        if self._state == "entered" and self._task is not None:
            self._state = "cancelled"
            self._task.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lost is None:
            return
        self._lost.remove_done_callback(self._on_lost)
        cancelled = self._state == "cancelled"
        self._state = "exited"
        if not cancelled or self._task is None:
            return
        # Take back our own cancellation; one requested by someone else stays pending.
        if self._task.uncancel() <= self._entered_with and exc_type is asyncio.CancelledError:
            raise ClientGone from exc


def connection_lost(request: web.BaseRequest) -> asyncio.Future[None] | None:
    """Resolved when the request's client disconnects (None on an unwatched connection)."""
    protocol = request.protocol
    return protocol.lost() if isinstance(protocol, WatchedRequestHandler) else None
