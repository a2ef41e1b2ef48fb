"""OuterLoop as a whole: the compiled graph's shape (no retries on agents), a full cycle through
the built-ins, tool-cache reuse between two users of one cluster, and racing cycles."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from outerloop import LoopConfig, OuterLoop, Trigger
from outerloop.agents.caches import AdaptiveClusters, KMeansClusters
from outerloop.contracts.triggers import session_triggers
from outerloop.memory.facts import GenreAffinity
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_client,
    redis_keys,
    redis_target,
)
from tests.agents.test_outer_loop_support import BASE_TS, TinyArtifacts, apply_events, episode_id, ev


def session(user: str, items: list[int], t0: int = BASE_TS) -> list:
    return [e for n, i in enumerate(items) for e in (ev(user, "play", i, t0 + 1000 * n), ev(user, "finish", i, t0 + 1000 * n + 500))]


def test_graph_is_a_compiled_stategraph_with_no_retry_on_agents():
    loop = OuterLoop(TinyArtifacts())
    nodes = loop.graph.builder.nodes
    assert set(nodes) >= {"planner", "memory", "tools", "evaluator"}
    for name in ("memory", "tools", "evaluator"):
        spec = nodes[name]
        assert spec.retry_policy is None  # kill, never retry
        assert spec.timeout is not None and spec.error_handler_node is not None
    assert type(loop.graph).__name__ == "CompiledStateGraph"


async def test_a_full_cycle_through_the_builtins(redis_target, redis_keys, redis_client):
    user = "u-full"
    events = session(user, [3, 13, episode_id(1)], BASE_TS - 3_600_000)  # a thriller night, then an episode
    await apply_events(redis_client, redis_keys, events)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        await loop.ingest(events)
        res = await loop.run_cycle(user, [Trigger.session_closed(events)], now_ms=BASE_TS)
        stored = await loop.rows(user)
        empty = await loop.run_cycle(user, [], now_ms=BASE_TS)
    assert [r.outcome for r in res.records] == ["ok"] * len(res.records)
    assert [r.agent for r in res.records] == ["planner", "memory", "tools", "tools"]
    assert set(res.rows_committed) == {"continue_watching", "top_picks"} == set(stored)
    assert res.rows_committed["continue_watching"].item_ids() == [episode_id(2)]
    seen = {3, 13, episode_id(1)}
    assert not seen & set(stored["top_picks"].item_ids())
    for row in stored.values():
        assert row.model_version == "tiny-1" and row.expires_at > BASE_TS and row.run_id
    assert empty.plan.steps == [] and empty.rows_committed == {}


def user_sample(art: TinyArtifacts, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(1)
    return art.encode([rng.choice(np.arange(1, 61), size=6, replace=False).tolist() for _ in range(n)])


async def test_two_users_of_one_cluster_share_the_vector_search(redis_target, redis_keys, redis_client):
    art = TinyArtifacts()
    cfg = LoopConfig(retrieval_pool=30, row_len=10)
    clusters = KMeansClusters.fit(user_sample(art), k=8)
    async with OuterLoop(art, redis=redis_target, keys=redis_keys, config=cfg, clusters=clusters) as loop:
        a_hist = [5, 9, 17, 23, 31]
        key_a, _ = loop.clusters.assign(art.encode([a_hist])[0])
        # a second user with a different history that falls in the same cluster
        b_hist = next(h for extra in range(1, 61) if (h := [*a_hist[1:], extra]) != a_hist
                      and loop.clusters.assign(art.encode([h])[0])[0] == key_a and extra not in a_hist)
        for user, hist in (("ua", a_hist), ("ub", b_hist)):
            evs = session(user, hist)
            await apply_events(redis_client, redis_keys, evs)
            await loop.run_cycle(user, [Trigger.session_closed(evs)], now_ms=BASE_TS + 60_000)
        stats = loop.tools.cache.stats["vector_search"]
        assert (stats.misses, stats.hits) == (1, 1)
        # quality kept: the shared pool, re-scored with B's own vector, vs B's uncached top 10
        pool = loop.tools.cache._data[("vector_search", key_a)][1]
        vb = art.encode([b_hist])[0]
        ids = np.array(pool.ids())
        cached_top = set(ids[np.argsort(-(art.item_vectors[ids] @ vb))[:10]].tolist())
        true_top = set((np.argsort(-(art.item_vectors[1:] @ vb))[:10] + 1).tolist())
        assert len(cached_top & true_top) / 10 >= 0.8
    assert loop.stats()["tool_cache_by_tool"]["vector_search"] == pytest.approx(0.5)


async def test_racing_cycles_for_one_user_both_finish_and_lose_nothing(redis_target, redis_keys, redis_client):
    user = "u-race2"
    events = session(user, [2, 12, 22, 4])
    await apply_events(redis_client, redis_keys, events)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        a, b = await asyncio.gather(
            loop.run_cycle(user, [Trigger.session_closed(events)], now_ms=BASE_TS + 60_000),
            loop.run_cycle(user, [Trigger.session_closed(events)], now_ms=BASE_TS + 60_000),
        )
        rows = await loop.rows(user)
        mem = await loop.deps.memory.load(user)
    for res in (a, b):
        assert all(r.outcome == "ok" for r in res.records), [(r.agent, r.outcome, r.error) for r in res.records]
    tokens = [r.fencing_token for r in a.records + b.records if r.fencing_token is not None]
    assert len(tokens) == len(set(tokens))  # every run had its own fencing token
    assert rows["top_picks"].run_id in {a.rows_committed["top_picks"].run_id, b.rows_committed["top_picks"].run_id}
    assert any(isinstance(f, GenreAffinity) and f.genre == "Comedy" for f in mem)


async def test_default_clusters_share_nothing_until_fitted_on_user_vectors(redis_target, redis_keys, redis_client):
    art = TinyArtifacts()
    clusters = AdaptiveClusters(k=2, min_fit=3)
    async with OuterLoop(art, redis=redis_target, keys=redis_keys, clusters=clusters) as loop:
        for n, hist in enumerate(([5, 9, 17], [5, 9, 23], [5, 9, 31], [5, 9, 33], [5, 9, 35])):
            user = f"ad{n}"
            evs = session(user, hist)
            await apply_events(redis_client, redis_keys, evs)
            await loop.run_cycle(user, [Trigger.session_closed(evs)], now_ms=BASE_TS + 60_000)
            if n < 2:
                assert clusters.fitted is None
        assert clusters.fitted is not None and len(clusters.fitted.centroids) == 2
        stats = loop.tools.cache.stats["vector_search"]
        assert stats.hits + stats.misses == 2  # only the two users after the fit asked the cache


async def test_late_night_thriller_session_gets_a_calm_short_wind_down_row(redis_target, redis_keys, redis_client):
    user = "u-night"
    events = session(user, [3, 13, 23], BASE_TS - 600_000)  # three thrillers, ending ~22:13 UTC
    await apply_events(redis_client, redis_keys, events)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        cat = loop.artifacts.catalog
        triggers = session_triggers(events, genres_of=cat.genres_of, tz_offset_min=60)
        res = await loop.run_cycle(user, triggers, now_ms=BASE_TS)
    wind = res.rows_committed["wind_down"]
    assert "late-night" in wind.reason and len(wind.items) > 0
    for i in wind.item_ids():
        it = cat.get(i)
        assert not {"Thriller", "Horror"} & set(it.genres) and it.runtime_min <= 100 and i not in (3, 13, 23)


async def test_a_release_for_a_followed_series_refreshes_what_is_up_next(redis_target, redis_keys, redis_client):
    release_at = BASE_TS + 5 * 86_400_000  # episode 6 comes out
    release = ev("__catalog__", "episode_release", episode_id(6), release_at)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys) as loop:
        up_next = {}
        for user, seen in (("u-uptodate", 5), ("u-behind", 3)):
            watched = session(user, [episode_id(n) for n in range(1, seen + 1)], BASE_TS - 86_400_000)
            await apply_events(redis_client, redis_keys, watched)
            res = await loop.run_cycle(user, [Trigger.event(release)], now_ms=release_at + 1)
            row = res.rows_committed["continue_watching"]
            assert "new episode" in row.reason
            up_next[user] = row.item_ids()[0]
        stranger = await loop.run_cycle("u-stranger", [Trigger.event(release)], now_ms=release_at + 1)
    assert up_next == {"u-uptodate": episode_id(6), "u-behind": episode_id(4)}
    assert stranger.plan.steps == []  # not following the series: nothing to refresh
