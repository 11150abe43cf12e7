"""Automatic pipelining of Lua script calls.

Each quota decision is one EVALSHA, but with redis-py each round trip costs the gateway about
as much CPU as the rest of the request. Calls made in the same event-loop iteration (many, under
load) are therefore sent together in one pipeline: every request still waits for exactly one
round trip per decision, and the per-call client cost drops several-fold. Nothing is delayed:
the batch is flushed on the very next loop iteration.

Scripts are called by SHA. A server that does not know one (restarted, failed over, flushed)
answers NOSCRIPT; those calls are retried one by one through redis-py's ``Script``, which loads
the script first.

Failures reach each caller as redis-py raised them; the caller's ``guarded`` block turns them
into ``StoreError``. On a cluster the pipeline is redis-py's cluster pipeline, which sends each
call to the node of its keys (all keys of one call share a hash tag).

On a plain single server the calls skip redis-py and go over one ``PipelinedConnection``
(``pipelined.py``), which batches the same way at a fraction of the CPU; on a cluster, over one
per primary, with redirects and lost connections handed back to redis-py. A call whose
connection broke before its reply is sent once more on a new connection, as redis-py's retry
does: every script recognises a call it has already run (the reservation's record, the
settlement's tombstone, the cache lock's owner).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateway.storage.client import RedisClient
from gateway.storage.pipelined import ClusterConnections, PipelinedConnection

#: Error replies after which a cluster call is handed to redis-py's pipeline, as every call
#: went before: it loads the script, follows the redirect or reports the cluster down, and
#: refreshes its slot map.
_HAND_OVER = ("NOSCRIPT", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")

Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._queue: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._direct = PipelinedConnection.for_client(client)
        self._cluster = ClusterConnections.for_client(client)

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if self._cluster is not None and keys:
            connection = self._cluster.connection_for(keys[0])
            if connection is not None:
                try:
                    return await connection.execute(*command)
                except RedisConnectionError:
                    pass  # a primary gone or failed over: redis-py finds its successor
                except ResponseError as exc:
                    if not str(exc).startswith(_HAND_OVER):
                        raise
        elif self._direct is not None:
            try:
                return await self._resent_once(self._direct, command)
            except ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                return await script(keys=keys, args=args)  # loads the script, then runs it
        return await self._through_redis_py(script, keys, args)

    @staticmethod
    async def _resent_once(connection: PipelinedConnection, command: tuple[Any, ...]) -> Any:
        try:
            return await connection.execute(*command)
        except RedisConnectionError:  # broken before its reply: the scripts recognise a resend
            return await connection.execute(*command)

    async def _through_redis_py(
        self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((script, keys, args, future))
        return await future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, future = batch[0]
                replies: list[Any] = [await script(keys=keys, args=args)]
            else:
                pipe = self._client.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    # Not pipe.evalsha: redis-py's cluster pipeline refuses that method, while
                    # the command itself routes fine (all of a call's keys share a slot).
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # whatever went wrong, every caller must hear of it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (script, keys, args, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):
                try:
                    reply = await script(keys=keys, args=args)
                except Exception as exc:
                    reply = exc
            if future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def aclose(self) -> None:
        if self._direct is not None:
            await self._direct.aclose()
        if self._cluster is not None:
            await self._cluster.aclose()
