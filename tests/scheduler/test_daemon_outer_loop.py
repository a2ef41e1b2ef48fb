"""The daemon driving the real outer loop (built-in planner and agents on tiny artifacts):
events in, coalesced triggers mapped to the agents' contract, cycles with run records and rows
out, and the loop's co-watch graph fed once per event."""

from __future__ import annotations

from outerloop.agents.loop import OuterLoop
from outerloop.scheduler.dispatch import CycleOutcome
from outerloop.scheduler.runners import OuterLoopRunner
from outerloop.scheduler.triggers import CatalogLookup, PendingTrigger
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.agents.test_outer_loop_support import BASE_TS, TinyArtifacts, apply_events, episode_id, ev, tiny_catalog
from tests.scheduler.test_scheduler_helpers import (  # noqa: F401
    Env, env, fast_settings, group_done, make_daemon, running, wait_until, xadd_all,
)


class Recorded(OuterLoopRunner):
    """The adapter, remembering what each cycle got and returned."""

    def __init__(self, loop: OuterLoop, client, keys) -> None:
        super().__init__(loop, client, keys)
        self.seen: list[tuple[str, list[PendingTrigger], CycleOutcome]] = []

    async def __call__(self, user_id, triggers):
        outcome = await super().__call__(user_id, triggers)
        self.seen.append((user_id, list(triggers), outcome))
        return outcome


async def test_daemon_runs_outer_loop_cycles_from_events(env: Env) -> None:
    events = [ev("viewer", "play", episode_id(1), BASE_TS), ev("viewer", "finish", episode_id(1), BASE_TS + 60_000),
              ev("viewer", "play", 3, BASE_TS + 120_000), ev("viewer", "finish", 3, BASE_TS + 180_000)]
    await apply_events(env.client, env.keys.base, events)  # what the API does before the daemon sees them
    loop = OuterLoop(TinyArtifacts(), redis=env.client, keys=env.keys.base)
    runner = Recorded(loop, env.client, env.keys)
    daemon = make_daemon(env, runner, items=CatalogLookup(tiny_catalog()), settings=fast_settings(cycle_timeout_s=20))
    daemon.consumer.sink = runner.ingest
    try:
        async with running(daemon):
            await xadd_all(env.client, env.keys.stream(), events)
            await wait_until(lambda: group_done(env.client, env.keys, len(events)), timeout_s=20)
            await wait_until(lambda: _seen_all(runner, {e.event_id for e in events if e.type == "finish"}),
                             timeout_s=30)
    finally:
        await loop.aclose()
    statuses = {outcome.status for _, _, outcome in runner.seen}
    assert statuses <= {"ok", "killed"} and runner.seen
    assert loop.cycles == len(runner.seen)
    assert {t.name for _, ts, _ in runner.seen for t in ts} >= {"title_finished"}
    assert loop.accounting.summary()  # every agent run was recorded
    # the co-watch graph got the events exactly once (idempotent per event in the loop)
    assert await loop.ingest(events) == 0


async def _seen_all(runner: Recorded, ids: set[str]) -> bool:
    seen = {i for _, ts, _ in runner.seen for t in ts for i in t.event_ids}
    return ids <= seen
