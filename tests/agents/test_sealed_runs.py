"""Nothing a killed run wrote is committed, for every built-in agent: each is run on a real Redis
with a user state that makes it write (rows; facts; the evaluator's drift window, baseline
counters and genre nudges) and killed at a random point of its run, two ways:

- Redis stalls right after the run's k-th command (every k the run issues, in turn): whatever
  that command did has reached Redis, and the run is killed at its deadline while it waits (or
  fails first, when the stalled command was a tool's and the tool's own timeout is shorter);
- a budget drawn at random between almost nothing and the run's full time (before, between or
  after its tool calls, reads and staged writes, or during its commit).

Every key of the namespace is compared before and after: a killed run leaves Redis exactly as it
was (its fencing token aside); an unkilled one wrote what it staged, all of it."""

from __future__ import annotations

import json
import random
from typing import Any

import asyncio
import contextlib
from collections.abc import Iterator

import redis.asyncio.client as aioclient

from outerloop import Budget, OuterLoop
from outerloop.agents.sdk import run_agent
from outerloop.contracts.keys import served_key
from outerloop.contracts.plans import PlanStep
from outerloop.contracts.triggers import Trigger
from tests.agents.test_outer_loop_support import BASE_TS, TinyArtifacts, apply_events, episode_id, ev

CRIME = [1, 11, 21, 31]
COMEDY = [2, 12, 22, 32]
TRIALS = 14


async def snapshot(redis: Any, prefix: str, fence_keys: set[str]) -> dict[str, Any]:
    """Every key of the namespace with its value (the run's fencing keys left out)."""
    out: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        if key in fence_keys:
            continue
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out[key] = await redis.get(key)
        elif kind == "hash":
            out[key] = await redis.hgetall(key)
        elif kind == "list":
            out[key] = await redis.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = await redis.smembers(key)
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = await redis.xlen(key)
    return out


async def seed(redis: Any, keys: Any, user: str) -> list[Trigger]:
    """A user whose cycle makes every built-in agent write: three crime titles skipped in a row
    (a back-off), finished comedies and an episode (affinity, continue watching), and feedback
    on a served response (the evaluator's join)."""
    events = [ev(user, "play", episode_id(1), BASE_TS), ev(user, "finish", episode_id(1), BASE_TS + 60_000)]
    for n, i in enumerate(COMEDY[:3]):
        events += [ev(user, "play", i, BASE_TS + 100_000 * (n + 1)), ev(user, "finish", i, BASE_TS + 100_000 * (n + 1) + 50)]
    for n, i in enumerate(CRIME[:3]):
        events += [ev(user, "play", i, BASE_TS + 1_000_000 + 1000 * n),
                   ev(user, "skip", i, BASE_TS + 1_000_000 + 1000 * n + 50)]
    await apply_events(redis, keys, events)
    served = {"rows": [{"row_id": "top_picks", "items": [[i, 1.0] for i in (3, 13, 23, 5, 15, 25, 42, 43)]}]}
    await redis.set(served_key(user, "req-1", keys), json.dumps(served))
    feedback = [ev(user, "impression", i, BASE_TS + 2_000_000, request_id="req-1") for i in (3, 13, 23)]
    feedback += [ev(user, "finish", 13, BASE_TS + 2_000_100, request_id="req-1"),
                 ev(user, "skip", 25, BASE_TS + 2_000_200, request_id="req-1")]
    return [Trigger.session_closed(events), *(Trigger.event(e) for e in feedback)]


class Stall:
    """Counts the Redis commands (and pipelines) issued while armed, and stalls for ``stall_s``
    right after the ``at``-th one returned."""

    def __init__(self) -> None:
        self.count = 0
        self.at: int | None = None
        self.stall_s = 0.0
        self.armed = False

    async def after(self) -> None:
        if self.armed:
            self.count += 1
            if self.count == self.at:
                await asyncio.sleep(self.stall_s)

    @contextlib.contextmanager
    def installed(self) -> Iterator["Stall"]:
        command, pipeline = aioclient.Redis.execute_command, aioclient.Pipeline.execute
        stall = self

        async def execute_command(client: Any, *args: Any, **kwargs: Any) -> Any:
            out = await command(client, *args, **kwargs)
            await stall.after()
            return out

        async def execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            out = await pipeline(pipe, *args, **kwargs)
            await stall.after()
            return out

        aioclient.Redis.execute_command, aioclient.Pipeline.execute = execute_command, execute
        try:
            yield self
        finally:
            aioclient.Redis.execute_command, aioclient.Pipeline.execute = command, pipeline


STEPS = {
    "evaluator": PlanStep(agent="evaluator", rows=[], reason="feedback"),
    "memory": PlanStep(agent="memory", rows=[], reason="session closed"),
    "tools": PlanStep(agent="tools", rows=["top_picks", "wind_down", "continue_watching"], reason="refresh"),
}


async def test_each_builtin_agent_killed_at_a_random_point_leaves_nothing(redis_target, redis_keys, redis_client):
    rng = random.Random(15)
    now = BASE_TS + 3_000_000
    killed: dict[str, list[str]] = {name: [] for name in STEPS}
    stall = Stall()
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        deps = loop.deps
        n = 0

        async def one(name: str, budget_ms: float, stall_at: int | None = None) -> tuple[Any, dict, dict]:
            nonlocal n
            n += 1
            user = f"u-kill-{n}"
            triggers = await seed(redis_client, redis_keys, user)
            scope = await loop.read_scope(user, triggers, now)
            fence_keys = {redis_keys.fence(user), redis_keys.fence_leases(user)}
            before = await snapshot(redis_client, redis_keys.prefix, fence_keys)
            spec = deps.agents.get(name)
            stall.count, stall.at, stall.stall_s, stall.armed = 0, stall_at, budget_ms / 1000 + 0.05, True
            try:
                rec = await deps.enforcer.run(run_agent, Budget(latency_ms=budget_ms), spec, STEPS[name], scope,
                                              deps, agent=name, user_id=user)
            finally:
                stall.armed = False
            after = await snapshot(redis_client, redis_keys.prefix, fence_keys)
            return rec, before, after

        def check(name: str, how: str, rec: Any, before: dict, after: dict) -> None:
            if rec.outcome != "ok":  # killed, or failed (a stalled tool call times out): nothing committed
                killed[name].append(how)
                changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                assert not changed, f"{name} {rec.outcome} ({how}) left {changed} in Redis"
                assert rec.writes_committed == 0
            else:
                assert after != before, f"{name} ran ({how}) and committed nothing"

        with stall.installed():
            for name in STEPS:
                budget_ms = deps.agents.get(name).budget.latency_ms
                # a warm, unkilled run: what it writes, how long it takes, how many commands it issues
                full = []
                for _ in range(3):
                    rec, before, after = await one(name, 2_000.0)
                    full.append(rec.elapsed_ms)  # the run and its commit
                    commands = stall.count
                    assert rec.outcome == "ok", rec
                    assert after != before and rec.writes_committed > 0, f"{name} wrote nothing: the test would prove nothing"
                if name == "evaluator":  # the counters over every user are among its writes
                    changed = {k for k in after if after.get(k) != before.get(k)}
                    assert any(":eval:base:" in k for k in changed) and any("eval_window" in k for k in changed)
                    assert any(k.endswith(":mem") for k in changed)  # its genre nudge
                # 1. Redis stalls after each of the run's commands in turn (the first is the fencing token)
                for k in range(2, commands + 1):
                    rec, before, after = await one(name, budget_ms, stall_at=k)
                    check(name, f"stalled after command {k} of {commands}", rec, before, after)
                # 2. budgets drawn at random up to its full run time
                run_ms = sorted(full)[1]
                for _ in range(TRIALS):
                    budget = rng.uniform(0.02, 1.1) * run_ms
                    rec, before, after = await one(name, budget)
                    check(name, f"budget {budget:.2f} ms of {run_ms:.2f}", rec, before, after)
    for name, hows in killed.items():
        # the memory agent issues no command of its own before its commit (it decides on the
        # cycle's snapshot), so only the other two can stall mid-run
        if name != "memory":
            assert sum(h.startswith("stalled") for h in hows) >= 1, f"{name}: never stopped mid-run ({hows})"
        assert sum(h.startswith("budget") for h in hows) >= 2, f"{name}: too few budget kills ({hows})"
