"""A master SIGKILLed while events flow through the real API, on a real local Redis Cluster: the
measurement ``tests/test_cluster_failover.py`` asserts on and ``outerloop bench cluster`` reports.

:func:`run_failover` starts ``outerloop serve`` (configured by the environment only), posts one
event per request at a fixed rate, kills the master of a stream shard's slot (one that still has
two replicas) after ``before_s``, goes on for ``after_s``, then retries what failed (the write is
idempotent by ``event_id``) and reads back the streams and histories. The load comes from ``wrk``
(:mod:`outerloop.benchmarks.failover_load`: paced by its ``delay()`` hook, each request's outcome
logged per thread) or, for a test's lower rate, from a Python client. It returns one flat dict:
the failover window, errors, degraded GETs of the users whose keys moved, acknowledged events
lost, duplicates, and the facts a test asserts on (``late_failures``, ``retry_failures``,
``moved_user_answered``...). Given a ``caught_up`` probe (daemons running) it also says how long
after the kill every shard was read and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from outerloop.benchmarks.cpu import CpuMeter, per
from outerloop.benchmarks.failover_load import offer_events_wrk
from outerloop.benchmarks.serve import _cpu_s
from outerloop.contracts.keys import SchedulerKeys
from outerloop.data.schema import ACTION_ID
from outerloop.ports import free_port
from outerloop.storage.clients import AsyncRedisClient
from outerloop.storage.local_servers import LocalCluster
from outerloop.topology import Topology

T0_MS = 1_780_000_000_000
PLAY = ACTION_ID["play"]
API_KEY = "k1"


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    """Until ``GET /readyz`` answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"outerloop serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"outerloop serve not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def serve(topology: Topology, artifacts: Path, log: Path, *, workers: int = 1,
          cwd: Path | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``outerloop serve`` configured by the environment only (``topology.env()``), with API key
    :data:`API_KEY`; yields (base URL, process) once ready, stops it afterwards."""
    port = free_port()
    env = {**os.environ, **topology.env(), "OUTERLOOP_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "outerloop.cli", "serve", "--artifacts", str(artifacts),
                                 "--port", str(port), "--workers", str(workers)], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield base, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def event(prefix: str, i: int, users: list[str]) -> dict[str, Any]:
    """Event ``i``: a play with its own timestamp, so its history token is its own."""
    return {"event_id": f"{prefix}-{i}", "user_id": users[i % len(users)], "item_id": 1 + i % 100, "type": "play",
            "ts": T0_MS + i}


def victim_master(cluster: LocalCluster, topology: Topology) -> int:
    """The master of a stream shard's slot that still has both its replicas."""
    client = topology.target().sync_client()
    try:
        for stream in SchedulerKeys.for_topology(topology).streams():
            port = client.get_node_from_key(stream).port
            if len(cluster.replicas_of(port)) == 2:
                return port
    finally:
        client.close()
    raise RuntimeError("no master of a stream shard has 2 replicas left")


async def offer_events(base: str, prefix: str, users: list[str], victim_users: list[str], kill: Callable[[], None],
                       *, rate: float, before_s: float, after_s: float) -> dict[str, Any]:
    """Post one event per request at ``rate``/s, call ``kill`` after ``before_s``, go on for
    ``after_s``; every 10th request also GETs a victim user's recommendations."""
    posts: dict[str, tuple[float, float, int]] = {}  # event_id -> (sent, answered, status; 0 = no answer)
    gets: list[tuple[float, int, bool]] = []  # (sent, status, degraded)
    total = int(rate * (before_s + after_s))
    killed_at = 0.0
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, timeout=10, headers={"X-API-Key": API_KEY}, limits=limits) as http:
        t0 = time.monotonic()

        async def post(i: int) -> None:
            ev = event(prefix, i, users)
            sent = time.monotonic() - t0
            try:
                code = (await http.post("/v1/events", json=ev)).status_code
            except httpx.HTTPError:
                code = 0
            posts[ev["event_id"]] = (sent, time.monotonic() - t0, code)

        async def get(user: str) -> None:
            sent = time.monotonic() - t0
            try:
                r = await http.get(f"/v1/users/{user}/recommendations", params={"k": 10})
                gets.append((sent, r.status_code, r.status_code == 200 and bool(r.json()["degraded"])))
            except httpx.HTTPError:
                gets.append((sent, 0, False))

        tasks: list[asyncio.Task[None]] = []
        for i in range(total):
            delay = i / rate - (time.monotonic() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if not killed_at and time.monotonic() - t0 >= before_s:
                kill()
                killed_at = time.monotonic() - t0
            tasks.append(asyncio.create_task(post(i)))
            if i % 10 == 0:
                tasks.append(asyncio.create_task(get(victim_users[(i // 10) % len(victim_users)])))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
    return {"posts": posts, "gets": gets, "killed_at": killed_at, "elapsed": elapsed, "total": total,
            "t0": t0}


def stored(topology: Topology, users: list[str]) -> tuple[Counter[str], dict[str, list[bytes]], set[str]]:
    """(event id -> times in its user's stream shard, user -> history tokens, event ids the
    daemons applied). With daemons running, an entry they consumed may be trimmed from the
    stream: an event a daemon applied (its per-user applied set) was in the stream, and counts
    once when no longer there."""
    keys = SchedulerKeys.for_topology(topology)
    client = topology.target().sync_client()
    try:
        in_streams: Counter[str] = Counter()  # only entries in their user's own shard count
        for stream in keys.streams():
            for _, fields in client.xrange(stream):
                ev = json.loads(fields[b"event"])
                if keys.stream_for_user(ev["user_id"]) == stream:
                    in_streams[ev["event_id"]] += 1
        consumed: set[str] = set()
        for u in users:
            for member in client.smembers(keys.applied(u)):
                eid = member.decode()
                consumed.add(eid)
                if not in_streams[eid]:
                    in_streams[eid] = 1
        history = {u: client.lrange(topology.keys().history(u), 0, -1) for u in users}
    finally:
        client.close()
    return in_streams, history, consumed


async def caught_up(client: AsyncRedisClient, keys: SchedulerKeys, *, include_due: bool = True) -> bool:
    """Every shard's entries read and acknowledged by the daemons' group, and (``include_due``) no
    user waiting for a cycle."""
    for shard, stream in enumerate(keys.streams()):
        if not await client.exists(stream):
            continue
        length = await client.xlen(stream)
        groups = await client.xinfo_groups(stream)
        if not groups:
            return False
        for g in groups:
            if int(g["pending"]) or int(g.get("entries-read") or 0) < length:
                return False
        if include_due and await client.zcard(keys.due(shard)):
            return False
    return True


async def caught_up_on(live: Topology, *, include_due: bool = False) -> bool:
    """:func:`caught_up` with a client of its own (a node still failing over: not yet)."""
    client = live.target().async_client()
    try:
        return await caught_up(client, SchedulerKeys.for_topology(live), include_due=include_due)
    except Exception:  # noqa: BLE001 - a slot still moving answers an error: not caught up yet
        return False
    finally:
        await client.aclose()


async def run_failover(cluster: LocalCluster, topology: Topology, artifacts: Path, log: Path, *,
                       rate: float = 150, before_s: float = 3.0, after_s: float = 8.0, calm_s: float = 2.0,
                       n_users: int = 60, workers: int = 1, cwd: Path | None = None,
                       caught_up_probe: Callable[[Topology], Awaitable[bool]] | None = None,
                       caught_up_timeout_s: float = 120.0, wrk: str | None = None, wrk_threads: int = 64,
                       daemon_pids: list[int] | None = None,
                       after_load: Callable[[str, Topology, list[str]], Awaitable[dict[str, Any]]] | None = None,
                       ) -> dict[str, Any]:
    """The whole measurement (see the module docstring); ``topology.key_prefix`` names the events.

    ``wrk`` (the binary): the load comes from wrk (:mod:`outerloop.benchmarks.failover_load`),
    else from a Python client in this process (enough for a test's 150 events/s, not for 300 on
    2 cores). The CPU of the API, the Redis nodes, ``daemon_pids`` and the load generator during
    the load is reported per event. ``after_load(base URL, live topology, victim users)`` runs
    once the failed requests were retried, while the API is still up (a test's own checks: cycles,
    rows served); what it returns is reported under ``after_load``. With ``daemon_pids`` the
    report says how many acknowledged events the daemons did not consume (their per-user applied
    sets), read after ``after_load``."""
    prefix = topology.key_prefix or "fo"
    cluster.wait_state_ok()
    victim = victim_master(cluster, topology)
    probe = topology.target().sync_client()
    users = [f"{prefix}-u{i:02d}" for i in range(n_users)]
    victim_users = [u for u in users if probe.get_node_from_key(topology.keys().history(u)).port == victim]
    victim_shards = [s for s in SchedulerKeys.for_topology(topology).streams()
                     if probe.get_node_from_key(s).port == victim]
    probe.close()
    if not victim_users or not victim_shards:
        raise RuntimeError("no user's keys on the victim master")
    extra: dict[str, Any] = {}
    with serve(topology, artifacts, log, workers=workers, cwd=cwd) as (base, api):
        meter = CpuMeter({"api": [api.pid], "redis": [cluster.procs[p].pid for p in cluster.alive()],
                          "daemons": list(daemon_pids or [])})
        cpu_before = meter.read()
        victim_cpu = _cpu_s(cluster.procs[victim].pid) or 0.0

        def kill() -> None:
            nonlocal victim_cpu
            victim_cpu = (_cpu_s(cluster.procs[victim].pid) or 0.0) - victim_cpu  # its CPU dies with it
            cluster.kill(victim)

        own_cpu = time.process_time()
        if wrk:
            load = await offer_events_wrk(wrk, base, prefix, n_users, victim_users, kill, log.parent, rate=rate,
                                          before_s=before_s, after_s=after_s, api_key=API_KEY, events_t0_ms=T0_MS,
                                          threads=wrk_threads)
        else:
            load = await offer_events(base, prefix, users, victim_users, kill=kill, rate=rate, before_s=before_s,
                                      after_s=after_s)
            load["loadgen"] = {"tool": "python httpx (in this process)", "cpu_s": time.process_time() - own_cpu}
        cpu = CpuMeter.delta(cpu_before, meter.read())
        cpu["redis"] += victim_cpu
        api_alive = api.poll() is None
        posts = load["posts"]
        killed_at = load["killed_at"]
        failed = sorted((eid for eid, (_, _, code) in posts.items() if code != 200), key=lambda e: posts[e][0])
        acked = {eid for eid, (_, _, code) in posts.items() if code == 200}
        calm_from = load["elapsed"] - calm_s
        late_failures = [eid for eid in failed if posts[eid][0] >= calm_from]

        # the victim's slots are served by one of its replicas now
        cluster.wait_state_ok()
        live = dataclasses.replace(topology, redis_url=cluster.url)  # the URL given may be the dead node's
        after = live.target().sync_client()
        victim_still_master = after.get_node_from_key(victim_shards[0]).port == victim
        after.close()

        if caught_up_probe is not None:  # the daemons read and acknowledged everything posted
            deadline = time.monotonic() + caught_up_timeout_s
            while not await caught_up_probe(live):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            else:
                done = time.monotonic() - load["t0"]
                extra["daemons_caught_up_after_kill_s"] = round(done - killed_at, 3)
                extra["daemons_caught_up_after_load_s"] = round(done - load["elapsed"], 3)
            extra.setdefault("daemons_caught_up_after_kill_s", None)

        # the client retries what failed (the write is idempotent by event_id): all accepted now
        by_id = {eid: event(prefix, int(eid.rsplit("-", 1)[1]), users) for eid in posts}
        retried_applied = 0
        retry_failures: list[str] = []
        async with httpx.AsyncClient(base_url=base, timeout=10, headers={"X-API-Key": API_KEY}) as http:
            for i in range(0, len(failed), 100):
                r = await http.post("/v1/events", json=[by_id[e] for e in failed[i:i + 100]])
                if r.status_code != 200:
                    retry_failures.append(f"{r.status_code}: {r.text[:300]}")
                    continue
                retried_applied += r.json()["applied"]
            # recommendations are answered for a user whose keys moved to the new master
            answered = False
            for _ in range(50):
                r = await http.get(f"/v1/users/{victim_users[0]}/recommendations", params={"k": 10})
                if r.status_code == 200 and not r.json()["degraded"]:
                    answered = True
                    break
                await asyncio.sleep(0.1)
            if after_load is not None:
                extra["after_load"] = await after_load(base, live, victim_users)
    log_text = log.read_text()

    in_streams, history, consumed = stored(live, users)
    token_of = {eid: f"{e['item_id']}:{PLAY}:{e['ts']}".encode() for eid, e in by_id.items()}
    tokens = Counter(t for hist in history.values() for t in hist)
    lost_stream = sorted(e for e in acked if not in_streams[e])
    lost_history = sorted(e for e in acked if not tokens[token_of[e]])
    duplicates = sum(n - 1 for n in tokens.values() if n > 1)
    missing_after_retry = sorted(e for e in failed if not in_streams[e] or not tokens[token_of[e]])

    errors = [posts[e] for e in failed]
    window_start = min((s for s, _, _ in errors), default=killed_at)
    window_end = max((a for _, a, _ in errors), default=killed_at)
    before = [a - s for s, a, code in posts.values() if code == 200 and a < killed_at]
    gets_in_window = [g for g in load["gets"] if window_start <= g[0] <= window_end]
    if daemon_pids is not None:  # every event acknowledged, on its first try or on the retry
        extra["acknowledged_not_consumed_by_daemons"] = sum(1 for e in by_id if e not in consumed)
        extra["events_consumed_by_daemons"] = len(set(by_id) & consumed)
    n_acked = len(acked)
    loadgen = load["loadgen"]
    return {
        "mode": "durable" if topology.durable_writes else "default",
        "offered_events_per_s": rate,
        "achieved_events_per_s": round(load["total"] / load["elapsed"], 1) if load["elapsed"] else None,
        "acknowledged_events_per_s_first_try": round(n_acked / load["elapsed"], 1) if load["elapsed"] else None,
        "events_posted": load["total"],
        "load_generator": loadgen["tool"],
        "loadgen_threads": loadgen.get("threads"),
        "loadgen_connections": loadgen.get("connections"),
        "loadgen_cpu_ms_per_event": per(loadgen["cpu_s"], load["total"]),
        "loadgen_cpu_share_of_one_core": round(loadgen["cpu_s"] / load["elapsed"], 3) if load["elapsed"] else None,
        "api_cpu_ms_per_event": per(cpu["api"], load["total"]),
        "api_cpu_share_of_one_core": round(cpu["api"] / load["elapsed"], 3) if load["elapsed"] else None,
        "redis_cpu_ms_per_event": per(cpu["redis"], load["total"]),
        "daemon_cpu_ms_per_event": per(cpu["daemons"], load["total"]) if daemon_pids else None,
        "acknowledged_first_try": len(acked),
        "failed_first_try": len(failed),
        "failed_by_status": dict(Counter(str(posts[e][2]) for e in failed)),
        "acknowledged_lost_from_stream": len(lost_stream),
        "acknowledged_lost_from_history": len(lost_history),
        "history_duplicates": duplicates,
        "retried_applied_now": retried_applied,
        "retried_missing_after_retry": len(missing_after_retry),
        "failover_window_s": round(window_end - window_start, 3),
        "kill_to_first_error_s": round(window_start - killed_at, 3),
        "kill_to_last_error_s": round(window_end - killed_at, 3),
        # a stalled request holds its connection (closed loop): what was really offered meanwhile
        "events_sent_in_window_per_s": round(sum(1 for s, _, _ in posts.values() if window_start <= s <= window_end)
                                             / (window_end - window_start), 1) if window_end > window_start else None,
        "gets_in_window": len(gets_in_window),
        "get_errors_in_window": sum(1 for _, code, _ in gets_in_window if code != 200),
        "get_degraded_in_window": sum(1 for _, code, deg in gets_in_window if deg),
        "post_ms_before_kill_p50": round(statistics.median(before) * 1000, 2) if before else None,
        "post_ms_before_kill_p99": round(sorted(before)[int(0.99 * (len(before) - 1))] * 1000, 2) if before else None,
        "victim_users": len(victim_users),
        **extra,
        # what a test asserts on
        "late_failures": len(late_failures),
        "retry_failures": retry_failures,
        "missing_after_retry_ids": missing_after_retry[:5],
        "victim_still_master": victim_still_master,
        "moved_user_answered": answered,
        "api_alive_after_load": api_alive,
        "traceback_in_api_log": "Traceback" in log_text,
        "api_log_tail": log_text[-3000:] if ("Traceback" in log_text or not api_alive) else "",
    }
