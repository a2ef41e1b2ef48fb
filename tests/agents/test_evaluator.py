"""The evaluator: feedback joined to what was served, per-row rates, drift vs noise, and the
drift flag reaching the planner (a re-plan in the same cycle) through a real Redis."""

from __future__ import annotations

import json

import pytest

from outerloop import OuterLoop, Trigger
from outerloop.agents.evaluator import RowStats, drift_test, join_feedback, row_stats
from outerloop.contracts.keys import baseline_key, served_key, window_key
from outerloop.memory.facts import GenreAffinity
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_client,
    redis_keys,
    redis_target,
)
from tests.agents.test_outer_loop_support import BASE_TS, TinyArtifacts, apply_events, ev


def served(request_id: str, rows: dict[str, list[int]]) -> dict:
    return {"request_id": request_id, "user_id": "u1", "ts": BASE_TS,
            "rows": [{"row_id": r, "produced_by": "tools", "run_id": "x", "items": [[i, 1.0] for i in items]}
                     for r, items in rows.items()]}


SERVED = {
    "req-1": served("req-1", {"top_picks": list(range(1, 11)), "wind_down": list(range(11, 16))}),
    "req-2": served("req-2", {"top_picks": list(range(1, 11))}),
}


def test_rates_from_a_joined_feedback_set():
    feedback = [
        ev("u1", "click", 1, BASE_TS, request_id="req-1"),
        ev("u1", "play", 1, BASE_TS + 1, request_id="req-1"),  # same slot: engaged once
        ev("u1", "play", 2, BASE_TS + 2, request_id="req-1"),
        ev("u1", "finish", 2, BASE_TS + 3, request_id="req-1"),
        ev("u1", "skip", 3, BASE_TS + 4, request_id="req-1"),
        ev("u1", "play", 11, BASE_TS + 5, request_id="req-1"),  # wind_down, never finished
        ev("u1", "click", 1, BASE_TS + 6, request_id="req-2"),  # another request: another slot
        ev("u1", "click", 40, BASE_TS + 7, request_id="req-2"),  # not served: unattributable
        ev("u1", "click", 1, BASE_TS + 8, request_id="req-unknown"),
    ]
    joined = join_feedback(SERVED, feedback)
    assert len(joined) == 5
    stats = row_stats(SERVED, joined)
    top, wind = stats["top_picks"], stats["wind_down"]
    assert top.impressions == 20 and wind.impressions == 5
    assert top.ctr == pytest.approx(3 / 20)
    assert top.skip_rate == pytest.approx(1 / 20)
    assert top.completion_rate == pytest.approx(1 / 2)  # started items 1 and 2, finished 2
    assert wind.ctr == pytest.approx(1 / 5) and wind.completion_rate == 0.0 and wind.skip_rate == 0.0


BASELINE = RowStats(impressions=10_000, engaged=1_000)  # CTR 10 %


@pytest.mark.parametrize("impressions, engaged, flagged", [
    (200, 4, True),  # 2 % vs 10 %: z ~ -3.8
    (200, 17, False),  # 8.5 %: noise
    (20, 0, False),  # a dramatic dip on too few impressions
    (200, 20, False),  # on baseline
    (400, 60, False),  # above baseline
])
def test_drift_flags_a_significant_ctr_drop_and_not_noise(impressions, engaged, flagged):
    test = drift_test(RowStats(impressions=impressions, engaged=engaged), BASELINE)
    assert test.flagged is flagged
    if flagged:
        assert test.z < -3


def test_no_drift_without_a_baseline():
    assert not drift_test(RowStats(impressions=500, engaged=0), RowStats()).flagged


async def test_evaluator_joins_feedback_flags_drift_and_the_planner_reacts(redis_target, redis_keys, redis_client):
    user = "u-eval"
    req = {f"r{i}": served(f"r{i}", {"top_picks": list(range(1 + i % 5, 21 + i % 5))}) for i in range(5)}  # 100 slots
    pipe = redis_client.pipeline()
    for rid, rec in req.items():
        pipe.set(served_key(user, rid, redis_keys), json.dumps({**rec, "user_id": user}))
    pipe.hset(baseline_key(redis_keys, "top_picks"), mapping={"impressions": 50_000, "engaged": 10_000})  # 20 %
    await pipe.execute()
    # five responses displayed (the client posts an impression per response it showed), one
    # click in a hundred slots, and the user skipped what they started
    feedback = [ev(user, "impression", 5 + i, BASE_TS, request_id=f"r{i}") for i in range(5)]
    feedback += [ev(user, "click", 3, BASE_TS, request_id="r0"), ev(user, "skip", 4, BASE_TS + 1, request_id="r0"),
                 ev(user, "skip", 5, BASE_TS + 2, request_id="r1")]
    await apply_events(redis_client, redis_keys, [ev(user, "finish", 7, BASE_TS - 1000)])

    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        res = await loop.run_cycle(user, [Trigger.session_closed(feedback)], now_ms=BASE_TS + 10)

    report = res.record("evaluator").value.value
    assert report.rows["top_picks"]["impressions"] == 100
    assert report.rows["top_picks"]["ctr"] == pytest.approx(0.01)
    assert report.rows["top_picks"]["skip_rate"] == pytest.approx(0.02)
    assert report.drift["top_picks"].flagged
    assert [t.row_id for t in res.next_triggers] == ["top_picks"]
    # the flag went back to the planner in the same cycle: a second plan, exploring
    assert len(res.plans) == 2
    (step,) = res.plans[1].steps
    assert step.agent == "tools" and step.rows == ["top_picks"] and step.params == {"explore": 1}
    assert "top_picks" in res.rows_committed
    # counts reached the baseline, the drift window restarted, and memory learnt from skips
    base = await redis_client.hgetall(baseline_key(redis_keys, "top_picks"))
    assert float(base[b"impressions"]) == 50_100
    assert RowStats.from_json(await redis_client.hget(window_key(user, redis_keys), "top_picks")).impressions == 0
    facts = (await loop_memory(redis_client, redis_keys, user)).of_kind(GenreAffinity)
    assert any(f.source in ("evaluator", "memory") for f in facts)


async def loop_memory(redis_client, keys, user):
    from outerloop.memory.store import MemoryStore

    return await MemoryStore(redis_client, keys=keys).load(user)
