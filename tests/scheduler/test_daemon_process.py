"""The daemon as an operator runs it: a process that is SIGKILLed in the middle of 10,000 events
(the rows runner: the transport alone) and in the middle of a stream driving the real outer loop
(the built-in agents on tiny trained artifacts), stopped with SIGTERM while cycles run, probed
with ``--check``, and left without Redis while the server restarts."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from outerloop.contracts.events import Event
from outerloop.contracts.keys import SchedulerKeys
from outerloop.contracts.triggers import TriggerRules
from outerloop.inner_loop.serving.user_state import UserStore
from outerloop.ports import free_port, redis_server_binary
from outerloop.storage.clients import daemon_async_client
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.api.test_api_fixtures import SYNTHETIC, tiny_dir  # noqa: F401
from tests.scheduler.test_scheduler_helpers import (  # noqa: F401
    MIN, REPO, T0, Env, RecordingRunner, daemon_cmd, env, fast_settings, group_done, make_daemon,
    running, spawn, stop_process, wait_until, xadd_all,
)


def stream_of_events(n: int, users: int, seed: int = 7) -> list[Event]:
    """A realistic mix: sessions with 40-minute breaks, a few events 2-4 s out of order and a
    few minutes late, finishes that trigger cycles."""
    rng = random.Random(seed)
    clock = {f"k{u:03d}": T0 + rng.randrange(0, 60 * MIN) for u in range(users)}
    out = []
    for i in range(n):
        user = f"k{rng.randrange(users):03d}"
        clock[user] += rng.choice([20_000, 60_000, 5 * MIN, 41 * MIN]) if rng.random() < 0.95 else 0
        ts = clock[user] - (rng.choice([2_000, 4_000, 3 * MIN]) if rng.random() < 0.05 else 0)
        out.append(Event(event_id=f"crash-{i}", user_id=user, item_id=1 + rng.randrange(50),
                         type=rng.choice(["play", "play", "pause", "finish", "skip"]), ts=ts))
    return out


async def applied_total(env: Env, users: list[str]) -> int:
    pipe = env.client.pipeline(transaction=False)
    for u in users:
        pipe.hget(env.keys.counters(u), "events")
    return sum(int(v or 0) for v in await pipe.execute())


def check(env: Env, *extra: str) -> int:
    """``outerloop daemon --check`` as a process: its exit code."""
    cmd = [sys.executable, "-m", "outerloop.cli", "daemon", "--check", "--redis-url", env.url,
           "--key-prefix", env.prefix, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=60).returncode


async def check_in_process(env: Env, *extra: str) -> int:
    """The same command through ``outerloop.cli.main`` (no interpreter start-up; a thread,
    because the command runs its own event loop)."""
    from outerloop.cli import main

    return await asyncio.to_thread(main, ["daemon", "--check", "--redis-url", env.url, "--key-prefix", env.prefix,
                                          *extra])


async def heartbeat_live(env: Env, consumer: str) -> bool:
    return bool(await env.client.exists(env.keys.heartbeat(consumer)))


async def assert_exactly_once(env: Env, events: list[Event]) -> None:
    by_user: dict[str, list[Event]] = {}
    for ev in events:
        by_user.setdefault(ev.user_id, []).append(ev)
    for user, evs in by_user.items():
        ids = {e.event_id for e in evs}
        applied = {m.decode() for m in await env.client.smembers(env.keys.applied(user))}
        applied -= {m for m in applied if m.startswith("release:")}  # a followed series' release, fanned out
        assert applied == ids, user
        counters = {k.decode(): int(v) for k, v in (await env.client.hgetall(env.keys.counters(user))).items()}
        assert counters["events"] == len(evs), user
        records = [json.loads(r) for r in await env.client.lrange(env.keys.sessions(user), 0, -1)]
        assert len({r["sid"] for r in records}) == len(records), f"{user}: a session recorded twice"
        state = {k.decode(): v for k, v in (await env.client.hgetall(env.keys.session_state(user))).items()}
        open_n = int(state.get("c_n", 0)) + int(state.get("p_n", 0))
        # every user event is in exactly one session, or counted late outside any (a catalog event,
        # an episode's release, is no one's activity)
        activity = sum(e.type != "episode_release" for e in evs)
        assert sum(r["n"] for r in records) + open_n + counters.get("late_outside_session", 0) == activity, user


async def test_sigkill_in_the_middle_of_10k_events_loses_and_duplicates_nothing(env: Env, tmp_path: Path) -> None:
    events = stream_of_events(10_000, users=200)
    users = sorted({e.user_id for e in events})
    await xadd_all(env.client, env.keys.stream(), events)
    common = ["--runner", "rows", "--cycle-timeout-s", "2", "--read-count", "200"]
    entry_2000 = (await env.client.xrange(env.keys.stream(), count=2_000))[-1][0]
    first = spawn(daemon_cmd(env, "first", *common), tmp_path / "first.log")
    try:
        await wait_until(lambda: _delivered_past(env, entry_2000), timeout_s=60, every_s=0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = await applied_total(env, users)
    assert killed_at < len(events), "the daemon finished before it could be killed"
    second = spawn(daemon_cmd(env, "second", *common, "--claim-min-idle-ms", "300"), tmp_path / "second.log")
    try:
        await wait_until(lambda: group_done(env.client, env.keys, len(events)), timeout_s=90, every_s=0.1)
        assert await check_in_process(env, "--consumer", "first") == 1  # the killed daemon's heartbeat expired
        assert await check_in_process(env, "--consumer", "second") == 0
        assert await check_in_process(env) == 0
    finally:
        assert stop_process(second) == 0
    await assert_exactly_once(env, events)
    assert await env.client.xlen(env.keys.dead_letter) == 0
    log = (tmp_path / "second.log").read_text()
    assert "claimed" in log, log[-2000:]


async def test_sigkill_mid_stream_of_the_real_outer_loop_loses_nothing_and_every_closed_session_gets_its_cycle(
        env: Env, tmp_path: Path, tiny_dir: Path) -> None:  # noqa: F811
    """The daemon as deployed (``--runner outerloop``: planner, memory, tool and evaluator agents
    on trained artifacts, the default triggers), SIGKILLed while its cycles run and replaced."""
    from outerloop.data.synthetic import SyntheticWorld

    opts = {k: int(v) for k, v in (kv.split("=") for kv in SYNTHETIC)}
    world = SyntheticWorld.generate(n_users=opts["n_users"], n_films=opts["n_films"], n_series=opts["n_series"],
                                    seed=opts["seed"])  # the world the tiny artifacts were trained on
    events = [Event.model_validate(e) for e in world.simulate(days=14)]
    pipe = env.client.pipeline(transaction=False)
    for u in world.users:
        pipe.hset(env.keys.profile(u.user_id), "utc_offset_min", u.tz_offset_min)
    await pipe.execute()
    store = UserStore(env.client, history_cap=200, keys=env.keys.base)
    for i in range(0, len(events), 500):  # what POST /v1/events does: the user's state, then the stream
        await store.apply(events[i:i + 500])
    log_key = f"{env.prefix}:refresh"
    common = ["--runner", "outerloop", "--artifacts", str(tiny_dir), "--catalog", "artifacts", "--refresh-log",
              log_key, "--read-count", "50", "--cycle-timeout-s", "30", "--lock-ttl-s", "2", "--max-cycles", "8"]
    third = (await env.client.xrange(env.keys.stream(), count=len(events) // 3))[-1][0]

    async def killable() -> bool:  # cycles have run and a third of the stream is read: mid-stream
        return await env.client.xlen(log_key) >= 20 and await _delivered_past(env, third)

    first = spawn(daemon_cmd(env, "first", *common), tmp_path / "first.log")
    try:
        await wait_until(killable, timeout_s=90, every_s=0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    users = sorted({e.user_id for e in events})
    cycles_before = await env.client.xlen(log_key)
    assert await applied_total(env, users) < len(events), "the daemon finished before it could be killed"
    second = spawn(daemon_cmd(env, "second", *common, "--claim-min-idle-ms", "300"), tmp_path / "second.log")
    try:
        await wait_until(lambda: _all_cycled(env, len(events)), timeout_s=120, every_s=0.1)
        await asyncio.sleep(1.0)  # the idle sweep's last closes (none once the stream is read), then settled
        await wait_until(lambda: _all_cycled(env, len(events)), timeout_s=30, every_s=0.1)
    finally:
        assert stop_process(second) == 0
    await assert_exactly_once(env, events)  # nothing lost, nothing applied twice
    assert await env.client.xlen(env.keys.dead_letter) == 0
    assert "claimed" in (tmp_path / "second.log").read_text()
    cycles = [{k.decode(): v.decode() for k, v in f.items()} for _, f in await env.client.xrange(log_key)]
    assert len(cycles) > cycles_before, "the replacement ran no cycle"
    runs = [r.rsplit(":", 1) for c in cycles for r in c["runs"].split(",") if r]
    assert {a for a, outcome in runs if outcome == "ok"} >= {"memory", "tools"}  # the agents worked
    assert any(c["rows"] for c in cycles)
    # every user whose session closed got a cycle for it (its newest close), across the kill
    closed: dict[str, int] = {}
    for u in users:
        ends = [json.loads(r)["end_ts"] for r in await env.client.lrange(env.keys.sessions(u), 0, -1)]
        if ends:
            closed[u] = max(ends)
    handled: dict[str, int] = {}
    for c in cycles:
        if c["session_end_ts"]:
            handled[c["user"]] = max(handled.get(c["user"], 0), int(c["session_end_ts"]))
    assert len(closed) >= 50, len(closed)
    assert [u for u, end in closed.items() if handled.get(u, -1) < end] == []


async def _all_cycled(env: Env, total: int) -> bool:
    """Every event read and acknowledged, and no user waiting for a cycle (pending or in flight)."""
    return await group_done(env.client, env.keys, total) and await env.client.zcard(env.keys.due(0)) == 0


async def _delivered_past(env: Env, entry_id: bytes) -> bool:
    """The group has read past ``entry_id`` (one cheap command, unlike summing counters)."""
    for g in await env.client.xinfo_groups(env.keys.stream()):
        last = g["last-delivered-id"]
        return tuple(map(int, last.split(b"-"))) >= tuple(map(int, entry_id.split(b"-")))
    return False


async def _tolerant(check) -> bool:
    """False while the test's own pooled connections still point at the dead server."""
    try:
        return await check
    except redis.ConnectionError:
        return False


async def _ge(value, threshold: int) -> bool:
    return (await value) >= threshold


async def test_sigterm_lets_running_cycles_finish_then_exits(env: Env, tmp_path: Path) -> None:
    users = [f"t{i}" for i in range(3)]
    events = [Event(event_id=f"term-{u}-{i}", user_id=u, item_id=1 + i, type="play", ts=T0 + i * 1000)
              for u in users for i in range(3)]
    refresh_log = f"{env.prefix}:refresh"
    proc = spawn(daemon_cmd(env, "term", "--runner", "rows", "--rows-work-ms", "1000", "--activity-triggers",
                            "--refresh-log", refresh_log, "--shutdown-grace-s", "10"), tmp_path / "term.log")
    try:
        await wait_until(lambda: heartbeat_live(env, "term"), timeout_s=30, every_s=0.05)
        await xadd_all(env.client, env.keys.stream(), events)

        async def all_locked() -> bool:
            return await env.client.exists(*[env.keys.cycle_lock(u) for u in users]) == len(users)

        await wait_until(all_locked, timeout_s=10, every_s=0.02)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
    finally:
        stop_process(proc, signal.SIGKILL)
    # the three cycles that were running completed: rows written, commits logged, locks released
    assert await env.client.xlen(refresh_log) == 3
    for u in users:
        assert await env.client.hexists(env.keys.rows(u), "recent")
        assert not await env.client.exists(env.keys.cycle_lock(u))
    assert await group_done(env.client, env.keys, len(events))
    assert check(env) == 1  # a stopped daemon removes its heartbeat (the CLI as a process)
    assert "stopped:" in (tmp_path / "term.log").read_text()


def _start_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.ping():
                return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


async def test_daemon_rides_out_a_redis_restart_without_losing_events(tmp_path: Path) -> None:
    port = free_port()
    server = _start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}"
    client = daemon_async_client(url=url, block_ms=100)
    keys = SchedulerKeys.with_prefix("restart")
    env = Env(target=None, prefix="restart", keys=keys, client=client)  # type: ignore[arg-type]
    events = stream_of_events(3_000, users=30, seed=11)
    users = sorted({e.user_id for e in events})
    runner = RecordingRunner(client, keys=keys)
    daemon = make_daemon(env, runner, rules=TriggerRules(on_activity=True),
                         settings=fast_settings(claim_min_idle_ms=500, read_count=100, apply_chunk=50))
    producer = redis.Redis(port=port)
    try:
        async with running(daemon):
            await xadd_all(client, keys.stream(), events[:2_000])
            await wait_until(lambda: _ge(applied_total(env, users), 500), timeout_s=30, every_s=0.01)
            server.kill()  # mid-stream, without warning
            server.wait()
            await asyncio.sleep(1.0)  # the daemon's loops fail and back off meanwhile
            server = _start_redis(port, tmp_path)
            pipe = producer.pipeline(transaction=False)
            for ev in events[2_000:]:
                pipe.xadd(keys.stream(), {"event": ev.model_dump_json()})
            pipe.execute()
            await wait_until(lambda: _tolerant(group_done(client, keys, len(events))), timeout_s=60, every_s=0.1)
            assert not daemon.stopping
        await assert_exactly_once(env, events)
        assert daemon.metrics.reconnects >= 1
    finally:
        producer.close()
        await client.aclose()
        server.kill()
        server.wait()
