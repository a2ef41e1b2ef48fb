"""The console's routes: the page (``/console``), its packaged assets (``/console/static``) and
the JSON it polls (``/console/api/...``), plus the one write: operator control of an agent.

Access: the read-only views need no key when the API is bound to loopback (off loopback they
need ``X-API-Key`` like everything else); control needs the API key always: without a
configured key it is refused (403), with a missing or wrong key it is 401, and nothing changes.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError

from outerloop.console import views
from outerloop.contracts.keys import Keys
from outerloop.errors import UserInputError
from outerloop.scheduler import control as ctl

STATIC = Path(__file__).with_name("static")
USER_ID = r"^[A-Za-z0-9_.:\-]+$"
AGENT = r"^[A-Za-z0-9_.:\-]+$"
VIEW_CACHE_S = 0.5  # viewers polling together share one read
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class ControlIn(BaseModel):
    """One operator change to one agent."""

    action: Literal["pause", "resume", "budget", "reset_budget"]
    operator: str = Field(min_length=1, max_length=64, pattern=r"^[\w .@\-]+$",
                          description="who makes the change (recorded with it)")
    latency_ms: float | None = Field(default=None, gt=0, le=60_000, description="budget: the new latency budget")
    max_tool_calls: int | None = Field(default=None, ge=0)
    max_llm_tokens: int | None = Field(default=None, ge=0)
    note: str = Field(default="", max_length=200)


def _control_body(raw: bytes) -> ControlIn:
    try:
        return ControlIn.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        errors = exc.errors()
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5])
        raise HTTPException(422, detail or "invalid body") from None


class _Cached:
    def __init__(self) -> None:
        self.at = 0.0
        self.value: Any = None
        self.lock = asyncio.Lock()

    async def get(self, make: Callable[[], Awaitable[Any]]) -> Any:
        async with self.lock:
            if self.value is None or time.monotonic() - self.at > VIEW_CACHE_S:
                self.value = await make()
                self.at = time.monotonic()
            return self.value


def console_router(*, client: Callable[[], Any], keys: type[Keys], api_key: str | None, reads_need_key: bool,
                   serve: Callable[[str], Awaitable[Any]], title: Callable[[int], str]) -> APIRouter:
    """``client()`` is the API's Redis client (None before start-up or without Redis);
    ``serve(user_id)`` answers what the API would serve the user now (a funnel
    ``Recommendation``); ``title(item_id)`` names an item."""
    router = APIRouter(include_in_schema=False)
    secret = api_key.encode() if api_key else None
    health_cache, agents_cache = _Cached(), _Cached()

    def key_ok(request: Request) -> bool:
        return secret is not None and hmac.compare_digest(request.headers.get("x-api-key", "").encode(), secret)

    def may_read(request: Request) -> None:
        if reads_need_key and not key_ok(request):
            raise HTTPException(401, "the console's views need X-API-Key when the API is not bound to loopback",
                                headers={"WWW-Authenticate": "X-API-Key"})

    def redis() -> Any:
        c = client()
        if c is None:
            raise HTTPException(503, "redis unavailable: the console has nothing to show")
        return c

    async def guarded(make: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await make()
        except REDIS_ERRORS as exc:
            raise HTTPException(503, f"redis unavailable: {type(exc).__name__}") from None

    @router.get("/console")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @router.get("/console/")
    async def page_slash() -> RedirectResponse:
        return RedirectResponse("/console", status_code=308)

    @router.get("/console/api/health")
    async def health(request: Request) -> Any:
        may_read(request)
        c = redis()
        return await guarded(lambda: health_cache.get(lambda: views.health_view(c, keys)))

    @router.get("/console/api/agents")
    async def agents(request: Request) -> Any:
        may_read(request)
        c = redis()
        return await guarded(lambda: agents_cache.get(lambda: views.agents_view(c, keys)))

    async def _user(user_id: str) -> dict[str, Any]:
        c = redis()
        try:
            rec = await serve(user_id)
            served = views.served_rows(rec, title) if rec is not None else None
        except REDIS_ERRORS:
            served = None
        return await guarded(lambda: views.user_view(c, keys, user_id, title=title, served=served))

    @router.get("/console/api/users/{user_id}")
    async def user(request: Request, user_id: str = PathParam(min_length=1, max_length=128, pattern=USER_ID)) -> Any:
        may_read(request)
        return await _user(user_id)

    @router.get("/console/api/users/{user_id}/items/{item_id}/chain")
    async def chain(request: Request, item_id: int,
                    user_id: str = PathParam(min_length=1, max_length=128, pattern=USER_ID)) -> Any:
        may_read(request)
        return views.item_chain(await _user(user_id), item_id)

    @router.get("/console/api/control")
    async def control_state(request: Request) -> Any:
        may_read(request)
        c = redis()

        async def read() -> dict[str, Any]:
            snap = await ctl.read_control(c, keys)
            return {"agents": {a: s.to_dict() for a, s in snap.agents.items()},
                    "log": await ctl.read_log(c, keys, 50)}
        return await guarded(read)

    def may_control(request: Request) -> None:
        if secret is None:
            raise HTTPException(403, "control is disabled: it needs an API key (start the API with OUTERLOOP_API_KEY)")
        if not key_ok(request):
            raise HTTPException(401, "control needs the API key: missing or wrong X-API-Key header",
                                headers={"WWW-Authenticate": "X-API-Key"})

    @router.post("/console/api/control/{agent}")
    async def control(request: Request, agent: str = PathParam(min_length=1, max_length=64, pattern=AGENT)) -> Any:
        may_control(request)  # before the body is read: without the key nothing else is looked at
        body = _control_body(await request.body())
        c = redis()
        docs = await guarded(lambda: views.daemon_docs(c, keys))
        declared: dict[str, Any] = {}
        for doc in docs.values():
            declared.update(doc.get("agents") or {})
        if agent not in declared:
            known = ", ".join(sorted(declared)) or "none reported yet"
            raise HTTPException(404, f"no daemon runs an agent named {agent!r} (agents: {known})")
        budget = None
        if body.action == "budget":
            if body.latency_ms is None:
                raise HTTPException(422, "latency_ms: required to change a budget")
            ceiling = float(declared[agent].get("max_override_ms") or 0)
            if ceiling and body.latency_ms > ceiling:
                raise HTTPException(422, f"latency_ms: at most {ceiling:g} ms for {agent!r} (its declared budget plus "
                                         "the graph's backstop slack, which is compiled into the daemons' graphs)")
            try:
                budget = ctl.budget_from(body.latency_ms, body.max_tool_calls, body.max_llm_tokens)
            except UserInputError as exc:
                raise HTTPException(422, str(exc)) from None
        source = request.client.host if request.client else ""
        entry = await guarded(lambda: ctl.apply_change(c, keys, agent, body.action, by=body.operator, source=source,
                                                       budget=budget, note=body.note))
        agents_cache.value = None  # the next view shows the change
        snap = await guarded(lambda: ctl.read_control(c, keys))
        state = snap.get(agent) or ctl.AgentControl(agent=agent)
        return {"change": entry, "agent": state.to_dict()}

    return router
