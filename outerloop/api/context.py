"""What every route of the API shares: the serving options, the runtime made at startup (the Redis
client, the user store, the write-behind), the Redis circuit breaker and the error type the
routes raise. :func:`outerloop.api.app.create_app` builds one :class:`ApiContext` and hands it to
each router (:mod:`outerloop.api.routes`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from outerloop.contracts.keys import Keys
from outerloop.errors import OuterloopError
from outerloop.inner_loop.model.ranker import ArtifactsLike, Ranker
from outerloop.inner_loop.serving.funnel import Funnel, FunnelConfig
from outerloop.inner_loop.serving.user_state import DEFAULT_STREAM_MAXLEN, UserStore, WriteBehind
from outerloop.storage.clients import AsyncRedisClient

log = logging.getLogger("outerloop.api.app")

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


def error_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def error_response(status: int, detail: str, errors: list[dict[str, str]] | None = None,
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


REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class Runtime:
    """Per-app state created at startup: the Redis client, the store, the write-behind."""

    def __init__(self) -> None:
        self.client: AsyncRedisClient | None = None
        self.store: UserStore | None = None
        self.writer: WriteBehind | None = None


@dataclass(slots=True)
class ApiContext:
    """One app's shared state, built once by ``create_app`` (the routes close over nothing else)."""

    options: ServeOptions
    funnel: Funnel
    artifacts: ArtifactsLike
    ranker: Ranker | None
    keys: type[Keys]
    gate: RedisGate
    runtime: Runtime = field(default_factory=Runtime)
    api_key: bytes | None = None
    read_timeout_s: float = 0.03
    write_timeout_s: float = 2.0

    @property
    def n_items(self) -> int:
        return self.funnel.n_items

    def require_key(self, request: Request) -> None:
        """A 401 unless the request carries the configured ``X-API-Key`` (no key configured: open)."""
        if self.api_key is None:
            return
        given = request.headers.get("x-api-key", "").encode()
        if not hmac.compare_digest(given, self.api_key):
            raise ApiError(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
