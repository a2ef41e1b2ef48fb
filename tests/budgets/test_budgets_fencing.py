"""Fencing tokens and fenced commits against real Redis (embedded, and the server when set)."""

from __future__ import annotations

import asyncio
import os

import pytest
from redis.crc import key_slot

from outerloop.budgets import (
    Budget,
    Enforcer,
    Fence,
    FenceRejected,
    RunContext,
    StagedWrite,
    WorkerPool,
)
from outerloop.budgets.fencing import leases_key
from outerloop.errors import UsageError
from outerloop.memory import GenreAffinity, MemoryChanges, MemoryStore
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_client,
    redis_keys,
    redis_target,
)

USER = "u-42"


def stage_then_spin(ctx: RunContext, key: str) -> None:
    ctx.stage(key, "from a spinner")
    while True:
        pass


def stage_and_return(ctx: RunContext, key: str) -> int:
    ctx.stage(key, "from a worker")
    return os.getpid()


@pytest.fixture
def fence(redis_client, redis_keys) -> Fence:
    return Fence(redis_client, keys=redis_keys)


async def test_tokens_increase_per_user(fence: Fence):
    tokens = [(await fence.acquire(USER, 1000)).token for _ in range(5)]
    assert tokens == sorted(tokens) and len(set(tokens)) == 5
    other = await fence.acquire("someone-else", 1000)
    assert other.token == 1  # per user


async def test_commit_needs_a_live_lease_and_is_single_use(fence: Fence, redis_client, redis_keys):
    key = redis_keys.rows(USER)
    lease = await fence.acquire(USER, 5000)
    n = await fence.commit(USER, lease.token, [StagedWrite(key, "{}", field="row-1")])
    assert n == 1 and await redis_client.hget(key, "row-1") == b"{}"
    with pytest.raises(FenceRejected) as exc:  # released by the commit: a replay is refused
        await fence.commit(USER, lease.token, [StagedWrite(key, "again", field="row-1")])
    assert exc.value.reason == "not_live"
    assert await redis_client.hget(key, "row-1") == b"{}"


async def test_revoked_token_is_refused(fence: Fence, redis_client, redis_keys):
    key = redis_keys.user(USER, "scratch")
    lease = await fence.acquire(USER, 5000)
    assert await fence.revoke(USER, lease.token)
    with pytest.raises(FenceRejected, match="not_live"):
        await fence.commit(USER, lease.token, [StagedWrite(key, "late")])
    assert await redis_client.exists(key) == 0


async def test_write_after_the_deadline_is_refused_even_if_not_revoked(fence: Fence, redis_client,
                                                                        redis_keys):
    key = redis_keys.user(USER, "scratch")
    lease = await fence.acquire(USER, 20)
    await asyncio.sleep(0.06)
    with pytest.raises(FenceRejected) as exc:
        await fence.commit(USER, lease.token, [StagedWrite(key, "late")])
    assert exc.value.reason == "deadline"
    assert await redis_client.exists(key) == 0
    assert not await fence.is_live(USER, lease.token)


async def test_other_users_keys_are_refused(fence: Fence, redis_keys):
    lease = await fence.acquire(USER, 5000)
    with pytest.raises(UsageError, match="not a key of user"):
        await fence.commit(USER, lease.token, [StagedWrite(redis_keys.rows("victim"), "x")])


def test_all_keys_of_a_user_share_one_cluster_slot(redis_keys):
    keys = [redis_keys.fence(USER), leases_key(USER, redis_keys), redis_keys.memory(USER),
            redis_keys.rows(USER), redis_keys.user(USER, "anything")]
    assert len({key_slot(k.encode()) for k in keys}) == 1


# -- through the enforcer ------------------------------------------------------------------------
async def test_ok_run_commits_its_staged_writes(fence: Fence, redis_client, redis_keys):
    key = redis_keys.rows(USER)

    async def planner(ctx: RunContext) -> None:
        ctx.stage(key, '{"items": [1, 2]}', field="top")
        ctx.stage(redis_keys.user(USER, "note"), "hello")

    rec = await Enforcer(fence=fence).run(planner, Budget(2000), user_id=USER)
    assert rec.outcome == "ok" and rec.writes_committed == 2
    assert await redis_client.hget(key, "top") == b'{"items": [1, 2]}'
    with pytest.raises(FenceRejected):  # the run is over: its token is dead
        await fence.commit(USER, rec.fencing_token, [StagedWrite(key, "x", field="top")])


async def test_killed_run_writes_nothing_and_its_late_write_is_refused(fence: Fence, redis_client,
                                                                       redis_keys):
    key = redis_keys.rows(USER)
    late: list[asyncio.Task] = []

    async def late_writer(ctx: RunContext) -> None:
        ctx.stage(key, "staged", field="top")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # misbehaves: fires a direct write with its token
            late.append(asyncio.create_task(
                fence.commit(USER, ctx.fencing_token, [StagedWrite(key, "late", field="top")])))
            raise

    rec = await Enforcer(fence=fence).run(late_writer, Budget(30), user_id=USER)
    assert rec.outcome == "killed" and rec.writes_committed == 0 and rec.retries == 0
    with pytest.raises(FenceRejected):
        await late[0]
    assert await redis_client.exists(key) == 0
    assert not await fence.is_live(USER, rec.fencing_token)
    with pytest.raises(FenceRejected):  # and from anywhere else, later
        await fence.commit(USER, rec.fencing_token, [StagedWrite(key, "later", field="top")])
    assert await redis_client.exists(key) == 0


async def test_over_tool_budget_drops_staged_writes(fence: Fence, redis_client, redis_keys):
    key = redis_keys.user(USER, "x")

    async def greedy(ctx: RunContext) -> None:
        ctx.stage(key, "v")
        for _ in range(3):
            ctx.count_tool_call()

    rec = await Enforcer(fence=fence).run(greedy, Budget(2000, max_tool_calls=1), user_id=USER)
    assert rec.outcome == "over_tool_budget" and rec.writes_committed == 0
    assert await redis_client.exists(key) == 0


async def test_isolated_runs_stage_through_the_parent(fence: Fence, redis_client, redis_keys):
    async with WorkerPool(size=2, preload=["tests.budgets.test_budgets_fencing"]) as pool:
        enforcer = Enforcer(fence=fence, pool=pool)
        killed_key, ok_key = redis_keys.user(USER, "killed"), redis_keys.user(USER, "ok")
        rec = await enforcer.run(stage_then_spin, Budget(50), killed_key, user_id=USER, isolated=True)
        assert rec.outcome == "killed"
        assert await redis_client.exists(killed_key) == 0
        rec = await enforcer.run(stage_and_return, Budget(3000), ok_key, user_id=USER, isolated=True)
        assert rec.outcome == "ok" and rec.writes_committed == 1
        assert await redis_client.get(ok_key) == b"from a worker"


async def test_memory_write_with_a_revoked_token_is_refused(fence: Fence, redis_client, redis_keys):
    store = MemoryStore(redis_client, keys=redis_keys)
    fact = GenreAffinity(genre="crime", score=0.4, evidence=["e1"], confidence=0.7, source="memory")
    lease = await fence.acquire(USER, 5000)
    assert await store.commit(USER, 0, MemoryChanges(upsert=(fact,)), fencing_token=lease.token) == 1
    await fence.revoke(USER, lease.token)
    with pytest.raises(FenceRejected):
        await store.commit(USER, 1, MemoryChanges(delete=(fact.key,)), fencing_token=lease.token)
    memory = await store.load(USER)
    assert memory.version == 1 and fact.key in memory.facts
