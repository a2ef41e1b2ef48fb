"""``GET /v1/users/{user_id}/recommendations``: the request path. One Redis round trip (a Lua
read), the funnel inline on the event loop, JSON written by hand, the served record and the
user-vector cache written behind the response; never a 5xx (degraded popular items instead)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from outerloop.api.context import MAX_K, REDIS_ERRORS as _REDIS_ERRORS, USER_ID_PATTERN, ApiContext, ApiError
from outerloop.api.openapi import ErrorOut
from outerloop.clock import now_ms
from outerloop.contracts.keys import embedding_key, served_key
from outerloop.inner_loop.serving.answer import ServedRecommendations, recommendation_doc
from outerloop.inner_loop.serving.funnel import Recommendation

log = logging.getLogger("outerloop.api.app")


def recommendations_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    rt, gate, funnel, opts, keys = ctx.runtime, ctx.gate, ctx.funnel, ctx.options, ctx.keys
    read_timeout_s = ctx.read_timeout_s

    @router.get(
        "/v1/users/{user_id}/recommendations",
        response_model=None,
        responses={200: {"model": ServedRecommendations}, 422: {"model": ErrorOut}},
        summary="Rows of recommendations for one user",
    )
    async def recommendations(
        request: Request,
        user_id: str = Path(min_length=1, max_length=128, pattern=USER_ID_PATTERN),
        k: int = Query(20, ge=1, le=MAX_K, description="items per row"),
        row: list[str] = Query([], description="only these row ids (repeatable)"),
        source: Literal["funnel", "precomputed"] = Query(
            "funnel", description="`precomputed`: a batch-precomputed list (the benchmark's baseline)"
        ),
    ) -> Response:
        started = time.perf_counter()
        _one_value_each(request, "k", "source")
        request_id = uuid.uuid4().hex
        rec: Recommendation | None = None
        t_redis = 0.0
        if rt.store is None or not gate.open():
            rec = funnel.degraded(k, "redis_unavailable")
        else:
            try:
                async with asyncio.timeout(read_timeout_s):  # no extra task, unlike wait_for
                    if source == "precomputed":
                        pre, seen = await rt.store.read_precomputed(user_id)
                    else:
                        state = await rt.store.read(user_id, opts.funnel.max_history)
                gate.ok()
            except _REDIS_ERRORS as exc:
                gate.failed(exc)
                rec = funnel.degraded(k, "redis_unavailable")
            t_redis = (time.perf_counter() - started) * 1000.0
        if rec is None:
            try:
                if source == "precomputed":
                    rec = funnel.precomputed(user_id, pre, seen, k)
                else:
                    rec = funnel.recommend(state, k, started=started)
            except Exception as exc:  # noqa: BLE001 - last line of defence: a bug answers popular, not 500
                log.error("funnel failed for a request; serving popular items", exc_info=exc)
                rec = funnel.degraded(k, "internal_error")
        rec.timings_ms["redis"] = round(t_redis, 3)
        body = recommendation_doc(funnel, rec, user_id, rows=row)  # the MCP tool `recommend` answers the same
        body["request_id"], body["encoder_cache"] = request_id, rec.encoder_cache
        rec.timings_ms["total"] = round((time.perf_counter() - started) * 1000.0, 3)
        body["timings_ms"] = rec.timings_ms
        if rt.writer is not None and not rec.degraded:
            rt.writer.set(served_key(user_id, request_id, keys), _served_record(body), opts.served_ttl_s)
            if rec.new_vector is not None:
                rt.writer.set(embedding_key(user_id, keys), rec.new_vector, opts.vector_cache_ttl_s)
        return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")
    return router


def _one_value_each(request: Request, *names: str) -> None:
    """A 422 when a single-valued query parameter is repeated (``?k=5&k=9``), instead of
    silently using one of the values."""
    errors = [{"loc": f"query.{n}", "msg": "given more than once; expected one value"}
              for n in names if len(request.query_params.getlist(n)) > 1]
    if errors:
        raise ApiError(422, "; ".join(f"{e['loc']}: {e['msg']}" for e in errors), errors)


def _served_record(body: dict[str, Any]) -> bytes:
    """What the evaluator needs to attribute feedback: rows, item ids, scores, versions, time."""
    return json.dumps({
        "request_id": body["request_id"], "user_id": body["user_id"], "ts": now_ms(),
        "model_version": body["model_version"], "history_version": body["history_version"],
        "ranker": body["ranker"], "fallbacks": body["fallbacks"],
        "rows": [{"row_id": r["row_id"], "produced_by": r["produced_by"], "run_id": r["run_id"],
                  "items": [[it["item_id"], it["score"]] for it in r["items"]]} for r in body["rows"]],
    }, separators=(",", ":")).encode()

