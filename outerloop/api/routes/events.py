"""``POST /v1/events``: one event or a batch, validated whole (every problem names its field; a
batch with one bad event applies none), then written in one step: the stream and the user's
history (:meth:`outerloop.inner_loop.serving.user_state.UserStore.apply`)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from outerloop.api.context import REDIS_ERRORS as _REDIS_ERRORS, ApiContext, ApiError, error_loc as _loc
from outerloop.api.openapi import ErrorOut, events_request_body
from outerloop.contracts.events import MIN_LIVE_TS_MS, Event
from outerloop.inner_loop.serving.user_state import NotReplicated


# --- OpenAPI documentation models (responses are written by hand for speed) -----------------
class EventsAccepted(BaseModel):
    accepted: int
    applied: int
    duplicates: int
    history_versions: dict[str, int]


def events_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    rt, gate, opts, n_items = ctx.runtime, ctx.gate, ctx.options, ctx.n_items
    write_timeout_s = ctx.write_timeout_s
    _require_key = ctx.require_key

    @router.post(
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
    return router


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
