"""The API's request figures for the console: rate, P50/P99 and degraded answers of
``GET /v1/users/{id}/recommendations``, per second, published to Redis so that a console served
by any API process shows all of them.

:class:`RequestStats` is a pure ASGI middleware: on the request path it costs two clock reads,
a substring test on the response body (the API writes it compactly, so ``"degraded":true`` can
only be the top-level flag; strings inside it are JSON-escaped) and a list append. Every
``publish_s`` a task started with the app writes this process's last minutes to the hash
:func:`api_stats_key` (field ``host:pid``); nothing is written per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from outerloop.budgets.accounting import percentile
from outerloop.contracts.keys import Keys
from outerloop.scheduler.journal import instance_name
from outerloop.storage.clients import AsyncRedisClient

log = logging.getLogger(__name__)

RECS_PATH = re.compile(r"^/v1/users/[^/]+/recommendations$")
DEGRADED = b'"degraded":true'
SERIES_S = 300  # seconds of per-second buckets kept
SAMPLES_PER_S = 256  # latencies kept per second (a uniform enough sample at any rate that fits one core)
STALE_MS = 15_000  # an instance that has not published for this long is gone


def api_stats_key(keys: type[Keys]) -> str:
    """HASH ``host:pid`` -> JSON snapshot of one API process."""
    return f"{keys.prefix}:console:api"


def _pct(values: list[float], q: float) -> float | None:
    """The project's one percentile (``budgets.accounting.percentile``), ``q`` in 0..1, rounded."""
    v = percentile(values, 100.0 * q)
    return None if v is None else round(v, 3)


class _Second:
    __slots__ = ("t", "count", "degraded", "ms")

    def __init__(self, t: int) -> None:
        self.t = t
        self.count = 0
        self.degraded = 0
        self.ms: list[float] = []


class RequestStats:
    """ASGI middleware measuring recommendation requests, and the publisher of its figures."""

    def __init__(self, app: Any, *, client: Callable[[], Any], keys: type[Keys], publish_s: float = 2.0) -> None:
        self.app = app
        self.client = client
        self.keys = keys
        self.publish_s = publish_s
        self.name = instance_name()
        self.total = 0
        self.degraded_total = 0
        self.seconds: deque[_Second] = deque(maxlen=SERIES_S)
        self._task: asyncio.Task[None] | None = None

    # --- measuring ---------------------------------------------------------------------------
    def record(self, ms: float, degraded: bool) -> None:
        now = int(time.time())
        if not self.seconds or self.seconds[-1].t != now:
            self.seconds.append(_Second(now))
        sec = self.seconds[-1]
        sec.count += 1
        sec.degraded += degraded
        if len(sec.ms) < SAMPLES_PER_S:
            sec.ms.append(ms)
        self.total += 1
        self.degraded_total += degraded

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
            return
        if scope["type"] != "http" or scope.get("method") != "GET" or not RECS_PATH.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        degraded = False

        async def wrapped(message: Any) -> None:
            nonlocal degraded
            if message["type"] == "http.response.body":
                degraded = degraded or DEGRADED in message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.record((time.perf_counter() - started) * 1000.0, degraded)

    # --- publishing ----------------------------------------------------------------------------
    def _lifespan_send(self, send: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def wrapped(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete" and self._task is None:
                self._task = asyncio.create_task(self._publish_forever(), name="console:api-stats")
            await send(message)
        return wrapped

    def _lifespan_receive(self, receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def wrapped() -> Any:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                self._task = None
            return message
        return wrapped

    def snapshot(self, seconds: int = 120) -> dict[str, Any]:
        now = int(time.time())
        recent = [s for s in self.seconds if s.t > now - seconds]
        last_min = [m for s in recent if s.t > now - 60 for m in s.ms]
        last_10 = sum(s.count for s in recent if s.t > now - 10)
        return {
            "name": self.name, "at_ms": int(time.time() * 1000), "requests_total": self.total,
            "degraded_total": self.degraded_total, "rate_10s": round(last_10 / 10.0, 3),
            "p50_ms_60s": _pct(last_min, 0.5), "p99_ms_60s": _pct(last_min, 0.99),
            "degraded_60s": sum(s.degraded for s in recent if s.t > now - 60),
            "series": [[s.t, s.count, s.degraded, _pct(s.ms, 0.5), _pct(s.ms, 0.99)] for s in recent],
        }

    async def publish(self) -> None:
        client = self.client()
        if client is not None:
            await client.hset(api_stats_key(self.keys), self.name, json.dumps(self.snapshot(), separators=(",", ":")))

    async def _publish_forever(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.publish_s)
            try:
                await self.publish()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - figures for people: Redis down costs them only
                failures += 1
                if failures == 1:
                    log.warning("console: could not publish the API's request figures: %s", exc)


async def read_api_stats(client: AsyncRedisClient, keys: type[Keys], now_ms: int) -> list[dict[str, Any]]:
    """Live API processes' snapshots (instances gone for :data:`STALE_MS` are forgotten)."""
    out, gone = [], []
    for name, raw in (await client.hgetall(api_stats_key(keys))).items():
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if now_ms - int(doc.get("at_ms", 0)) > STALE_MS:
            gone.append(name)
        else:
            out.append(doc)
    if gone:
        await client.hdel(api_stats_key(keys), *gone)
    return out
