"""The sessionizer against real Redis: event-time sessions, the 5 s watermark, late events,
idle close by the event-time clock, and the planner's triggers (incl. late-night thriller)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import outerloop.storage
from outerloop.clock import now_ms
from outerloop.contracts.triggers import TRIGGER_KINDS, Trigger, TriggerRules, session_triggers
from outerloop.data.synthetic import CATALOG_USER_ID
from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.storage.scripts import ScriptSet
from outerloop.scheduler.sessionizer import ApplyResult, Sessionizer
from outerloop.scheduler.settings import DaemonSettings
from outerloop.scheduler.sweeps import Sweeper
from outerloop.scheduler.triggers import ItemInfo, read_triggers
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.scheduler.test_scheduler_helpers import MIN, T0, Env, env, event  # noqa: F401

ITEMS = {1: ItemInfo(genres=("Comedy",)), 2: ItemInfo(genres=("Horror", "Thriller")),
         3: ItemInfo(series_id="s1", genres=("Drama",)), 4: ItemInfo(series_id="s1", genres=("Drama",)),
         5: ItemInfo(genres=("Drama",), runtime_min=120)}  # a two-hour film


def sessionizer(**rules) -> Sessionizer:
    return Sessionizer(rules=TriggerRules(**rules), items=ITEMS.get)


async def apply(env: Env, sz: Sessionizer, ev) -> ApplyResult:
    scripts = ScriptSet(*sz.scripts())
    keys, args = sz.apply_call(env.keys, ev, now_ms())
    return ApplyResult.from_reply(await scripts.call(env.client, "apply", keys, args))


async def sessions(env: Env, user: str) -> list[dict]:
    return [json.loads(r) for r in await env.client.lrange(env.keys.sessions(user), 0, -1)]


async def pending(env: Env, user: str):
    return {t.name: t for t in await read_triggers(env.client, env.keys, user)}


async def test_gap_of_30_minutes_closes_a_session_and_redelivery_is_a_no_op(env: Env) -> None:
    sz = sessionizer()
    evs = [event("u", T0), event("u", T0 + 10 * MIN), event("u", T0 + 41 * MIN)]
    for ev in evs:
        assert (await apply(env, sz, ev)).applied
    again = await apply(env, sz, evs[1])
    assert not again.applied and not again.late
    [closed] = await sessions(env, "u")
    assert (closed["start_ts"], closed["end_ts"], closed["n"]) == (T0, T0 + 10 * MIN, 2)
    trig = await pending(env, "u")
    assert trig["session_closed"].detail["n"] == 2
    assert [e.event_id for e in trig["session_closed"].events] == [evs[0].event_id, evs[1].event_id]
    assert int(await env.client.hget(env.keys.counters("u"), "events")) == 3


async def test_out_of_order_event_within_the_watermark_bridges_two_sessions(env: Env) -> None:
    sz = sessionizer()
    await apply(env, sz, event("u", T0))
    # 30 min 3 s later: a new session starts, but the first stays open until the watermark
    # (newest event time - 5 s) passes its end + 30 min
    await apply(env, sz, event("u", T0 + 30 * MIN + 3_000))
    assert await sessions(env, "u") == []
    # arrives 4 s out of order (< 5 s): within 30 min of both, so they are one session
    res = await apply(env, sz, event("u", T0 + 30 * MIN - 1_000))
    assert not res.late
    await apply(env, sz, event("u", T0 + 100 * MIN))
    [closed] = await sessions(env, "u")
    assert (closed["start_ts"], closed["end_ts"], closed["n"], closed["late"]) == (T0, T0 + 30 * MIN + 3_000, 3, 0)


async def test_a_gap_beyond_the_watermark_closes_at_once(env: Env) -> None:
    sz = sessionizer()
    await apply(env, sz, event("u", T0))
    await apply(env, sz, event("u", T0 + 31 * MIN))  # 31 min - 5 s > 30 min: decided
    [closed] = await sessions(env, "u")
    assert closed["n"] == 1
    # an event inside the closed session's gap is late: counted, not reopening it
    res = await apply(env, sz, event("u", T0 + 10 * MIN))
    assert res.applied and res.late
    assert len(await sessions(env, "u")) == 1


async def test_late_events_are_counted_and_applied_never_dropped(env: Env) -> None:
    sz = sessionizer()
    await apply(env, sz, event("u", T0))
    await apply(env, sz, event("u", T0 + 10 * MIN))
    inside = await apply(env, sz, event("u", T0 + 5 * MIN))  # 5 min behind: beyond the 5 s watermark
    assert inside.applied and inside.late
    await apply(env, sz, event("u", T0 + 50 * MIN))  # closes the first session
    outside = await apply(env, sz, event("u", T0 + 20 * MIN))  # inside a closed session's gap
    assert outside.applied and outside.late
    counters = await env.client.hgetall(env.keys.counters("u"))
    assert int(counters[b"events"]) == 5 and int(counters[b"late"]) == 2
    assert int(counters[b"late_outside_session"]) == 1
    [closed] = await sessions(env, "u")
    assert closed["n"] == 3 and closed["late"] == 1


async def test_idle_session_closes_when_event_time_moves_on(env: Env) -> None:
    sz = sessionizer()
    metrics = DaemonMetrics()
    sweeper = Sweeper(client=env.client, keys=env.keys, settings=DaemonSettings(), sessionizer=sz,
                      metrics=metrics, on_due=lambda: None)
    await sweeper.prepare()
    await apply(env, sz, event("quiet", T0))
    await env.client.zadd(env.keys.open_sessions(0), {"quiet": T0})
    await env.client.set(env.keys.watermark(0), T0 + 20 * MIN)  # others' events: 20 min later
    assert await sweeper.close_idle_sessions(0) == 0
    await env.client.set(env.keys.watermark(0), T0 + 30 * MIN + 5_000)  # minus 5 s watermark = 30 min
    assert await sweeper.close_idle_sessions(0) == 1
    assert len(await sessions(env, "quiet")) == 1
    assert await env.client.zscore(env.keys.open_sessions(0), "quiet") is None
    assert "session_closed" in await pending(env, "quiet")


async def test_a_playing_film_holds_its_session_open_until_its_runtime_has_passed(env: Env) -> None:
    """play of a 120-min film, finish 115 min later: one session (no event in between). Without
    a runtime the same events are two sessions; a pause ends the hold."""
    sz = sessionizer()
    await apply(env, sz, event("film", T0, "play", item=5))
    await apply(env, sz, event("film", T0 + 115 * MIN, "finish", item=5))
    assert await sessions(env, "film") == []  # still one open session
    await apply(env, sz, event("film", T0 + 200 * MIN, "play", item=1))  # 85 min after the finish: closes it
    [one] = await sessions(env, "film")
    assert (one["start_ts"], one["end_ts"], one["n"]) == (T0, T0 + 115 * MIN, 2)

    await apply(env, sz, event("norun", T0, "play", item=1))  # no runtime known: the gap decides
    await apply(env, sz, event("norun", T0 + 115 * MIN, "finish", item=1))
    assert len(await sessions(env, "norun")) == 1

    await apply(env, sz, event("paused", T0, "play", item=5))
    await apply(env, sz, event("paused", T0 + 5 * MIN, "pause", item=5))  # stopped watching: no hold
    await apply(env, sz, event("paused", T0 + 50 * MIN, "play", item=5))
    [first] = await sessions(env, "paused")
    assert (first["start_ts"], first["end_ts"], first["n"]) == (T0, T0 + 5 * MIN, 2)


async def test_the_idle_sweep_waits_for_a_playing_film(env: Env) -> None:
    sz = sessionizer()
    sweeper = Sweeper(client=env.client, keys=env.keys, settings=DaemonSettings(), sessionizer=sz,
                      metrics=DaemonMetrics(), on_due=lambda: None)
    await sweeper.prepare()
    res = await apply(env, sz, event("watching", T0, "play", item=5))
    assert res.open_session_last_ts == T0 + 120 * MIN  # the horizon is what the index holds
    await env.client.zadd(env.keys.open_sessions(0), {"watching": res.open_session_last_ts})
    await env.client.set(env.keys.watermark(0), T0 + 60 * MIN)  # an hour in: still watching
    assert await sweeper.close_idle_sessions(0) == 0
    await env.client.set(env.keys.watermark(0), T0 + 150 * MIN + 5_000)  # the film's end + 30 min
    assert await sweeper.close_idle_sessions(0) == 1
    [closed] = await sessions(env, "watching")
    assert closed["end_ts"] == T0  # the session's end is still its last event

    # a pause ends the hold: the horizon, and the index the script keeps, come back to the pause
    scripts = ScriptSet(*sz.scripts())
    for ts, type_ in ((T0, "play"), (T0 + 10 * MIN, "pause")):
        keys, args = sz.apply_call(env.keys, event("stopped", ts, type_, item=5), now_ms(), shard=0)
        await scripts.call(env.client, "apply", keys, args)
        assert await env.client.zscore(env.keys.open_sessions(0), "stopped") == (
            T0 + 120 * MIN if type_ == "play" else T0 + 10 * MIN)
    await env.client.set(env.keys.watermark(0), T0 + 40 * MIN + 5_000)  # the pause + 30 min
    assert await sweeper.close_idle_sessions(0) == 1
    assert [s["end_ts"] for s in await sessions(env, "stopped")] == [T0 + 10 * MIN]


async def test_planner_triggers(env: Env) -> None:
    sz = sessionizer()
    await env.client.hset(env.keys.profile("night"), "utc_offset_min", -300)  # UTC-5
    # 04:30 UTC = 23:30 local: a horror title, then the session ends
    late = T0 + 4 * 60 * MIN + 30 * MIN
    await apply(env, sz, event("night", late, "play", item=2))
    await apply(env, sz, event("night", late + 90 * MIN, "play", item=1))
    trig = await pending(env, "night")
    assert set(trig) == {"session_closed", "late_night_session"}
    assert trig["late_night_session"].detail["local_hour"] == 23
    # the same at 16:30 local is not late-night
    await apply(env, sz, event("day", T0 + 21 * 60 * MIN + 30 * MIN, "play", item=2))
    await apply(env, sz, event("day", T0 + 23 * 60 * MIN, "play", item=2))
    assert set(await pending(env, "day")) == {"session_closed"}
    # finishing a title; following a series and its next episode's release (a catalog event)
    fin = event("fan", T0, "finish", item=3)
    await apply(env, sz, fin)
    assert (await pending(env, "fan"))["title_finished"].event_ids == (fin.event_id,)
    assert await env.client.sismember(env.keys.follows("fan"), "s1")
    rel = event(CATALOG_USER_ID, T0 + 5 * MIN, "episode_release", item=4)
    res = await apply(env, sz, rel)
    assert res.applied and res.open_session_last_ts is None  # releases are not user activity


@pytest.mark.parametrize("tz, start_min, items", [
    (-300, 4 * 60 + 30, [2]),  # 23:30 local on horror: late night
    (-300, 21 * 60 + 30, [2]),  # 16:30 local: not late
    (0, 23 * 60 + 10, [2, 1]),  # ends on a comedy: not dark
    (0, 23 * 60 + 10, [1, 2]),  # ends on horror at 23:20
    (60, 0, [2]),  # 01:00 local: still late night after midnight
])
async def test_session_triggers_classify_a_session_as_the_sessionizer_does(env: Env, tz, start_min, items) -> None:
    """``session_triggers`` (replays, benchmarks) and the Lua fire the same kinds for a session."""
    sz = sessionizer()
    user = f"cls{tz}{start_min}{len(items)}{items[0]}"
    await env.client.hset(env.keys.profile(user), "utc_offset_min", tz)
    session = [event(user, T0 + (start_min + 10 * i) * MIN, "play", item=item) for i, item in enumerate(items)]
    for ev in session:
        await apply(env, sz, ev)
    await apply(env, sz, event(user, session[-1].ts + 90 * MIN, "click", item=1))  # closes the session
    fired = set(await pending(env, user))
    genres = {i: info.genres for i, info in ITEMS.items()}
    assert fired == {t.kind for t in session_triggers(session, genres_of=genres.get, tz_offset_min=tz)}


async def test_the_lua_fires_the_agents_trigger_kinds(env: Env) -> None:
    """Every name the scripts fire is a trigger kind the agents subscribe to, and
    ``Trigger.event`` (callers feeding events themselves) picks the kind the sessionizer fires
    for the event: nothing translates between the daemon and the agents."""
    lua = Path(outerloop.storage.__file__).parent / "lua"
    fired = {name for path in lua.glob("*.lua")
             for name in re.findall(r"trig_fire\([^,]+,\s*'([a-z_]+)'", path.read_text(encoding="utf-8"))}
    assert fired == {"title_finished", "episode_released", "activity", "session_closed", "late_night_session"}
    assert fired <= set(TRIGGER_KINDS)
    sz = sessionizer(on_activity=True)
    fin, play = event("k1", T0, "finish", item=3), event("k2", T0, "play", item=1)
    await apply(env, sz, fin)
    await apply(env, sz, play)
    assert set(await pending(env, "k1")) == {Trigger.event(fin).kind, "activity"} == {"title_finished", "activity"}
    assert set(await pending(env, "k2")) == {Trigger.event(play).kind} == {"activity"}
    release = event("k1", T0 + MIN, "episode_release", item=4)  # k1 follows s1 since the finish
    await apply(env, sz, release)
    assert Trigger.event(release).kind == "episode_released" in await pending(env, "k1")


async def test_a_late_night_session_leaves_its_events_to_session_closed(env: Env) -> None:
    """The late-night trigger comes beside the closed session's and carries no second copy of
    its events (a copy in the shared, capped list pushed the session's own events out)."""
    sz = sessionizer()  # at most 20 events kept per user's pending triggers
    await env.client.hset(env.keys.profile("owl"), "utc_offset_min", -300)
    late = T0 + 4 * 60 * MIN + 30 * MIN  # 23:30 local
    session = [event("owl", late + i * MIN, "play", item=2) for i in range(15)]
    for ev in session:
        await apply(env, sz, ev)
    await apply(env, sz, event("owl", late + 120 * MIN, "play", item=1))  # closes the session
    trig = await pending(env, "owl")
    assert set(trig) == {"session_closed", "late_night_session"}
    assert [e.event_id for e in trig["session_closed"].events] == [e.event_id for e in session]
    assert not trig["late_night_session"].events and trig["late_night_session"].detail["end_ts"] == session[-1].ts


async def test_activity_trigger_is_opt_in_and_coalesces(env: Env) -> None:
    sz = sessionizer(on_activity=True)
    evs = [event("a", T0 + i * 1000) for i in range(5)]
    for ev in evs:
        await apply(env, sz, ev)
    act = (await pending(env, "a"))["activity"]
    assert act.count == 5 and act.event_ids == tuple(e.event_id for e in evs)
    assert [e.event_id for e in act.events] == [e.event_id for e in evs]
    await apply(env, sessionizer(), event("b", T0))
    assert "activity" not in await pending(env, "b")
