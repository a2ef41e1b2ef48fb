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
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from outerloop.contracts.events import MIN_LIVE_TS_MS, Event
from outerloop.contracts.keys import Keys, embedding_key, served_key
from outerloop.errors import OuterloopError, UserInputError
from outerloop.inner_loop.serving.answer import ServedRecommendations, recommendation_doc
from outerloop.inner_loop.serving.funnel import Funnel, FunnelConfig, Recommendation
from outerloop.api.openapi import ErrorOut, events_request_body, finish as finish_openapi
from outerloop.inner_loop.serving.profiles import ProfileIn, profile_out
from outerloop.inner_loop.model.ranker import ArtifactsLike, Ranker
from outerloop.inner_loop.serving.user_state import DEFAULT_STREAM_MAXLEN, NotReplicated, UserStore, WriteBehind
from outerloop.storage.clients import AsyncRedisClient, RedisTarget
from outerloop.topology import Topology

log = logging.getLogger(__name__)

USER_ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"  # the Event contract's user_id
MAX_K = 100


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How the API behaves; the defaults are the ones the latency targets are measured with."""

    api_key: str | None = None  # protects write endpoints; required off loopback
    require_api_key: bool = False  # True when bound to a non-loopback address
    history_cap: int = 200
    funnel: FunnelConfig = field(default_factory=FunnelConfig)
    redis_read_timeout_ms: float = 30.0  # a slower read serves degraded instead
    redis_write_timeout_ms: float = 2000.0
    redis_retry_s: float = 1.0  # after a failure, serve degraded this long before re-trying
    served_ttl_s: int = 24 * 3600  # how long what was served stays joinable to feedback
    vector_cache_ttl_s: int = 24 * 3600
    max_batch: int = 500  # events per POST
    max_body_bytes: int = 1 << 20
    stream_maxlen: int | None = DEFAULT_STREAM_MAXLEN


class ApiError(OuterloopError):
    """A 4xx/5xx with a message for the client (never a traceback)."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.headers = headers


# --- OpenAPI documentation models (responses are written by hand for speed) -----------------
class EventsAccepted(BaseModel):
    accepted: int
    applied: int
    duplicates: int
    history_versions: dict[str, int]


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _error_response(status: int, detail: str, errors: list[dict[str, str]] | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": errors or []}, status_code=status, headers=headers)


class RedisGate:
    """A small circuit breaker: after ``trip_after`` failures in a row, requests stop waiting on
    Redis for ``retry_s`` and serve degraded at once; one success closes it again. A single
    slow read degrades only its own request (a busy machine is not a dead Redis)."""

    def __init__(self, retry_s: float, trip_after: int = 3) -> None:
        self.retry_s = retry_s
        self.trip_after = trip_after
        self.down_until = 0.0
        self.last_error = ""
        self.failures = 0
        self.in_a_row = 0

    def open(self) -> bool:
        return self.down_until == 0.0 or time.monotonic() >= self.down_until

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.in_a_row += 1
        self.last_error = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        if self.in_a_row >= self.trip_after:
            self.down_until = time.monotonic() + self.retry_s
        if self.failures == 1 or self.failures % 1000 == 0:
            log.warning("redis unavailable (%d failures): %s", self.failures, self.last_error)

    def ok(self) -> None:
        self.in_a_row = 0
        self.down_until = 0.0


_REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class _Runtime:
    """Per-app state created at startup: the Redis client, the store, the write-behind."""

    def __init__(self) -> None:
        self.client: AsyncRedisClient | None = None
        self.store: UserStore | None = None
        self.writer: WriteBehind | None = None


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
    rt = _Runtime()
    api_key = opts.api_key.encode() if opts.api_key else None
    read_timeout_s = opts.redis_read_timeout_ms / 1000.0
    write_timeout_s = opts.redis_write_timeout_ms / 1000.0
    durable_wait_ms = topology.durable_wait_ms if topology.durable_writes else None
    if durable_wait_ms is not None:  # room for both steps' WAIT (a cluster write has two)
        write_timeout_s = max(write_timeout_s, (2 * durable_wait_ms + 1000) / 1000.0)

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

    def _require_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key", "").encode()
        if not hmac.compare_digest(given, api_key):
            raise ApiError(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})

    # --- recommendations ------------------------------------------------------------------
    @app.get(
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

    # --- events -----------------------------------------------------------------------------
    @app.post(
        "/v1/events",
        response_model=EventsAccepted,
        responses={400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 413: {"model": ErrorOut},
                   415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
        summary="Record one event or a batch, and apply it to the user's real-time history",
        openapi_extra={"requestBody": events_request_body(opts.max_batch)},
    )
    async def post_events(request: Request) -> JSONResponse:
        _require_key(request)
        events = _parse_events(await _read_body(request, opts.max_body_bytes), opts.max_batch, n_items)
        if rt.store is None:  # writes ignore the read breaker: an event is worth a real attempt
            raise ApiError(503, "event store unavailable; retry later (events are idempotent by event_id)",
                           headers={"Retry-After": "1"})
        try:
            async with asyncio.timeout(write_timeout_s):
                result = await rt.store.apply(events)
            gate.ok()
        except NotReplicated as exc:  # Redis answered: the read breaker stays closed
            raise ApiError(503, f"{exc}; retry later (events are idempotent by event_id)",
                           headers={"Retry-After": "1"}) from None
        except _REDIS_ERRORS as exc:
            gate.failed(exc)
            raise ApiError(503, "event store unavailable; retry later (events are idempotent by event_id)",
                           headers={"Retry-After": "1"}) from None
        return JSONResponse({"accepted": result.accepted, "applied": result.applied,
                             "duplicates": result.duplicates, "history_versions": result.versions})

    # --- items, health, stats ------------------------------------------------------------------
    # --- profile -------------------------------------------------------------------------
    @app.put("/v1/users/{user_id}/profile", responses={422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
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

    @app.get("/v1/users/{user_id}/profile", responses={503: {"model": ErrorOut}}, summary="The user's profile")
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

    @app.get("/v1/items/{item_id}", responses={404: {"model": ErrorOut}}, summary="One catalog item")
    async def get_item(item_id: int = Path(ge=1, description="dense item id, 1..N")) -> dict[str, Any]:
        if not 1 <= item_id <= n_items:
            raise ApiError(404, f"item_id {item_id} is not in the catalog (1..{n_items})")
        it = funnel.catalog.items[item_id - 1]
        return {
            "item_id": it.item_id, "source_id": it.source_id, "title": it.title, "genres": list(it.genres),
            "year": it.year, "runtime_min": it.runtime_min, "tags": list(it.tags), "kind": it.kind,
            "series_id": it.series_id, "season": it.season, "episode": it.episode, "release_ts": it.release_ts,
            "popularity": float(np.asarray(artifacts.popularity)[item_id]),
        }

    @app.get("/healthz", summary="The process is up (and which one: the worker's pid)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/readyz", summary="Artifacts loaded and Redis reachable", responses={503: {"model": ErrorOut}})
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

    @app.get("/v1/stats", summary="Counters of this process (cache hits, fallbacks, Redis failures)")
    async def stats() -> dict[str, Any]:
        w = rt.writer
        return {**funnel.stats_snapshot(), "redis_failures": gate.failures,
                "write_behind_dropped": w.dropped if w else 0}

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


def _one_value_each(request: Request, *names: str) -> None:
    """A 422 when a single-valued query parameter is repeated (``?k=5&k=9``), instead of
    silently using one of the values."""
    errors = [{"loc": f"query.{n}", "msg": "given more than once; expected one value"}
              for n in names if len(request.query_params.getlist(n)) > 1]
    if errors:
        raise ApiError(422, "; ".join(f"{e['loc']}: {e['msg']}" for e in errors), errors)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods of every route whose path matches the request's."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return sorted(methods)


def _served_record(body: dict[str, Any]) -> bytes:
    """What the evaluator needs to attribute feedback: rows, item ids, scores, versions, time."""
    return json.dumps({
        "request_id": body["request_id"], "user_id": body["user_id"], "ts": int(time.time() * 1000),
        "model_version": body["model_version"], "history_version": body["history_version"],
        "ranker": body["ranker"], "fallbacks": body["fallbacks"],
        "rows": [{"row_id": r["row_id"], "produced_by": r["produced_by"], "run_id": r["run_id"],
                  "items": [[it["item_id"], it["score"]] for it in r["items"]]} for r in body["rows"]],
    }, separators=(",", ":")).encode()


async def _read_body(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, f"content-type must be application/json, got {ctype!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_events(raw: bytes, max_batch: int, n_items: int) -> list[Event]:
    """Validate the whole body before anything is written; every problem names its field."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, f"body: malformed JSON{where}") from None
    batch = isinstance(doc, list) or (isinstance(doc, dict) and "events" in doc)
    if isinstance(doc, dict) and "events" in doc:
        extra = sorted(set(doc) - {"events"})
        if extra:
            raise ApiError(422, f"body.{extra[0]}: unexpected field next to 'events'")
        doc = doc["events"]
        if not isinstance(doc, list):
            raise ApiError(422, "events: expected a list of events")
    if isinstance(doc, dict):
        docs = [doc]
    elif isinstance(doc, list):
        docs = doc
    else:
        raise ApiError(422, "body: expected an event object, a list of events or {\"events\": [...]}")
    if not docs:
        raise ApiError(422, "events: empty batch")
    if len(docs) > max_batch:  # a 422 like every schema violation (the schema says maxItems)
        raise ApiError(422, f"events: batch of {len(docs)} events is over the limit of {max_batch}")
    events: list[Event] = []
    errors: list[dict[str, str]] = []
    for i, d in enumerate(docs):
        where = f"events[{i}]" if batch else ""
        if not isinstance(d, dict):
            errors.append({"loc": where or "body", "msg": "expected an event object"})
            continue
        try:
            ev = Event.model_validate(d, strict=True)  # JSON types as the schema says: no "5" for 5
        except ValidationError as exc:
            for e in exc.errors()[:5]:
                loc = _loc(e.get("loc", ()))
                msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
                errors.append({"loc": f"{where}.{loc}" if where else loc, "msg": msg})
            continue
        at = f"{where}." if where else ""
        if ev.ts < MIN_LIVE_TS_MS:
            errors.append({"loc": f"{at}ts", "msg": f"ts {ev.ts} is before 2000-01-01 (ms since the epoch expected)"})
        if ev.needs_item() and ev.item_id is None:
            errors.append({"loc": f"{at}item_id", "msg": f"required for type {ev.type!r}"})
        elif ev.item_id is not None and ev.item_id > n_items:
            errors.append({"loc": f"{at}item_id", "msg": f"item {ev.item_id} is not in the catalog (1..{n_items})"})
        events.append(ev)
        if len(errors) >= 20:
            break
    if errors:
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
        if len(errors) > 5:
            detail += f"; and {len(errors) - 5} more"
        raise ApiError(422, detail + " (nothing was applied)", errors)
    return events
