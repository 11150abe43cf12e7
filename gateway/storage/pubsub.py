"""Listening to one Redis channel for the life of the process (cache purges, quota wake-ups).

The subscription runs in a task of its own, so cancelling the listener returns at once:
redis-py can sit in its reconnect loop for a long time after a cancel (seen with every
Sentinel gone), and shutdown must not wait for it. Connection trouble is retried after a pause;
messages meanwhile are lost, which both users tolerate (the cache's first level expires, the
quota queue polls).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gateway.storage.client import RedisClient
from gateway.storage.errors import StoreError, guarded

RETRY_SECONDS = 1.0
CANCEL_WAIT_SECONDS = 2.0


async def listen(
    client: RedisClient, channel: str, on_message: Callable[[bytes], None], *, what: str
) -> None:
    """Call ``on_message(data)`` for every message on ``channel``; runs until cancelled."""
    while True:
        listening = asyncio.get_running_loop().create_task(
            _listen_once(client, channel, on_message, what)
        )
        listening.add_done_callback(_retrieve)
        try:
            await asyncio.wait({listening})
        except asyncio.CancelledError:
            listening.cancel()
            # Let it unsubscribe while the loop still runs, but never wait long for redis-py.
            await asyncio.wait({listening}, timeout=CANCEL_WAIT_SECONDS)
            raise
        if listening.exception() is not None:
            await asyncio.sleep(RETRY_SECONDS)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failed subscription is retried, not reported


async def _listen_once(
    client: RedisClient, channel: str, on_message: Callable[[bytes], None], what: str
) -> None:
    pubsub = client.pubsub()
    try:
        async with guarded(what):
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    data = message["data"]
                    on_message(data if isinstance(data, bytes) else str(data).encode())
    finally:
        # Bounded: this also runs when the listener is cancelled at shutdown, and redis-py's
        # close can wait on a connection that is being re-established.
        with contextlib.suppress(StoreError):
            async with guarded(what, bound_seconds=CANCEL_WAIT_SECONDS):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
