"""Manual refreshes: ask the daemons to run named agents for a user now.

A request fires one scheduler trigger per agent, named ``manual:<agent>``, into the user's
pending triggers (the same Lua as every other trigger, so it coalesces with them and survives a
daemon restart) and marks the user due. The cycle receives each one as a ``manual`` trigger
naming that agent, with the request's ``detail`` exactly as it was sent
(:meth:`outerloop.scheduler.triggers.PendingTrigger.as_trigger`). Two requests for one agent
before its cycle coalesce into one run with the later request's detail.

``request_refresh`` takes an asyncio client (the API); ``request_refresh_sync`` a blocking one
(scripts, the demo).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from outerloop.clock import now_ms
from outerloop.contracts.keys import SchedulerKeys, shard_of
from outerloop.contracts.triggers import TriggerRules, manual_trigger_name
from outerloop.errors import UserInputError
from outerloop.scheduler.dispatch import fire_args, fire_keys
from outerloop.scheduler.triggers import LUA_FIRE
from outerloop.storage.clients import AsyncRedisClient, RedisClient
from outerloop.storage.scripts import LuaScript, ScriptSet

Detail = Mapping[str, int | float | str]


def _check(agents: Sequence[str], detail: Detail) -> None:
    if not agents:
        raise UserInputError("a refresh names at least one agent")
    for name in agents:
        if not name or "|" in name or "\x1f" in name:
            raise UserInputError(f"agent name {name!r} is not valid")
    for k, v in detail.items():
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise UserInputError(f"detail {k!r}: a number or a string, got {type(v).__name__}")


_FIRE = ScriptSet(LuaScript("fire", LUA_FIRE))


def _queue(pipe: Any, keys: SchedulerKeys, user_id: str, agents: Sequence[str], detail: Detail, at_ms: int) -> None:
    for agent in dict.fromkeys(agents):
        args = fire_args(manual_trigger_name(agent), at_ms, dict(detail), TriggerRules())
        _FIRE.queue(pipe, "fire", fire_keys(keys, user_id), args)
    pipe.zadd(keys.due(shard_of(user_id, keys.shards)), {user_id: at_ms}, nx=True)


async def request_refresh(client: AsyncRedisClient, keys: SchedulerKeys, user_id: str, agents: Sequence[str],
                          detail: Detail | None = None, *, at_ms: int | None = None) -> None:
    """Queue a manual run of ``agents`` for ``user_id`` (asyncio client)."""
    detail = dict(detail or {})
    _check(agents, detail)
    pipe = client.pipeline(transaction=False)
    _queue(pipe, keys, user_id, agents, detail, now_ms() if at_ms is None else at_ms)
    await pipe.execute()


def request_refresh_sync(client: RedisClient, keys: SchedulerKeys, user_id: str, agents: Sequence[str],
                         detail: Detail | None = None, *, at_ms: int | None = None) -> None:
    """:func:`request_refresh` with a blocking client."""
    detail = dict(detail or {})
    _check(agents, detail)
    pipe = client.pipeline(transaction=False)
    _queue(pipe, keys, user_id, agents, detail, now_ms() if at_ms is None else at_ms)
    pipe.execute()

