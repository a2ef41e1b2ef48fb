"""Manual refreshes: ask the daemons to run named agents for a user now.

A request fires one scheduler trigger per agent, named ``manual:<agent>``, into the user's
pending triggers (the same Lua as every other trigger, so it coalesces with them and survives a
daemon restart) and marks the user due. The cycle hands each one to the planner as the agents'
own ``manual`` trigger, naming that agent, with the request's ``detail`` exactly as it was
sent (see :func:`outerloop.scheduler.runners.to_agent_triggers`). Two requests for one agent
before its cycle coalesce into one run with the later request's detail.

``request_refresh`` takes an asyncio client (the API); ``request_refresh_sync`` a blocking one
(scripts, the demo).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from outerloop.errors import UserInputError
from outerloop.scheduler.dispatch import fire_args, fire_keys, now_ms
from outerloop.scheduler.keys import SchedulerKeys, shard_of
from outerloop.scheduler.triggers import LUA_FIRE, TriggerRules

MANUAL_PREFIX = "manual:"
Detail = Mapping[str, int | float | str]


def manual_trigger_name(agent: str) -> str:
    return f"{MANUAL_PREFIX}{agent}"


def manual_agent(trigger_name: str) -> str | None:
    """The agent a scheduler trigger name asks for, or None when it is not a manual request."""
    return trigger_name[len(MANUAL_PREFIX):] or None if trigger_name.startswith(MANUAL_PREFIX) else None


def _check(agents: Sequence[str], detail: Detail) -> None:
    if not agents:
        raise UserInputError("a refresh names at least one agent")
    for name in agents:
        if not name or "|" in name or "\x1f" in name:
            raise UserInputError(f"agent name {name!r} is not valid")
    for k, v in detail.items():
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise UserInputError(f"detail {k!r}: a number or a string, got {type(v).__name__}")


def _queue(pipe: Any, keys: SchedulerKeys, user_id: str, agents: Sequence[str], detail: Detail, at_ms: int) -> None:
    for agent in dict.fromkeys(agents):
        args = fire_args(manual_trigger_name(agent), at_ms, dict(detail), TriggerRules())
        pipe.eval(LUA_FIRE, 4, *fire_keys(keys, user_id), *args)
    pipe.zadd(keys.due(shard_of(user_id, keys.shards)), {user_id: at_ms}, nx=True)


async def request_refresh(client: Any, keys: SchedulerKeys, user_id: str, agents: Sequence[str],
                          detail: Detail | None = None, *, at_ms: int | None = None) -> None:
    """Queue a manual run of ``agents`` for ``user_id`` (asyncio client)."""
    detail = dict(detail or {})
    _check(agents, detail)
    pipe = client.pipeline(transaction=False)
    _queue(pipe, keys, user_id, agents, detail, now_ms() if at_ms is None else at_ms)
    await pipe.execute()


def request_refresh_sync(client: Any, keys: SchedulerKeys, user_id: str, agents: Sequence[str],
                         detail: Detail | None = None, *, at_ms: int | None = None) -> None:
    """:func:`request_refresh` with a blocking client."""
    detail = dict(detail or {})
    _check(agents, detail)
    pipe = client.pipeline(transaction=False)
    _queue(pipe, keys, user_id, agents, detail, now_ms() if at_ms is None else at_ms)
    pipe.execute()


# -- the API's route: POST /v1/users/{user_id}/refresh ---------------------------------------------

MAX_AGENTS = 32


def refresh_router(*, client: Any, keys: type[Any], api_key: str | None, user_id_pattern: str) -> Any:
    """``POST /v1/users/{user_id}/refresh``: queue a manual run of named agents for the daemons.

    ``client`` is a callable returning the API's asyncio Redis client (None while Redis is
    down). The body is ``{"agents": [...], "detail": {...}}``; the named agents get their
    ``manual`` trigger with ``detail`` as sent. While daemons are live, names that none of them
    runs are refused (422, naming them); with no daemon live the request is queued all the same
    and runs when one starts. Always needs ``X-API-Key`` when the API has a key.
    """
    import hmac

    from fastapi import APIRouter, HTTPException, Request
    from fastapi import Path as PathParam
    from pydantic import BaseModel, ConfigDict, Field
    from redis.exceptions import RedisError

    from outerloop.scheduler.health import live_daemons

    secret = api_key.encode() if api_key else None
    sched_keys = SchedulerKeys(base=keys)

    class RefreshIn(BaseModel):
        model_config = ConfigDict(extra="forbid")

        agents: list[str] = Field(min_length=1, max_length=MAX_AGENTS,
                                  description="the agents to run for the user, by name")
        detail: dict[str, int | float | str] = Field(default_factory=dict, max_length=32,
                                                     description="handed to the agents as their manual trigger's detail")

    class RefreshQueued(BaseModel):
        user_id: str
        agents: list[str]
        live_daemons: int = Field(description="daemons alive now (0: the request waits for one)")

    router = APIRouter()

    @router.post("/v1/users/{user_id}/refresh", status_code=202, response_model=RefreshQueued,
                 summary="Run named agents for the user now (queued for the daemons)")
    async def refresh(body: RefreshIn, request: Request,
                      user_id: str = PathParam(min_length=1, max_length=128, pattern=user_id_pattern)) -> RefreshQueued:
        if secret is not None and not hmac.compare_digest(request.headers.get("x-api-key", "").encode(), secret):
            raise HTTPException(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
        redis = client()
        if redis is None:
            raise HTTPException(503, "Redis unavailable; retry later", headers={"Retry-After": "1"})
        agents = list(dict.fromkeys(body.agents))
        try:
            live = await live_daemons(redis, sched_keys)
            runs = {a for d in live for a in d.get("agents") or ()}
            unknown = [a for a in agents if a not in runs]
            if live and unknown:
                raise HTTPException(422, f"no live daemon runs agent(s) {unknown}; they run {sorted(runs)}")
            await request_refresh(redis, sched_keys, user_id, agents, body.detail)
        except UserInputError as exc:
            raise HTTPException(422, str(exc)) from None
        except (RedisError, OSError, TimeoutError):
            raise HTTPException(503, "Redis unavailable; retry later", headers={"Retry-After": "1"}) from None
        return RefreshQueued(user_id=user_id, agents=agents, live_daemons=len(live))

    return router
