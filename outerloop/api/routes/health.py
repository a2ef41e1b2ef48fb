"""``GET /healthz`` (the process is up), ``GET /readyz`` (artifacts loaded and Redis
reachable), ``GET /v1/stats`` (this process's counters)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from outerloop.api.context import REDIS_ERRORS as _REDIS_ERRORS, ApiContext
from outerloop.api.openapi import ErrorOut


def health_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    rt, gate, funnel, ranker, n_items = ctx.runtime, ctx.gate, ctx.funnel, ctx.ranker, ctx.n_items

    @router.get("/healthz", summary="The process is up (and which one: the worker's pid)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}

    @router.get("/readyz", summary="Artifacts loaded and Redis reachable", responses={503: {"model": ErrorOut}})
    async def readyz() -> JSONResponse:
        redis_ok, why = False, gate.last_error or "not connected"
        if rt.store is not None:
            try:
                async with asyncio.timeout(1.0):
                    redis_ok = await rt.store.ping()
                gate.ok()
            except _REDIS_ERRORS as exc:
                gate.failed(exc)
                why = gate.last_error
        body = {"ready": redis_ok, "artifacts": True, "model_version": funnel.model_version,
                "ranker": ranker is not None, "redis": "ok" if redis_ok else f"unreachable: {why}",
                "n_items": n_items, "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}
        return JSONResponse(body, status_code=200 if redis_ok else 503)

    @router.get("/v1/stats", summary="Counters of this process (cache hits, fallbacks, Redis failures)")
    async def stats() -> dict[str, Any]:
        w = rt.writer
        return {**funnel.stats_snapshot(), "redis_failures": gate.failures,
                "write_behind_dropped": w.dropped if w else 0}
    return router
