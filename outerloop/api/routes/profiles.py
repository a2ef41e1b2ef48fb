"""``PUT``/``GET /v1/users/{user_id}/profile``: the user's UTC offset or time zone (the
late-night and daypart rules read it)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Path, Request

from outerloop.api.context import REDIS_ERRORS as _REDIS_ERRORS, USER_ID_PATTERN, ApiContext, ApiError
from outerloop.api.openapi import ErrorOut
from outerloop.inner_loop.serving.profiles import ProfileIn, profile_out


def profile_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    rt, gate, keys = ctx.runtime, ctx.gate, ctx.keys
    write_timeout_s = ctx.write_timeout_s
    _require_key = ctx.require_key

    @router.put("/v1/users/{user_id}/profile", responses={422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             summary="Set the user's UTC offset or time zone (the late-night and daypart rules read it)")
    async def put_profile(
        request: Request, body: ProfileIn,
        user_id: str = Path(min_length=1, max_length=128, pattern=USER_ID_PATTERN),
    ) -> dict[str, Any]:
        _require_key(request)
        fields = body.fields()
        if rt.client is None:
            raise ApiError(503, "redis unavailable: the profile was not written")
        try:
            async with asyncio.timeout(write_timeout_s):
                await rt.client.hset(keys.profile(user_id), mapping=fields)
        except _REDIS_ERRORS as exc:
            gate.failed(exc)
            raise ApiError(503, "redis unavailable: the profile was not written") from None
        return profile_out(user_id, fields)

    @router.get("/v1/users/{user_id}/profile", responses={503: {"model": ErrorOut}}, summary="The user's profile")
    async def get_profile(user_id: str = Path(min_length=1, max_length=128, pattern=USER_ID_PATTERN)) -> dict[str, Any]:
        if rt.client is None:
            raise ApiError(503, "redis unavailable")
        try:
            async with asyncio.timeout(write_timeout_s):  # off the request path: the generous budget
                raw = await rt.client.hgetall(keys.profile(user_id))
        except _REDIS_ERRORS as exc:
            gate.failed(exc)
            raise ApiError(503, "redis unavailable") from None
        return profile_out(user_id, raw)
    return router
