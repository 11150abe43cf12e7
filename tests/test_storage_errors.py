"""gateway.storage.errors: what `guarded` turns into a StoreError, and what it leaves alone."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis
import uvloop

from gateway.storage.errors import StoreConnectionError, guarded
from tests.support.redis_proc import RedisProcess


def test_a_write_on_a_connection_the_server_closed_is_a_connection_error(
    redis_server: RedisProcess,
) -> None:
    """uvloop raises RuntimeError on a write to a transport the peer closed; redis-py 8.1 lets
    it through (it does not wrap it in ConnectionError). `guarded` makes it what it is."""

    async def scenario() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", redis_server.port)
        writer.write(b"CLIENT SETNAME doomed\r\n")
        assert await reader.readline() == b"+OK\r\n"
        killer = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await killer.client_kill_filter(_type="normal", skipme=True) >= 1
        finally:
            await killer.aclose()
        assert await reader.read() == b""  # the server closed it
        # Writing finds out once the server's reset arrives (the loop closes its transport);
        # redis-py gets an OSError there and knows. A transport that closed without redis-py
        # noticing (the write below) is what pooled connections to a node that died run into.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not writer.transport.is_closing() and loop.time() < deadline:
            with contextlib.suppress(ConnectionError):
                writer.write(b"PING\r\n")
                await writer.drain()
            await asyncio.sleep(0.01)  # polling for the server's reset, not synchronising
        assert writer.transport.is_closing()
        with pytest.raises(StoreConnectionError, match="connection closed by the server"):
            async with guarded("test"):
                writer.write(b"PING\r\n")
        writer.close()

    uvloop.run(scenario())


async def test_other_runtime_errors_are_not_store_errors() -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        async with guarded("test"):
            raise RuntimeError("a bug")
    with pytest.raises(TypeError):
        async with guarded("test"):
            raise TypeError("'NoneType' object is not callable")  # not from a transport
