"""The inner loop's HTTP API (FastAPI). Build it with :func:`create_app`; nothing is read at
import time.

Endpoints: ``GET /v1/users/{user_id}/recommendations``, ``POST /v1/events``,
``PUT``/``GET /v1/users/{user_id}/profile``, ``GET /v1/items/{id}``,
``GET /healthz``, ``GET /readyz``, ``GET /v1/stats`` and the OpenAPI docs (``/docs``).

Latency rules this file follows: one Redis round trip per recommendation (a Lua read), the
funnel's CPU work inline on the event loop (no thread hop: it is a few milliseconds of numpy and
torch), JSON written by hand into a ``Response`` (no response-model validation), writes that the
response does not depend on (served record, user-vector cache) batched behind the response,
nothing logged per request.

Failure rules: a recommendation request never gets a 5xx. Redis unreachable or slower than its
share of the request budget -> popular items with ``degraded: true`` (and Redis is not tried
again for ``redis_retry_s``, so a dead Redis costs nothing per request). Bad input -> a 4xx
whose ``detail`` names the field (``events[3].ts: ...``); a batch with one bad event applies
none. Unexpected errors are logged with their traceback and answered without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from outerloop.api.context import (
    REDIS_ERRORS as _REDIS_ERRORS,
    USER_ID_PATTERN,
    ApiContext,
    ApiError,
    RedisGate,
    ServeOptions,
    error_loc as _loc,
    error_response as _error_response,
)
from outerloop.api.openapi import finish as finish_openapi
from outerloop.api.routes.events import events_router
from outerloop.api.routes.health import health_router
from outerloop.api.routes.items import items_router
from outerloop.api.routes.profiles import profile_router
from outerloop.api.routes.recommendations import recommendations_router
from outerloop.contracts.keys import Keys
from outerloop.errors import UserInputError
from outerloop.inner_loop.model.ranker import ArtifactsLike, Ranker
from outerloop.inner_loop.serving.funnel import Funnel
from outerloop.inner_loop.serving.user_state import UserStore, WriteBehind
from outerloop.storage.clients import RedisTarget
from outerloop.topology import Topology

log = logging.getLogger(__name__)


def create_app(
    settings: Any,
    artifacts: ArtifactsLike,
    *,
    ranker: Ranker | None = None,
    options: ServeOptions | None = None,
    redis_target: RedisTarget | None = None,
    keys: type[Keys] | None = None,
    topology: Topology | None = None,
    conversation: Any = None,
    inline_model: Any = None,
    ranker_without_rows: Ranker | None = None,
) -> FastAPI:
    """The API around one set of loaded artifacts.

    ``settings`` is an :class:`outerloop.config.Settings` (Redis location, API key, history cap);
    ``options`` replaces the serving knobs wholesale (without it, the key and the history cap
    come from ``settings`` and everything else keeps its default).
    ``topology`` says where Redis is, whether it is a cluster, the stream shards and the key
    namespace (default: from ``settings``, i.e. the environment, as the daemon reads it);
    ``redis_target`` and ``keys`` override its server and namespace (tests). ``inline_model``: run the
    outer loop's heavy model on every request (to measure its cost there; see ``Funnel``).
    ``ranker_without_rows``: the ranker for users the outer loop has not reached yet.
    """
    opts = options or ServeOptions(api_key=getattr(settings, "api_key", None),
                                   history_cap=getattr(settings, "history_cap", 200))
    if opts.require_api_key and not opts.api_key:
        raise UserInputError("an API key is required when serving off loopback (OUTERLOOP_API_KEY)")
    topology = topology or Topology.from_settings(settings)
    target = redis_target or topology.target()
    keys = keys or topology.keys()
    funnel = Funnel(artifacts, ranker, opts.funnel, inline_model=inline_model, ranker_without_rows=ranker_without_rows)
    n_items = funnel.n_items
    gate = RedisGate(opts.redis_retry_s)
    api_key = opts.api_key.encode() if opts.api_key else None
    read_timeout_s = opts.redis_read_timeout_ms / 1000.0
    write_timeout_s = opts.redis_write_timeout_ms / 1000.0
    durable_wait_ms = topology.durable_wait_ms if topology.durable_writes else None
    if durable_wait_ms is not None:  # room for both steps' WAIT (a cluster write has two)
        write_timeout_s = max(write_timeout_s, (2 * durable_wait_ms + 1000) / 1000.0)
    ctx = ApiContext(options=opts, funnel=funnel, artifacts=artifacts, ranker=ranker, keys=keys, gate=gate,
                     api_key=api_key, read_timeout_s=read_timeout_s, write_timeout_s=write_timeout_s)
    rt = ctx.runtime

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            # starting an embedded redis-server blocks for ~100 ms: keep it off the event loop
            rt.client = await asyncio.to_thread(
                target.async_client, socket_timeout=2.0, socket_connect_timeout=1.0, health_check_interval=0
            )
            rt.store = UserStore(rt.client, history_cap=opts.history_cap, stream_maxlen=opts.stream_maxlen,
                                 keys=keys, stream_shards=topology.stream_shards, durable_wait_ms=durable_wait_ms)
            rt.writer = WriteBehind(rt.client)
        except (RedisError, OSError) as exc:  # the API still serves (degraded) without Redis
            gate.failed(exc)
        if rt.store is not None and rt.store.cluster:
            try:  # best effort: a cluster not up yet is met by the first requests instead
                async with asyncio.timeout(2.0):
                    await rt.store.warm()
            except _REDIS_ERRORS as exc:
                gate.failed(exc)
        yield
        if rt.writer is not None:
            await rt.writer.aclose()
        if rt.client is not None:
            await rt.client.aclose()

    app = FastAPI(
        title="outerloop inner loop",
        version="1",
        description="Real-time recommendations: transformer + FAISS + multi-task ranker, merged with "
        "agent-compiled rows. Write endpoints take an `X-API-Key` header when a key is configured.",
        lifespan=lifespan,
    )
    app.state.funnel = funnel
    app.state.gate = gate
    app.state.runtime = rt

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": _loc(e.get("loc", ())), "msg": str(e.get("msg", "invalid"))} for e in exc.errors()[:20]]
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "invalid request"
        return _error_response(422, detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # every method of the path, not only those of the first route matched
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(app, request))}
        return _error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(500, "internal error")

    for router in (recommendations_router, events_router, profile_router, items_router, health_router):
        app.include_router(router(ctx))

    async def _conversation_history(user_id: str) -> Any:
        """The user's history for the conversation route: same store, gate and read budget as
        recommendations; a failure raises and the route answers without history (degraded)."""
        from outerloop.conversation import UserHistory

        if rt.store is None or not gate.open():
            raise ConnectionError("redis unavailable")
        try:
            async with asyncio.timeout(read_timeout_s):
                state = await rt.store.read(user_id, opts.funnel.max_history)
            gate.ok()
        except _REDIS_ERRORS as exc:
            gate.failed(exc)
            raise
        return UserHistory.from_state(state) if state.version else None

    from outerloop.conversation import ConversationService, conversation_router

    app.state.conversation = conversation or ConversationService(artifacts)
    app.include_router(conversation_router(app.state.conversation, _conversation_history))

    from outerloop.console import mount_console  # the operator's console at /console

    mount_console(app, runtime=rt, keys=keys, funnel=funnel, api_key=opts.api_key,
                  reads_need_key=opts.require_api_key, max_history=opts.funnel.max_history)

    from outerloop.scheduler.refresh_api import refresh_router  # run named agents now: queued for the daemons

    app.include_router(refresh_router(client=lambda: rt.client, keys=keys, api_key=opts.api_key,
                                      user_id_pattern=USER_ID_PATTERN, stream_shards=topology.stream_shards))

    # the Event schema for the request body above
    def _openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            finish_openapi(schema, n_items=n_items, api_key=api_key is not None,
                           write_paths={("/v1/events", "post"), ("/v1/users/{user_id}/profile", "put")})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = _openapi  # type: ignore[method-assign]
    return app


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods of every route whose path matches the request's, also inside the routers
    mounted with ``include_router`` (FastAPI keeps those as one entry per router)."""
    from starlette.routing import Match

    methods: set[str] = set()

    def walk(routes: list[Any]) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)  # an included router (no prefix here)
            if inner is not None:
                walk(inner.routes)
            elif getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
                methods.update(route.methods)

    walk(app.router.routes)
    return sorted(methods)
