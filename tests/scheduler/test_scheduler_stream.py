"""The consumer group against real Redis: dead letters, XAUTOCLAIM from a dead consumer, the
delivery limit, resuming one's own pending entries, and a stop that leaves the rest pending."""

from __future__ import annotations

from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.contracts.stream import encode_event
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.scheduler.test_scheduler_helpers import (  # noqa: F401
    T0, Env, RecordingRunner, counter, env, event, fast_settings, group_done, make_daemon, running,
    wait_until, xadd_all,
)


async def make_group(env: Env) -> None:
    await env.client.xgroup_create(env.keys.stream(), env.keys.group, id="0", mkstream=True)


async def test_malformed_entries_are_dead_lettered_with_the_reason(env: Env) -> None:
    stream = env.keys.stream()
    good = [event("u1", T0 + i) for i in range(3)]
    await xadd_all(env.client, stream, good[:2])
    await env.client.xadd(stream, {"event": "{not json"})
    await env.client.xadd(stream, {"event": '{"user_id": "u1", "type": "play", "ts": 1, "item_id": 0}'})
    await env.client.xadd(stream, {"payload": "x"})
    await xadd_all(env.client, stream, good[2:])
    daemon = make_daemon(env, RecordingRunner(env.client, keys=env.keys))
    async with running(daemon):
        await wait_until(lambda: group_done(env.client, env.keys, 6))
    assert await counter(env, "u1") == 3
    dead = await env.client.xrange(env.keys.dead_letter)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 3 and daemon.metrics.dead_letters == 3
    assert reasons[0].startswith("event: not valid JSON")
    assert "item_id: Input should be greater than or equal to 1" in reasons[1]
    assert reasons[2] == "missing field 'event' (entry has: payload)"
    assert dead[0][1][b"raw"] == b"event={not json"


async def test_entries_of_a_dead_consumer_are_claimed_and_applied_once(env: Env) -> None:
    stream = env.keys.stream()
    evs = [event(f"u{i % 4}", T0 + i * 1000) for i in range(40)]
    await xadd_all(env.client, stream, evs)
    await make_group(env)
    # a consumer that read 25 entries and died before acknowledging them
    await env.client.xreadgroup(env.keys.group, "ghost", {stream: ">"}, count=25)
    daemon = make_daemon(env, RecordingRunner(env.client, keys=env.keys), settings=fast_settings(claim_min_idle_ms=300))
    async with running(daemon):
        await wait_until(lambda: group_done(env.client, env.keys, 40))
    assert daemon.metrics.entries_claimed == 25
    assert sum([await counter(env, f"u{i}") for i in range(4)]) == 40
    assert daemon.metrics.events_duplicate == 0


async def test_an_entry_delivered_too_often_is_dead_lettered(env: Env) -> None:
    stream = env.keys.stream()
    [entry_id] = [await env.client.xadd(stream, encode_event(event("p", T0)))]
    await make_group(env)
    await env.client.xreadgroup(env.keys.group, "ghost", {stream: ">"})
    for _ in range(2):  # two more consumers took it and died too
        await env.client.xclaim(stream, env.keys.group, "ghost", min_idle_time=0, message_ids=[entry_id])
    daemon = make_daemon(env, RecordingRunner(env.client, keys=env.keys),
                         settings=fast_settings(claim_min_idle_ms=100, max_deliveries=3))
    async with running(daemon):
        await wait_until(lambda: group_done(env.client, env.keys, 1))
    [(_, fields)] = await env.client.xrange(env.keys.dead_letter)
    assert fields[b"reason"].startswith(b"not acknowledged after 3 deliveries")
    assert fields[b"deliveries"] == b"4"
    assert await counter(env, "p") == 0


async def test_a_restarted_consumer_resumes_its_own_pending_entries_at_once(env: Env) -> None:
    stream = env.keys.stream()
    await xadd_all(env.client, stream, [event("r", T0 + i) for i in range(10)])
    await make_group(env)
    settings = fast_settings(claim_min_idle_ms=600_000)  # XAUTOCLAIM would not take them
    await env.client.xreadgroup(env.keys.group, settings.consumer, {stream: ">"}, count=6)
    daemon = make_daemon(env, RecordingRunner(env.client, keys=env.keys), settings=settings)
    async with running(daemon):
        await wait_until(lambda: group_done(env.client, env.keys, 10), timeout_s=5)
    assert await counter(env, "r") == 10


class StopAfterFirstChunk(DaemonMetrics):
    """Asks the daemon to stop as soon as one chunk is applied (a SIGTERM mid-batch)."""

    daemon = None

    def record_applied(self, applied: int, duplicates: int, late: int) -> None:
        super().record_applied(applied, duplicates, late)
        self.daemon.stop()


async def test_stop_leaves_unapplied_entries_pending_for_another_consumer(env: Env) -> None:
    stream = env.keys.stream()
    evs = [event(f"s{i % 7}", T0 + i * 1000) for i in range(300)]
    await xadd_all(env.client, stream, evs)
    metrics = StopAfterFirstChunk()
    first = make_daemon(env, RecordingRunner(env.client, keys=env.keys), metrics=metrics,
                        settings=fast_settings(read_count=300, apply_chunk=50))
    metrics.daemon = first
    async with running(first):
        await wait_until(lambda: _true(first.stopping))
    pending = await env.client.xpending(stream, env.keys.group)
    assert first.metrics.events_applied == 50
    assert pending["pending"] == 250  # read, not applied, not acknowledged: left for others
    second = make_daemon(env, RecordingRunner(env.client, keys=env.keys), settings=fast_settings(claim_min_idle_ms=100))
    async with running(second):
        await wait_until(lambda: group_done(env.client, env.keys, 300))
    assert second.metrics.entries_claimed == 250
    assert sum([await counter(env, f"s{i}") for i in range(7)]) == 300


async def _true(value: bool) -> bool:
    return value


async def test_lag_counts_entries_the_group_has_not_read(env: Env) -> None:
    stream = env.keys.stream()
    await xadd_all(env.client, stream, [event("l", T0 + i) for i in range(30)])
    await make_group(env)
    await env.client.xreadgroup(env.keys.group, "ghost", {stream: ">"}, count=10)
    daemon = make_daemon(env, RecordingRunner(env.client, keys=env.keys))
    lag, pending = await daemon.consumer.measure_lag()
    assert (lag, pending) == (20, 10)


async def test_consumers_gone_for_long_and_owning_nothing_are_forgotten(env: Env) -> None:
    await make_group(env)
    await env.client.xgroup_createconsumer(env.keys.stream(), env.keys.group, "gone")
    await env.client.xadd(env.keys.stream(), encode_event(event("owner", T0)))
    await env.client.xreadgroup(env.keys.group, "holder", {env.keys.stream(): ">"})  # owns one entry
    daemon = make_daemon(env, RecordingRunner(env.client, keys=env.keys),
                         settings=fast_settings(consumer_prune_idle_ms=0, claim_min_idle_ms=600_000))
    async with running(daemon):
        async def pruned() -> bool:
            names = {c["name"] for c in await env.client.xinfo_consumers(env.keys.stream(), env.keys.group)}
            return b"gone" not in names

        await wait_until(pruned, timeout_s=5)
    names = {c["name"] for c in await env.client.xinfo_consumers(env.keys.stream(), env.keys.group)}
    assert b"holder" in names  # still owns an entry


async def test_only_entries_every_group_acknowledged_are_trimmed(env: Env) -> None:
    stream = env.keys.stream()
    await make_group(env)
    await env.client.xgroup_create(stream, "other-readers", id="0")
    ids = [await env.client.xadd(stream, encode_event(event("t", T0 + i))) for i in range(300)]
    daemon = make_daemon(env, RecordingRunner(env.client, keys=env.keys))
    await daemon.consumer.prepare()
    await daemon.consumer.read(0)  # our group read and acknowledged all 300
    await env.client.xreadgroup("other-readers", "x", {stream: ">"}, count=120)  # 120 read, none acked
    await daemon.consumer.trim_consumed(0)
    assert (await env.client.xrange(stream, count=1))[0][0] == ids[0]  # the other group holds them
    await env.client.xack(stream, "other-readers", *ids[:100])
    await daemon.consumer.trim_consumed(0)
    remaining = [i for i, _ in await env.client.xrange(stream)]
    assert remaining[-1] == ids[-1] and ids[100] in remaining  # never past the oldest unacknowledged
    assert len(remaining) < 300  # whole stream nodes below it went (approximate trimming)
