"""Cycles: one per user at a time across daemons, coalesced triggers, the concurrency bound,
recovery of a crashed cycle's triggers, external triggers, the stale-row sweep, failures."""

from __future__ import annotations

import asyncio

from outerloop.clock import now_ms
from outerloop.contracts.keys import Keys
from outerloop.contracts.rows import decode_row
from outerloop.contracts.triggers import DRIFT, SWEEP, TriggerRules
from outerloop.scheduler.dispatch import CLAIM_LUA, CycleOutcome, request_cycle
from outerloop.scheduler.runners import RowRefreshRunner
from outerloop.scheduler.triggers import PendingTrigger
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.scheduler.test_scheduler_helpers import (  # noqa: F401
    MIN, T0, Env, RecordingRunner, env, event, fast_settings, make_daemon, running, wait_until,
    xadd_all,
)

ACTIVITY = TriggerRules(on_activity=True)


async def test_two_daemons_never_run_one_user_twice_and_coalesce_triggers(env: Env) -> None:
    runner = RecordingRunner(env.client, keys=env.keys, work_s=0.15)  # shared: sees overlaps across daemons
    a = make_daemon(env, runner, rules=ACTIVITY, settings=fast_settings(max_concurrent_cycles=4))
    b = make_daemon(env, runner, rules=ACTIVITY, settings=fast_settings(max_concurrent_cycles=4))
    users = ["c0", "c1", "c2"]
    evs = []
    async with running(a), running(b):
        for i in range(60):
            ev = event(users[i % 3], T0 + i * 1000)
            evs.append(ev)
            await xadd_all(env.client, env.keys.stream(), [ev])
            await asyncio.sleep(0.01)

        async def all_seen() -> bool:
            seen = {i for _, ts in runner.calls for t in ts for i in t.event_ids}
            return seen >= {e.event_id for e in evs}

        await wait_until(all_seen, timeout_s=20)
    assert runner.max_overlap_per_user == 1
    assert len(runner.calls) < len(evs)  # triggers that arrived during a cycle were coalesced
    assert a.metrics.cycles_started > 0 and b.metrics.cycles_started > 0


async def test_concurrent_cycles_are_bounded(env: Env) -> None:
    runner = RecordingRunner(env.client, keys=env.keys, work_s=0.2)
    daemon = make_daemon(env, runner, rules=ACTIVITY, settings=fast_settings(max_concurrent_cycles=2))
    await xadd_all(env.client, env.keys.stream(), [event(f"b{i}", T0) for i in range(8)])
    async with running(daemon):
        await wait_until(lambda: _done(len({u for u, _ in runner.calls}) == 8), timeout_s=10)
    assert runner.max_running == 2


async def _done(value: bool) -> bool:
    return value


async def test_triggers_of_a_crashed_cycle_run_again_after_its_lock_expires(env: Env) -> None:
    user = "crashed"
    await request_cycle(env.client, env.keys, user, DRIFT, {"row_id": "r1"})
    # a daemon claimed the user (lock for 300 ms, triggers moved in flight) and died
    assert (await env.client.eval(CLAIM_LUA, 7, env.keys.cycle_lock(user), *env.keys.pending_triggers(user),
                                  *env.keys.inflight_triggers(user), "dead-token", 300, 256, 20))[0] == 1
    await env.client.zadd(env.keys.due(0), {user: now_ms() + 300})  # its lease
    runner = RecordingRunner(env.client, keys=env.keys)
    daemon = make_daemon(env, runner)
    async with running(daemon):
        await wait_until(lambda: _done(bool(runner.calls)), timeout_s=5)
    [(u, [trig])] = runner.calls
    assert (u, trig.name, trig.detail["row_id"]) == (user, DRIFT, "r1")
    assert not await env.client.exists(*env.keys.inflight_triggers(user), env.keys.cycle_lock(user))


async def test_stale_rows_are_swept_and_a_failing_cycle_never_stops_the_daemon(env: Env) -> None:
    class Flaky(RecordingRunner):
        async def __call__(self, user_id, triggers):
            outcome = await super().__call__(user_id, triggers)
            if user_id == "bad":
                raise RuntimeError("agent bug")
            return outcome

    runner = Flaky(env.client, keys=env.keys)
    daemon = make_daemon(env, runner, settings=fast_settings(min_refresh_interval_s=0.0, stale_after_s=0.3))
    async with running(daemon):
        await request_cycle(env.client, env.keys, "bad", DRIFT)
        await request_cycle(env.client, env.keys, "good", DRIFT)
        # after its cycle a user's rows are due for a refresh stale_after_s later
        await wait_until(lambda: _done(SWEEP in runner.triggers_of("good")), timeout_s=5)
    assert daemon.metrics.cycles_by_status["failed"] >= 1
    assert daemon.metrics.cycles_by_status["ok"] >= 2


async def test_a_cycle_past_the_backstop_is_stopped_and_counted(env: Env) -> None:
    async def hangs(user_id, triggers) -> CycleOutcome:
        await asyncio.sleep(30)
        return CycleOutcome()

    daemon = make_daemon(env, hangs, settings=fast_settings(cycle_timeout_s=0.2))
    async with running(daemon):
        await request_cycle(env.client, env.keys, "slow", DRIFT)
        await wait_until(lambda: _done(daemon.metrics.kills == 1), timeout_s=5)
    assert not await env.client.exists(env.keys.cycle_lock("slow"))


async def test_row_refresh_runner_writes_a_row_and_logs_the_commit(env: Env) -> None:
    runner = RowRefreshRunner(env.client, refresh_log=f"{env.prefix}:refresh")
    ev = event("rr", T0, item=7)
    outcome = await runner("rr", [PendingTrigger(name="activity", event_ids=(ev.event_id,), events=(ev,))])
    assert outcome.status == "ok" and outcome.rows_committed == 1
    row = decode_row(await env.client.hget(Keys.rows("rr"), "recent"))  # the one row codec reads it
    assert row.items == [(7, 1.0)] and row.produced_by == "scheduler.row_refresh"
    [(entry_id, log)] = await env.client.xrange(f"{env.prefix}:refresh")
    assert log[b"event_ids"] == ev.event_id.encode()
    assert int(entry_id.split(b"-")[0]) >= int(log[b"started_ms"])  # the commit time


def test_a_cycle_receives_each_trigger_as_the_kind_it_was_fired() -> None:
    ev = event("m", T0 + 23 * 60 * MIN, "finish", item=3)
    pending = [
        PendingTrigger(name="late_night_session", detail={"end_ts": ev.ts, "local_hour": 23}, last_ms=T0),
        PendingTrigger(name="session_closed", detail={"end_ts": ev.ts}, events=(ev,), last_ms=T0),
        PendingTrigger(name="title_finished", events=(ev,), event_ids=(ev.event_id,), detail={"ts": ev.ts}),
        PendingTrigger(name="drift", detail={"row_id": "because"}, last_ms=T0),
        PendingTrigger(name="sweep", last_ms=T0),
        PendingTrigger(name="manual:asked", detail={"end_ts": 5, "why": "support"}, last_ms=T0),
        PendingTrigger(name="stale_rows", last_ms=T0),  # no kind (an older version's name): left out
    ]
    mapped = [t for p in pending if (t := p.as_trigger(tz_offset_min=-300)) is not None]
    # one trigger each, of the kind that was fired, nothing renamed: the late-night session is not
    # folded into the closed session (whose trigger carries the session's events)
    assert [t.kind for t in mapped] == ["late_night_session", "session_closed", "title_finished", "drift", "sweep",
                                        "manual"]
    assert mapped[0].detail == {"end_ts": ev.ts, "local_hour": 23} and mapped[0].tz_offset_min == -300
    assert mapped[0].at_ms == mapped[1].at_ms == ev.ts and not mapped[0].events  # the session's end, in event time
    assert mapped[1].events[0].event_id == ev.event_id and "late_night" not in mapped[1].detail
    assert mapped[2].events[0].event_id == ev.event_id and mapped[2].at_ms == ev.ts
    assert mapped[3].row_id == "because" and mapped[3].at_ms == mapped[4].at_ms == T0
    # a manual request names its agent; its detail is the requester's, exactly as sent
    assert mapped[5].agents == ["asked"] and mapped[5].detail == {"end_ts": 5, "why": "support"}
    assert mapped[5].at_ms == T0


async def test_a_renewal_racing_the_release_is_not_a_lost_lock(env: Env) -> None:
    """The renewal task may run after a cycle released its lock and before the cycle's task is
    done: the lock is then gone, but it was given back, not lost (no warning, no cancel)."""
    runner = RecordingRunner(env.client, keys=env.keys, work_s=0.05)
    daemon = make_daemon(env, runner, settings=fast_settings(lock_ttl_s=5.0))
    dispatcher = daemon.dispatcher
    release = dispatcher._finish

    async def release_then_renew(*args: object, **kwargs: object) -> None:
        await release(*args, **kwargs)  # type: ignore[arg-type]
        await dispatcher.renew_locks()  # exactly the interleaving that used to count a lost lock

    dispatcher._finish = release_then_renew  # type: ignore[method-assign]
    async with running(daemon):
        await request_cycle(env.client, env.keys, "racer", DRIFT)
        await wait_until(lambda: _done(len(runner.calls) == 1 and not runner.running.get("racer")), timeout_s=5)
        await asyncio.sleep(0.2)
    assert daemon.metrics.locks_lost == 0
    assert list(daemon.metrics.cycle_ms) and daemon.metrics.cycles_started == 1


async def test_a_cycle_longer_than_the_lock_keeps_it_by_renewal(env: Env) -> None:
    runner = RecordingRunner(env.client, keys=env.keys, work_s=1.0)
    settings = dict(lock_ttl_s=0.3, cycle_timeout_s=5.0)
    a = make_daemon(env, runner, settings=fast_settings(**settings))
    b = make_daemon(env, runner, settings=fast_settings(**settings))
    async with running(a), running(b):
        await request_cycle(env.client, env.keys, "long", DRIFT)
        await wait_until(lambda: _done(len(runner.calls) == 1), timeout_s=5)
        await request_cycle(env.client, env.keys, "long", DRIFT)  # arrives while it runs: waits
        await wait_until(lambda: _done(len(runner.calls) == 2 and not runner.running.get("long")), timeout_s=10)
    assert runner.max_overlap_per_user == 1
    assert a.metrics.locks_lost == b.metrics.locks_lost == 0
