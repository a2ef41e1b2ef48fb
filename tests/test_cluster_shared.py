"""The shared structures (co-watch graph, trending counts) spread over slots on a real local Redis
Cluster (3 masters of the machine's ``redis-server``): the same events fed through the outer
loop's ingest to one server (one hash tag, as always) and to the cluster (``--shared-buckets``,
16 by default there) land on more than one master, and every co-watch and trending answer is the
same, item for item and score for score."""

from __future__ import annotations

import random
from typing import Any

from outerloop import OuterLoop
from outerloop.contracts.events import Event
from outerloop.storage.clients import RedisTarget
from outerloop.tools.builtin import CoWatchGraph, TrendingCounter
from outerloop.tools.contracts import ToolDeps
from outerloop.topology import CLUSTER_SHARED_BUCKETS, Topology
from tests.redis_cluster import LocalCluster, cluster, needs_cluster  # noqa: F401
from tests.agents.test_outer_loop_support import BASE_TS, TinyArtifacts

pytestmark = needs_cluster
HOUR = 3_600_000


def _events(n: int = 900, seed: int = 7) -> list[Event]:
    """Engagement (and some non-engagement) over 60 items, 40 users, 12 shared devices, 30 hours."""
    rng = random.Random(seed)
    types = ["play", "finish", "add_to_list", "rate", "click", "impression"]
    out = []
    for i in range(n):
        u = rng.randrange(40)
        out.append(Event(event_id=f"e{i}", user_id=f"u{u}", item_id=1 + int((rng.paretovariate(1.2) - 1) * 6) % 60,
                         type=rng.choice(types), ts=BASE_TS + i * 2 * 60_000, device=f"tv-{(u * 7) % 12}"))
    return out


async def _feed(target: Any, keys: Any, events: list[Event]) -> OuterLoop:
    loop = OuterLoop(TinyArtifacts(), redis=target, keys=keys, builtins=False, ensemble=False)
    await loop.start()
    for i in range(0, len(events), 100):  # batches, as the daemon ingests
        await loop.ingest(events[i:i + 100])
    await loop.ingest(events[:250])  # a redelivery changes nothing
    return loop


async def _answers(loop: OuterLoop, now_ms: int) -> dict[str, Any]:
    assert loop.deps is not None
    redis = loop.deps.redis
    out: dict[str, Any] = {}
    for seeds in ([1], [2, 3], [5, 1, 9, 14], [7, 7, 30], list(range(1, 21)), [59, 58, 57, 3, 2]):
        out[f"cw{seeds}"] = await loop.co_watch.neighbours(redis, seeds, k=25, per_seed=50)
    deps = ToolDeps(redis=redis, artifacts=loop.artifacts, clock_ms=lambda: now_ms)
    out["tool"] = (await loop.tools.call("co_watch", {"items": [4, 11, 23], "k": 10}, deps)).model_dump()
    for genre in (None, "Drama", "Comedy", "Thriller"):
        out[f"trend{genre}"] = await loop.trending.top(redis, 20, now_ms, genre=genre)
    return out


async def test_co_watch_and_trending_spread_over_the_masters_and_answer_as_one_server(
        cluster: LocalCluster, redis_target: RedisTarget, redis_keys: Any) -> None:  # noqa: F811
    events = _events()
    now = events[-1].ts + HOUR
    single = await _feed(redis_target, redis_keys, events)
    topology = Topology(redis_url=cluster.url, cluster=True, key_prefix="sh1")
    keys = topology.keys()
    assert keys.shared_buckets == CLUSTER_SHARED_BUCKETS  # the cluster's default
    spread = await _feed(topology.target(), keys, events)
    try:
        want, got = await _answers(single, now), await _answers(spread, now)
        assert want["cw[1]"] and want["trendNone"] and want["trendDrama"]  # the comparison compares something
        assert any(len({keys.shared_bucket(s) for s in seeds}) > 1 for seeds in ([2, 3], list(range(1, 21))))
        for name in want:
            assert got[name] == want[name], name

        # where the keys are: one server, one tag; the cluster, several slots on several masters
        client = spread.deps.redis  # type: ignore[union-attr]
        names = [k.decode() for node in client.get_primaries()
                 for k in await client.keys("sh1:*", target_nodes=node)]
        cw = [k for k in names if k.startswith("sh1:cw:{cw.")]
        trend = [k for k in names if k.startswith("sh1:trend:{tr.")]
        assert len(cw) >= 30 and len(trend) >= 10
        for group in (cw, trend):
            assert len({client.keyslot(k) for k in group}) >= 8
            assert len({client.get_node_from_key(k).name for k in group}) == 3  # every master holds some
        assert not [k for k in names if "{cw}" in k] and "sh1:trend" not in names
        single_client = single.deps.redis  # type: ignore[union-attr]
        mine = [k.decode() async for k in single_client.scan_iter(match=f"{redis_keys.prefix}:cw:*:i:*")]
        assert mine and all(f"{redis_keys.prefix}:cw:{{cw}}:i:" in k for k in mine)  # one server: as before

        # a rebase keeps every answer (each bucket rescaled with its epoch in one script)
        await spread.trending.rebase(client, now, spread.artifacts.catalog)
        again = await spread.trending.top(client, 20, now)
        assert [i for i, _ in again] == [i for i, _ in want["trendNone"]]
        for (_, a), (_, b) in zip(again, want["trendNone"]):
            assert abs(a - b) <= 1e-9 * max(1.0, abs(b))
    finally:
        await single.aclose()
        await spread.aclose()


async def test_one_bucket_on_a_cluster_keeps_the_single_tag(cluster: LocalCluster) -> None:  # noqa: F811
    topology = Topology(redis_url=cluster.url, cluster=True, key_prefix="sh2", shared_buckets=1)
    keys = topology.keys()
    graph, counter = CoWatchGraph(keys=keys), TrendingCounter(keys=keys)
    assert keys.cowatch_item(5) == "sh2:cw:{cw}:i:5" and keys.trending() == "sh2:trend"
    client = topology.target().async_client()
    try:
        events = _events(200, seed=3)
        fresh = await graph.claim(client, events)
        await graph.link(client, fresh)
        await counter.record(client, fresh, TinyArtifacts().catalog)
        assert await graph.neighbours(client, [1, 2], 5)
        before = await counter.top(client, 5, events[-1].ts)
        assert before
        assert len({client.keyslot(keys.cowatch_item(i)) for i in range(1, 61)}) == 1
        # the trending keys share one tag on a cluster, so a rebase is one single-slot script
        # (with the one-server names it was a MULTI across slots, refused by the cluster)
        catalog = TinyArtifacts().catalog
        tagged = [keys.trending_bucket_epoch(0), keys.trending_bucket(0),
                  *(keys.trending_bucket_genre(0, g) for g in catalog.genres)]
        assert len({client.keyslot(k) for k in tagged}) == 1
        await counter.rebase(client, events[-1].ts + 3_600_000, catalog)
        after = await counter.top(client, 5, events[-1].ts)
        assert [i for i, _ in after] == [i for i, _ in before]
        for (_, a), (_, b) in zip(after, before):
            assert abs(a - b) <= 1e-9 * max(1.0, abs(b))
    finally:
        await client.aclose()
