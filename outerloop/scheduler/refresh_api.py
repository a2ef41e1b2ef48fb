"""The API's route for manual refreshes: ``POST /v1/users/{user_id}/refresh``.

Mounted by :func:`outerloop.api.app.create_app`. The body is ``{"agents": [...],
"detail": {...}}``; the named agents get their ``manual`` trigger with ``detail`` as sent (see
:mod:`outerloop.scheduler.refresh`). While daemons are live, names that none of them runs are
refused (422, naming them; each daemon publishes its agents in its heartbeat); with no daemon
live the request is queued all the same and runs when one starts. It needs ``X-API-Key``
whenever the API has a key.
"""

# no ``from __future__ import annotations``: FastAPI reads these annotations at run time
import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from outerloop.contracts.keys import SchedulerKeys
from outerloop.errors import UserInputError
from outerloop.scheduler.health import live_daemons
from outerloop.scheduler.refresh import request_refresh

MAX_AGENTS = 32
AGENT_NAME_PATTERN = r"^[^|\x1f]+$"  # what refresh._check accepts, in the OpenAPI schema too


class RefreshIn(BaseModel):
    """Which agents to run for the user now, and what to tell them."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types as the schema says (no false for 0)

    agents: list[Annotated[str, Field(pattern=AGENT_NAME_PATTERN)]] = Field(
        min_length=1, max_length=MAX_AGENTS, description="the agents to run, by name")
    detail: dict[str, int | float | str] = Field(
        default_factory=dict, max_length=32, description="handed to the agents as their manual trigger's detail")


class RefreshQueued(BaseModel):
    user_id: str
    agents: list[str]
    live_daemons: int = Field(description="daemons alive now (0: the request waits for one)")


def refresh_router(*, client: Callable[[], Any], keys: type[Any], api_key: str | None,
                   user_id_pattern: str, stream_shards: int = 1) -> APIRouter:
    """The route; ``client()`` returns the API's asyncio Redis client (None while it is down).
    ``stream_shards``: the daemons' (the user's due entry goes in the user's shard)."""
    secret = api_key.encode() if api_key else None
    sched_keys = SchedulerKeys(base=keys, shards=stream_shards)
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
