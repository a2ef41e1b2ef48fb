"""The one way outerloop runs Lua: scripts are ``.lua`` files in ``storage/lua/`` (package data),
called by SHA, with a lost script cache (``NOSCRIPT``: the server restarted or flushed its
scripts) handled here and nowhere else.

- :meth:`ScriptSet.call`: one call, ``EVALSHA``; on ``NOSCRIPT`` the set is loaded again and the
  call repeated (every script here is idempotent or decides on the state it reads).
- :meth:`ScriptSet.call_many`: many calls in one round trip (a pipeline on one server; bounded
  concurrent calls on a cluster, where redis-py refuses scripts in pipelines), reloaded and
  repeated the same way.
- :meth:`ScriptSet.queue`: a call inside someone else's pipeline or ``MULTI``. It is queued as
  ``EVAL`` with the source, because a ``NOSCRIPT`` there would fail one command of a transaction
  whose other commands still apply; its text crosses the wire each time, the price of atomicity.
- :meth:`ScriptSet.queue_sha`: a call by SHA inside a pipeline that is not a transaction; the
  caller checks the replies with :func:`is_noscript` and reloads.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from outerloop.storage.clients import AsyncRedisClient, RedisClient, is_cluster


@cache
def lua_source(name: str) -> str:
    """The text of ``storage/lua/<name>.lua`` (read once per process)."""
    return resources.files("outerloop.storage").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode("utf-8")).hexdigest())

    @classmethod
    def of(cls, name: str, *parts: str, prefix: str = "") -> "LuaScript":
        """A script made of ``prefix`` (e.g. baked-in settings) and the files ``parts`` (shared
        helpers first, the script's body last), named ``name``."""
        return cls(name, prefix + "".join(lua_source(p) for p in parts))


def is_noscript(reply: object) -> bool:
    """A pipeline reply that says the server has lost the script (reload and repeat)."""
    return isinstance(reply, NoScriptError)


class ScriptSet:
    """The scripts one component uses, loaded together."""

    def __init__(self, *scripts: LuaScript) -> None:
        self._scripts = {s.name: s for s in scripts}

    def sha(self, name: str) -> str:
        return self._scripts[name].sha

    def source(self, name: str) -> str:
        return self._scripts[name].source

    async def load(self, client: AsyncRedisClient) -> None:
        """SCRIPT LOAD every script (on a cluster, redis-py sends it to every primary)."""
        for script in self._scripts.values():
            await client.script_load(script.source)

    def load_sync(self, client: RedisClient) -> None:
        """:meth:`load` on a blocking client."""
        for script in self._scripts.values():
            client.script_load(script.source)

    async def call(self, client: AsyncRedisClient, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, reloading once if the server lost its script cache."""
        try:
            return await client.evalsha(self.sha(name), len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha(name), len(keys), *keys, *args)

    def call_sync(self, client: RedisClient, name: str, keys: list[str], args: list[Any]) -> Any:
        """:meth:`call` on a blocking client."""
        try:
            return client.evalsha(self.sha(name), len(keys), *keys, *args)
        except NoScriptError:
            self.load_sync(client)
            return client.evalsha(self.sha(name), len(keys), *keys, *args)

    async def call_many(self, client: AsyncRedisClient, name: str,
                        calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One script many times in one round trip; replies in call order, script errors as
        exception objects (connection errors are raised). Reloaded and repeated once on NOSCRIPT."""
        replies = await _evalsha_many(client, self.sha(name), calls)
        if any(is_noscript(r) for r in replies):
            await self.load(client)
            replies = await _evalsha_many(client, self.sha(name), calls)
        return replies

    def queue(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """Queue the call on ``pipe`` (a pipeline or transaction) as EVAL with the source."""
        pipe.eval(self.source(name), len(keys), *keys, *args)

    def queue_sha(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """Queue the call on a non-transactional ``pipe`` by SHA (check replies with
        :func:`is_noscript`)."""
        pipe.evalsha(self.sha(name), len(keys), *keys, *args)


async def _evalsha_many(client: AsyncRedisClient, sha: str, calls: list[tuple[list[str], list[Any]]],
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
