"""Lua scripts by SHA, loaded on start and again whenever Redis forgot them (a restart).

Calls go through ``EVALSHA`` so a script's text crosses the wire once per connection set-up,
not once per event; a ``NOSCRIPT`` reply means the server restarted, and the caller reloads
(:meth:`ScriptSet.load`) and repeats the idempotent work.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode("utf-8")).hexdigest())


class ScriptSet:
    """The scripts one component uses."""

    def __init__(self, *scripts: LuaScript) -> None:
        self._scripts = {s.name: s for s in scripts}

    def sha(self, name: str) -> str:
        return self._scripts[name].sha

    async def load(self, client: Any) -> None:
        """SCRIPT LOAD every script (on a cluster, redis-py sends it to every primary)."""
        for script in self._scripts.values():
            await client.script_load(script.source)

    async def call(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, reloading once if the server lost its script cache."""
        try:
            return await client.evalsha(self.sha(name), len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha(name), len(keys), *keys, *args)


def is_noscript(reply: object) -> bool:
    return isinstance(reply, NoScriptError)


def is_cluster(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


async def evalsha_many(client: Any, sha: str, calls: list[tuple[list[str], list[Any]]],
                       *, cluster_concurrency: int = 64) -> list[Any]:
    """Run one script many times: one pipelined round trip on a standalone server; on a
    cluster concurrent calls, bounded, with the calls on the same first key (one user) kept in
    order. Replies come back in call order, errors as exception objects; connection errors are
    raised.

    Why not a cluster pipeline: redis-py (8.1 here) blocks the ``evalsha`` *method* of its
    cluster pipeline by name (``PIPELINE_BLOCKED_COMMANDS``), but not the command: a
    ``pipe.execute_command("EVALSHA", sha, n, *keys, *args)`` is routed by its keys' slot like
    any keyed command and runs, one round trip per master (checked on a local 3-master
    cluster). It is not used yet: on a connection error redis-py re-sends the pipeline's
    unanswered commands itself, so a script that ran but whose reply was lost runs twice (the
    claim script would then see its own lock as another daemon's), where these concurrent
    calls raise and let the caller decide. Whether its fewer round trips are worth that is not
    measured."""
    if not calls:
        return []
    if not is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))
    gate = asyncio.Semaphore(cluster_concurrency)
    replies: list[Any] = [None] * len(calls)
    groups: dict[str, list[int]] = {}
    for i, (keys, _) in enumerate(calls):
        groups.setdefault(keys[0], []).append(i)

    async def in_order(indexes: list[int]) -> None:
        async with gate:
            for i in indexes:
                keys, args = calls[i]
                try:
                    replies[i] = await client.evalsha(sha, len(keys), *keys, *args)
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    raise
                except Exception as exc:  # a script error belongs to its call, like a pipeline's
                    replies[i] = exc

    await asyncio.gather(*(in_order(ix) for ix in groups.values()))
    return replies
