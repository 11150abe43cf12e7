"""One lean, pipelined connection for the hot script calls on a single Redis server.

Every request makes two script calls (reserve and settle; lookup and store for the cache).
Through redis-py each costs 17-70 us of the gateway's CPU (pool checkout, the retry wrapper,
command packing in Python, per-call timeouts), about as much as the rest of the request; over
this connection the same call costs 2-9 us (measured in-process, docs/performance.md). It is
an ``asyncio.Protocol`` that writes the commands of one loop iteration in one ``write``,
matches replies to callers in order (Redis answers a connection's commands in the order it got
them) and parses them with hiredis.

It is used for a plain single server (``redis://`` or ``unix://`` without TLS) and for the
primaries of a Redis Cluster (``ClusterConnections``: by slot, from redis-py's slot map, with
every redirect and connection failure handed back to redis-py, which follows them). Sentinel
and TLS keep redis-py's client, which knows their failover and certificates. Errors are the
ones redis-py raises (``ConnectionError``, ``TimeoutError``, ``ResponseError``), so
``guarded`` maps them as it maps redis-py's.

No reply within ``timeout_seconds`` while calls are waiting: the server is frozen or gone, so
the connection is dropped and every waiting call fails (redis-py's socket timeout does the
same); the next call connects again.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    BlockingConnectionPool,
    ConnectionPool,
    UnixDomainSocketConnection,
)
from redis.asyncio.connection import Connection as RedisPyConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class _Protocol(asyncio.Protocol):
    __slots__ = ("_pending", "_reader", "_waiters", "lost", "replies", "transport", "watchdog")

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._pending: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        #: Replies read so far: the watchdog's measure of progress.
        self.replies = 0
        #: Armed while calls wait (``PipelinedConnection._check``): one per connection.
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader, waiters = self._reader, self._waiters
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            self.replies += 1
            if not waiters:  # nobody asked: the stream is out of step; start over
                self.abort(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future = waiters.popleft()
            if not future.done():  # done: its caller timed out or left meanwhile
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.lost is None:  # not dropped by the gateway itself (``abort``)
            self.lost = RedisConnectionError(
                f"Redis connection lost: {exc}" if exc else "Redis closed the connection"
            )
        self.transport = None
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(self.lost)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; it is written with the others of this loop iteration."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append(packed)
        self._waiters.append(future)
        return future

    def _flush(self) -> None:
        data, self._pending = b"".join(self._pending), []
        if self.transport is not None:
            self.transport.write(data)

    def abort(self, reason: BaseException) -> None:
        if self.transport is not None:
            self.lost = reason
            self.transport.abort()  # connection_lost fails the waiting calls


class PipelinedConnection:
    """Commands over one lazily (re)connected connection; see the module docstring."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str | None,
        setup: list[tuple[Any, ...]],
        timeout_seconds: float,
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._setup = setup
        self._timeout = timeout_seconds
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def for_client(cls, client: Any) -> PipelinedConnection | None:
        """A connection to ``client``'s server, or ``None`` when the client is not a plain
        single-server one (Cluster, Sentinel, TLS: redis-py keeps those)."""
        if not isinstance(client, aioredis.Redis):
            return None
        pool = client.connection_pool
        if type(pool) not in (ConnectionPool, BlockingConnectionPool):
            return None  # Sentinel's pool follows failovers
        return cls.for_options(pool.connection_class, pool.connection_kwargs)

    @classmethod
    def for_options(cls, kind: type, options: dict[str, Any]) -> PipelinedConnection | None:
        """A connection like redis-py's ``kind(**options)``, or ``None`` when this class does
        not speak what that one would (TLS, RESP3, decoded replies, credential providers)."""
        if kind not in (RedisPyConnection, UnixDomainSocketConnection):
            return None  # TLS and anything custom
        if (
            options.get("protocol") not in (None, 2, "2")
            or options.get("decode_responses")
            or options.get("credential_provider") is not None
        ):
            return None
        setup: list[tuple[Any, ...]] = []
        password, username = options.get("password"), options.get("username")
        if password is not None:
            setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        setup.append(("CLIENT", "SETNAME", options.get("client_name") or "gateway-scripts"))
        path = options.get("path") if kind is UnixDomainSocketConnection else None
        return cls(
            host=options.get("host", "localhost"),
            port=int(options.get("port", 6379)),
            path=path,
            setup=setup,
            timeout_seconds=float(options.get("socket_timeout") or 5.0),
        )

    async def execute(self, *args: Any) -> Any:
        """One command's reply; an error reply is raised as ``ResponseError``."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            protocol = await self._connect()
        future = protocol.send(hiredis.pack_command(args))
        if protocol.watchdog is None:
            self._arm(protocol)
        reply = await future
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    def _arm(self, protocol: _Protocol) -> None:
        protocol.watchdog = asyncio.get_running_loop().call_later(
            self._timeout, self._check, protocol, protocol.replies
        )

    def _check(self, protocol: _Protocol, seen: int) -> None:
        protocol.watchdog = None
        if not protocol.waiting or protocol.transport is None:
            return
        if protocol.replies == seen:  # calls waiting and not one reply for a whole timeout
            protocol.abort(TimeoutError(f"Redis did not answer within {self._timeout:g} s"))
            return
        self._arm(protocol)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            task = loop.create_task(self._open())
            task.add_done_callback(self._opened)
        return await asyncio.shield(self._connecting)

    def _opened(self, task: asyncio.Task[_Protocol]) -> None:
        connecting, self._connecting = self._connecting, None
        assert connecting is not None
        if not task.cancelled() and task.exception() is None:
            self._protocol = task.result()
            connecting.set_result(self._protocol)
            return
        connecting.set_exception(
            RedisConnectionError("connecting to Redis was cancelled")
            if task.cancelled()
            else task.exception()  # type: ignore[arg-type]
        )
        connecting.exception()  # marked as seen: every caller may have left meanwhile

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                if self._path is not None:
                    _, protocol = await loop.create_unix_connection(_Protocol, self._path)
                else:
                    _, protocol = await loop.create_connection(_Protocol, self._host, self._port)
                replies = [protocol.send(hiredis.pack_command(c)) for c in self._setup]
                for command, reply in zip(self._setup, await asyncio.gather(*replies), strict=True):
                    if isinstance(reply, hiredis.ReplyError):
                        protocol.abort(RedisConnectionError("setup failed"))
                        raise ResponseError(f"{command[0]}: {reply}")
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None
        except TimeoutError:
            raise TimeoutError(f"connecting to Redis took over {self._timeout:g} s") from None
        return protocol

    async def aclose(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


class ClusterConnections:
    """One ``PipelinedConnection`` per primary of a Redis Cluster, chosen by the slot of a
    call's first key (all keys of a call share a hash tag) from redis-py's slot map. Anything
    the map does not know yet, and every redirect, stays with redis-py (``ScriptBatcher``)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._by_node: dict[str, PipelinedConnection | None] = {}

    @classmethod
    def for_client(cls, client: Any) -> ClusterConnections | None:
        return cls(client) if isinstance(client, RedisCluster) else None

    def connection_for(self, key: str | bytes) -> PipelinedConnection | None:
        client = self._client
        nodes = client.nodes_manager.slots_cache.get(client.keyslot(key))
        if not nodes:
            return None
        node = nodes[0]
        if node.name not in self._by_node:
            options = {**node.connection_kwargs, "host": node.host, "port": node.port}
            self._by_node[node.name] = PipelinedConnection.for_options(
                node.connection_class, options
            )
        return self._by_node[node.name]

    async def aclose(self) -> None:
        connections, self._by_node = self._by_node, {}
        for connection in connections.values():
            if connection is not None:
                await connection.aclose()
