"""An open-loop HTTP load generator, run in its own process so it never competes with the
server for the same interpreter.

Open loop: request ``i`` is due at ``t0 + i / rate`` whatever happened before; latency is
measured from that *scheduled* time, so when the server stalls, the requests that queue up
behind the stall are charged for it (no coordinated omission). Connections are raw asyncio
streams speaking HTTP/1.1 keep-alive (a few dozen microseconds of client CPU per request,
several times less than a full HTTP client); a new connection is opened whenever all are busy.
How late the generator itself sent each request is reported (``send_lag_*``) to show that it
was not the bottleneck.

A freshness probe can run alongside: it reads a user's top pick, POSTs a ``finish`` of it, and
GETs until the response reflects the event (the item is gone and ``history_version`` moved);
freshness is the time from the POST being sent to that GET's response.

Usage: ``python -m outerloop.benchmarks.loadgen SPEC.json RESULT.json`` (the spec is written by
:mod:`outerloop.benchmarks.serve`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from outerloop.errors import OuterloopError


class HttpError(OuterloopError):
    """The connection broke or the response was not HTTP/1.1 we understand."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class Pool:
    """Keep-alive connections to one host:port, opened on demand up to ``max_conns``."""

    def __init__(self, host: str, port: int, max_conns: int = 512) -> None:
        self.host, self.port = host, port
        self.max_conns = max_conns
        self.idle: list[_Conn] = []
        self.open_conns = 0
        self.waiting: deque[asyncio.Future[_Conn]] = deque()  # requests waiting for a connection

    async def _open(self) -> _Conn:
        self.open_conns += 1
        try:
            r, w = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.open_conns -= 1
            raise
        return _Conn(r, w)

    async def _acquire(self) -> _Conn:
        if self.idle:
            return self.idle.pop()
        if self.open_conns < self.max_conns:
            return await self._open()
        fut: asyncio.Future[_Conn] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        return await fut

    def _release(self, conn: _Conn) -> None:
        while self.waiting:  # hand the connection straight to the oldest waiting request
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)

    def _drop(self, conn: _Conn) -> None:
        self.open_conns -= 1
        conn.writer.close()
        if self.waiting:  # a waiter would otherwise wait for a connection that no longer exists
            asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        try:
            conn = await self._open()
        except OSError:
            return
        self._release(conn)

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = await self._acquire()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode() + (body or b"")
        try:
            conn.writer.write(data)
            raw = await conn.reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            lower = raw.lower()
            i = lower.find(b"content-length:")
            if i < 0:
                raise HttpError("response without content-length")
            n = int(lower[i + 15 : lower.find(b"\r\n", i)])
            payload = await conn.reader.readexactly(n)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self._drop(conn)
            raise HttpError(f"{type(exc).__name__}: {exc}") from None
        if b"connection: close" in lower:
            self._drop(conn)
        else:
            self._release(conn)
        return status, payload

    def close(self) -> None:
        for c in self.idle:
            c.writer.close()
        self.idle.clear()


def _now() -> float:
    """Seconds on a high-resolution clock. Not ``loop.time()``: uvloop's is libuv's cached
    millisecond clock, which would round every latency to whole milliseconds."""
    return time.perf_counter()


@dataclass
class PhaseResult:
    latencies_ms: list[float] = field(default_factory=list)  # of every answered request (any status)
    send_lag_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # transport failures and timeouts by kind
    degraded: int = 0
    started_s: float = 0.0
    finished_s: float = 0.0
    freshness_ms: list[float] = field(default_factory=list)
    freshness_failures: dict[str, int] = field(default_factory=dict)


async def _one(pool: Pool, path: str, due: float, timeout_s: float, res: PhaseResult) -> None:
    res.send_lag_ms.append((_now() - due) * 1000.0)
    try:
        status, body = await asyncio.wait_for(pool.request("GET", path), timeout_s)
    except asyncio.TimeoutError:
        res.failures["timeout"] = res.failures.get("timeout", 0) + 1
        return
    except (HttpError, OSError) as exc:
        kind = type(exc).__name__
        res.failures[kind] = res.failures.get(kind, 0) + 1
        return
    res.latencies_ms.append((_now() - due) * 1000.0)
    res.statuses[str(status)] = res.statuses.get(str(status), 0) + 1
    if b'"degraded":true' in body:
        res.degraded += 1


async def _probe(pool: Pool, spec: dict[str, Any], stop_at: float, res: PhaseResult) -> None:
    """Freshness: POST a finish of the current top pick, then GET until the response reflects it."""
    probe = spec["probe"]
    users: list[str] = probe["users"]
    period = 1.0 / float(probe["rate"])
    headers = {"X-API-Key": probe["api_key"]} if probe.get("api_key") else {}
    n = 0
    next_at = _now()
    while _now() < stop_at:
        await asyncio.sleep(max(0.0, next_at - _now()))
        next_at += period
        user = users[n % len(users)]
        n += 1
        path = f"/v1/users/{user}/recommendations?k=20&row=top-picks"

        def fail(kind: str) -> None:
            res.freshness_failures[kind] = res.freshness_failures.get(kind, 0) + 1

        try:
            status, body = await pool.request("GET", path)
            doc = json.loads(body)
            if status != 200 or doc.get("degraded") or not doc["rows"] or not doc["rows"][0]["items"]:
                fail("no_top_pick")
                continue
            item = doc["rows"][0]["items"][0]["item_id"]
            v0 = doc["history_version"]
            event = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": "finish",
                     "ts": int(time.time() * 1000)}
            t0 = _now()
            status, _ = await pool.request("POST", "/v1/events", json.dumps(event).encode(), headers)
            if status != 200:
                fail(f"post_{status}")
                continue
            for _attempt in range(100):
                status, body = await pool.request("GET", path)
                doc = json.loads(body)
                items = [it["item_id"] for it in doc["rows"][0]["items"]] if doc.get("rows") else []
                if status == 200 and doc["history_version"] > v0 and item not in items:
                    res.freshness_ms.append((_now() - t0) * 1000.0)
                    break
            else:
                fail("never_reflected")
        except (HttpError, OSError, ValueError, KeyError, IndexError) as exc:
            fail(type(exc).__name__)


async def run_phase(spec: dict[str, Any]) -> PhaseResult:
    """Send ``spec["paths"]`` (cycled) at ``spec["rate"]`` for ``spec["duration_s"]``."""
    loop = asyncio.get_running_loop()
    pool = Pool(spec["host"], int(spec["port"]), int(spec.get("max_conns", 512)))
    probe_pool = Pool(spec["host"], int(spec["port"]), 4)
    res = PhaseResult()
    rate = float(spec["rate"])
    n = int(rate * float(spec["duration_s"]))
    paths: list[str] = spec["paths"]
    timeout_s = float(spec.get("timeout_s", 5.0))
    # open a few connections first: connection set-up is not what the benchmark measures
    warm = [await pool._acquire() for _ in range(min(16, pool.max_conns))]
    for c in warm:
        pool._release(c)
    tasks: set[asyncio.Task[None]] = set()
    t0 = _now() + 0.05
    res.started_s = time.time()
    probe_task = None
    if spec.get("probe"):
        probe_task = loop.create_task(_probe(probe_pool, spec, t0 + n / rate, res))
    for i in range(n):
        due = t0 + i / rate
        delay = due - _now()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(_one(pool, paths[i % len(paths)], due, timeout_s, res))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks))
    if probe_task is not None:
        await probe_task
    res.finished_s = time.time()
    pool.close()
    probe_pool.close()
    return res


def _runner() -> Any:
    """``uvloop.run`` when installed (the generator's CPU competes with the server's), else
    ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m outerloop.benchmarks.loadgen SPEC.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    res = _runner()(run_phase(spec))
    with open(argv[1], "w") as f:
        json.dump(res.__dict__, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
