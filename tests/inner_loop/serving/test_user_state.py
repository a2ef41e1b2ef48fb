"""User state in a real Redis (embedded, and the machine's server when configured): which
events change what, idempotency, the cap, atomic batches, the one-round-trip read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from outerloop.data.schema import ACTION_ID
from outerloop.inner_loop.serving.user_state import (
    UserStore,
    WriteBehind,
    event_mode,
    parse_history,
    seed_history,
)
from tests.redis_fixtures import pytest_generate_tests, redis_client, redis_keys, redis_target  # noqa: F401
from tests.api.test_api_fixtures import event_obj


def test_event_modes_are_the_documented_table() -> None:
    assert {t: event_mode(t) for t in ("finish", "rate", "play", "click", "add_to_list", "skip",
                                       "impression", "search", "pause", "seek", "episode_release")} == {
        "finish": "hs", "rate": "hs", "play": "h", "click": "h", "add_to_list": "h", "skip": "hs",
        "impression": "-", "search": "-", "pause": "-", "seek": "-", "episode_release": "-",
    }


def test_parse_history_tolerates_garbage() -> None:
    items, actions, ts = parse_history(b"3:3:100,4:6:200")
    assert items.tolist() == [3, 4] and actions.tolist() == [3, 6] and ts.tolist() == [100, 200]
    assert parse_history(b"")[0].shape == (0,)
    assert parse_history(b"3:x:1")[0].shape == (0,)  # not ours: read as empty, never raise


async def test_apply_changes_history_seen_and_version(redis_client, redis_keys) -> None:  # noqa: F811
    store = UserStore(redis_client, history_cap=200, keys=redis_keys)
    res = await store.apply([event_obj("u1", 5, "play", ts=1_700_000_000_000),
                             event_obj("u1", 5, "finish", ts=1_700_000_001_000),
                             event_obj("u1", 7, "skip", ts=1_700_000_002_000),
                             event_obj("u1", 9, "impression", ts=1_700_000_003_000)])
    assert (res.accepted, res.applied, res.versions) == (4, 4, {"u1": 1})
    state = await store.read("u1", 200)
    assert state.items.tolist() == [5, 5, 7]
    assert state.actions.tolist() == [ACTION_ID["play"], ACTION_ID["finish"], ACTION_ID["skip"]]
    assert sorted(state.seen.tolist()) == [5, 7]  # finished and skipped; the impression changes nothing
    assert state.version == 1
    # every event reaches the stream, as Event JSON
    entries = await redis_client.xrange(redis_keys.events_stream)
    assert [json.loads(f[b"event"])["type"] for _, f in entries] == ["play", "finish", "skip", "impression"]


async def test_apply_is_idempotent_by_event_id(redis_client, redis_keys) -> None:  # noqa: F811
    store = UserStore(redis_client, history_cap=200, keys=redis_keys)
    ev = event_obj("u2", 11, "finish", event_id="e-1")
    first = await store.apply([ev])
    again = await store.apply([ev])
    assert (first.applied, again.applied, again.duplicates) == (1, 0, 1)
    assert again.versions == {"u2": 1}  # unchanged
    assert (await store.read("u2", 200)).items.tolist() == [11]


async def test_history_is_capped_and_batches_span_users(redis_client, redis_keys) -> None:  # noqa: F811
    store = UserStore(redis_client, history_cap=5, keys=redis_keys)
    evs = [event_obj("u3", i, "play", ts=1_700_000_000_000 + i) for i in range(1, 9)]
    evs.append(event_obj("u4", 2, "click"))
    res = await store.apply(evs)
    assert res.versions == {"u3": 1, "u4": 1}
    assert (await store.read("u3", 200)).items.tolist() == [4, 5, 6, 7, 8]
    assert (await store.read("u3", 2)).items.tolist() == [7, 8]  # the read asks for the last n


async def test_events_are_applied_in_event_time_order(redis_client, redis_keys) -> None:  # noqa: F811
    store = UserStore(redis_client, history_cap=50, keys=redis_keys)
    await store.apply([event_obj("u5", 2, "play", ts=1_700_000_000_200), event_obj("u5", 1, "play", ts=1_700_000_000_100)])
    assert (await store.read("u5", 50)).items.tolist() == [1, 2]


async def test_read_of_unknown_user_is_empty(redis_client, redis_keys) -> None:  # noqa: F811
    state = await UserStore(redis_client, history_cap=5, keys=redis_keys).read("nobody", 200)
    assert state.is_new and state.version == 0 and state.seen.shape == (0,) and state.rows == {}


async def test_seed_history_and_write_behind(redis_target, redis_client, redis_keys) -> None:  # noqa: F811
    sync = redis_target.sync_client()
    try:
        seed_history(sync, "u6", range(1, 301), history_cap=200, keys=redis_keys)
        seed_history(sync, "u6", range(1, 4), history_cap=200, keys=redis_keys)
    finally:
        sync.close()
    state = await UserStore(redis_client, history_cap=200, keys=redis_keys).read("u6", 200)
    assert state.items.tolist() == [1, 2, 3] and state.version == 2  # re-seeding bumps, never resets
    assert np.array_equal(np.sort(state.seen), [1, 2, 3])

    writer = WriteBehind(redis_client, delay_s=0.001)
    writer.set(redis_keys.user("u6", "probe"), b"x", ttl_s=60)
    await writer.aclose()
    assert await redis_client.get(redis_keys.user("u6", "probe")) == b"x"
    assert 0 < await redis_client.ttl(redis_keys.user("u6", "probe")) <= 60


@pytest.mark.parametrize("bad", [b"not json", b"[1, 2"])
def test_rows_of_garbage_are_skipped(bad: bytes) -> None:
    from outerloop.contracts.rows import live_rows

    rows, skipped = live_rows({"r": bad}, now_ms=0, n_items=10, limit=5)
    assert rows == [] and skipped == 1


def test_a_released_embedded_server_exits_without_a_snapshot(tmp_path) -> None:
    """``release_embedded(save=False)`` (replays and benchmarks in temporary directories): the
    server process exits at once and writes no snapshot; releasing again is a no-op."""
    import psutil

    from outerloop.storage.embedded import _EMBEDDED, release_embedded
    from outerloop.storage.clients import RedisTarget

    target = RedisTarget(embedded_dir=tmp_path / "redis")
    client = target.sync_client()
    client.set("k", "v")
    pid = _EMBEDDED[(tmp_path / "redis").resolve()].pid
    client.close()
    assert psutil.pid_exists(pid)
    release_embedded(target.embedded_dir, save=False)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (tmp_path / "redis" / "outerloop.rdb").exists()
    assert (tmp_path / "redis").resolve() not in _EMBEDDED
    release_embedded(target.embedded_dir, save=False)
