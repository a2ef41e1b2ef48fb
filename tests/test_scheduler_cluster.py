"""The daemon on a real 3-node Redis Cluster (started from the machine's ``redis-server`` on
loopback ports), with the stream sharded by user over 3 streams, so shards, the per-user Lua
scripts and the indexes all land on different nodes."""

from __future__ import annotations

import asyncio

from outerloop.contracts.keys import SchedulerKeys
from outerloop.contracts.triggers import TriggerRules
from outerloop.storage.clients import daemon_async_client
from tests.redis_cluster import LocalCluster, cluster, needs_cluster  # noqa: F401
from tests.scheduler.test_daemon_process import assert_exactly_once, stream_of_events
from tests.scheduler.test_scheduler_helpers import Env, RecordingRunner, fast_settings, make_daemon, running, wait_until

pytestmark = needs_cluster


async def test_sharded_streams_on_a_three_node_cluster(cluster: LocalCluster) -> None:  # noqa: F811
    keys = SchedulerKeys.with_prefix("cl", shards=3)
    client = daemon_async_client(url=cluster.url, cluster=True, block_ms=100)
    env = Env(target=None, prefix="cl", keys=keys, client=client)  # type: ignore[arg-type]
    events = stream_of_events(1_500, users=40, seed=3)
    try:
        await client.initialize()
        # the shards' streams live in different slots, on more than one node
        assert len({client.keyslot(s) for s in keys.streams()}) == 3
        assert len({client.get_node_from_key(s).name for s in keys.streams()}) >= 2
        for ev in events:
            await client.xadd(keys.stream_for_user(ev.user_id), {"event": ev.model_dump_json()})
        runner = RecordingRunner(client, keys=keys)
        a = make_daemon(env, runner, rules=TriggerRules(on_activity=True), settings=fast_settings())
        b = make_daemon(env, runner, rules=TriggerRules(on_activity=True), settings=fast_settings())

        async def all_read() -> bool:
            for stream in keys.streams():
                for g in await client.xinfo_groups(stream):
                    if int(g["pending"]) or int(g.get("lag") or 0):
                        return False
            return a.metrics.events_applied + b.metrics.events_applied == len(events)

        async with running(a), running(b):
            await wait_until(all_read, timeout_s=60, every_s=0.1)
            await asyncio.sleep(0.2)
        await assert_exactly_once(env, events)
        assert runner.max_overlap_per_user == 1
        assert a.metrics.cycles_started + b.metrics.cycles_started > 0
    finally:
        await client.aclose()
