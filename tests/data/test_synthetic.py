"""The synthetic streaming world: determinism, the event contract, and the behaviours the demos
rely on (continue watching, late-night thrillers, genre fatigue, episode releases)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from outerloop.data import ACTION_ID, CATALOG_USER_ID, SyntheticWorld, dataset_hash, synthetic_catalog
from outerloop.contracts.events import Event
from outerloop.data.synthetic import DARK_GENRES, DEVICES, GENRES, INTERACTION_TYPES
from outerloop.errors import UserInputError

SMALL = dict(n_users=400, n_films=300, n_series=16, seed=11)
DAYS = 30


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(**SMALL)


@pytest.fixture(scope="module")
def events(world: SyntheticWorld) -> list[dict[str, Any]]:
    return world.simulate(days=DAYS)


@pytest.fixture(scope="module")
def by_user(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["user_id"] != CATALOG_USER_ID:
            out[e["user_id"]].append(e)
    return out


def _is_dark(world: SyntheticWorld, item_id: int) -> bool:
    return any(g in DARK_GENRES for g in world.catalog.get(item_id).genres)


def _starts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plays from the beginning (not resumes)."""
    return [e for e in events if e["type"] == "play" and e["position_s"] == 0]


# --- catalog -----------------------------------------------------------------------------------


def test_catalog_has_films_and_ordered_series(world: SyntheticWorld) -> None:
    items = world.catalog.items
    films = [it for it in items if it.kind == "film"]
    episodes = [it for it in items if it.kind == "episode"]
    assert len(films) == SMALL["n_films"] and len({it.series_id for it in episodes}) == SMALL["n_series"]
    assert all(80 <= it.runtime_min <= 150 for it in films)
    assert all(20 <= it.runtime_min <= 60 for it in episodes)
    assert {"Comedy", "Drama", "Crime", "Thriller", "Horror", "Romance", "Documentary", "Animation",
            "Sci-Fi", "Action", "Family"} <= set(GENRES) == set(world.catalog.genres)
    assert all(it.tags and it.year and it.release_ts for it in items)
    per_series: dict[str, list] = defaultdict(list)
    for it in episodes:
        per_series[it.series_id].append(it)
    for eps in per_series.values():  # dense ids follow season/episode order, releases never go back
        assert [(e.season, e.episode) for e in eps] == sorted((e.season, e.episode) for e in eps)
        assert (eps[0].season, eps[0].episode) == (1, 1)
        assert all(a.item_id + 1 == b.item_id and a.release_ts < b.release_ts for a, b in zip(eps, eps[1:]))
        assert len({e.genres for e in eps}) == 1
    future = [it for it in episodes if it.release_ts >= world.start_ts_ms]
    assert future and len(future) < len(episodes)


def test_synthetic_catalog_million() -> None:
    t0 = time.perf_counter()
    catalog = synthetic_catalog(1_000_000, seed=3)
    elapsed = time.perf_counter() - t0
    assert len(catalog) == 1_000_000
    assert catalog.get(1_000_000).item_id == 1_000_000
    kinds = np.array([it.kind == "episode" for it in catalog.items])
    assert 0.3 < kinds.mean() < 0.45
    last_series = catalog.items[-1].series_id
    tail = [it for it in catalog.items[-200:] if it.series_id == last_series]
    assert [(e.season, e.episode) for e in tail] == sorted((e.season, e.episode) for e in tail)
    print(f"synthetic_catalog(1_000_000): {elapsed:.1f} s")  # informational; not asserted
    assert len(synthetic_catalog(7, seed=3)) == 7


# --- determinism and the event contract --------------------------------------------------------


def test_same_seed_same_events_other_seed_differs() -> None:
    small = dict(n_users=60, n_films=80, n_series=5)
    a = SyntheticWorld.generate(seed=1, **small).simulate(days=10)
    b = SyntheticWorld.generate(seed=1, **small).simulate(days=10)
    c = SyntheticWorld.generate(seed=2, **small).simulate(days=10)
    assert a == b and len(a) > 100
    assert a != c
    assert a[0]["event_id"].startswith("syn1-") and len({e["event_id"] for e in a}) == len(a)


def test_simulate_repeats_on_the_same_world(world: SyntheticWorld, events: list[dict[str, Any]]) -> None:
    assert world.simulate(days=DAYS) == events


def test_events_validate_and_are_time_ordered(world: SyntheticWorld, events: list[dict[str, Any]]) -> None:
    assert 10_000 < len(events)
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    end = world.start_ts_ms + DAYS * 86_400_000
    assert world.start_ts_ms <= ts[0] and ts[-1] < end
    types = {e["type"] for e in events}
    assert types == {"play", "pause", "seek", "finish", "skip", "add_to_list", "episode_release"}
    for e in events:
        Event.model_validate(e)


def test_devices_belong_to_the_user(world: SyntheticWorld, by_user: dict[str, list[dict[str, Any]]]) -> None:
    used = set()
    for uid, evs in by_user.items():
        owned = set(world.user(uid).devices)
        assert {e["device"] for e in evs} <= owned
        used |= owned
    assert used == set(DEVICES)


def test_invalid_arguments() -> None:
    with pytest.raises(UserInputError):
        SyntheticWorld.generate(n_users=0)
    with pytest.raises(UserInputError):
        SyntheticWorld.generate(n_users=5, n_films=0, n_series=0)
    with pytest.raises(UserInputError):
        SyntheticWorld.generate(n_users=5, n_films=5, n_series=0).simulate(days=0)


# --- behaviours --------------------------------------------------------------------------------


def test_episode_releases(world: SyntheticWorld, events: list[dict[str, Any]],
                          by_user: dict[str, list[dict[str, Any]]]) -> None:
    releases = [e for e in events if e["type"] == "episode_release"]
    assert releases
    for e in releases:
        item = world.catalog.get(e["item_id"])
        assert e["user_id"] == CATALOG_USER_ID and item.kind == "episode" and e["ts"] == item.release_ts
        assert e["device"] is None and e["position_s"] is None
    released_now = {e["item_id"] for e in releases}
    watched_new = 0
    for evs in by_user.values():
        for e in evs:
            if e["type"] in ("play", "add_to_list"):
                assert e["ts"] >= world.catalog.get(e["item_id"]).release_ts  # nobody watches ahead
            watched_new += e["type"] == "play" and e["item_id"] in released_now
    assert watched_new > 0  # newly released episodes do get watched


def test_series_are_watched_in_order_and_continued(world: SyntheticWorld,
                                                  by_user: dict[str, list[dict[str, Any]]]) -> None:
    followed = continued = 0
    for evs in by_user.values():
        starts = _starts(evs)
        first_seen: dict[str, list[int]] = defaultdict(list)
        for e in starts:
            item = world.catalog.get(e["item_id"])
            if item.kind == "episode" and e["item_id"] not in first_seen[item.series_id]:
                first_seen[item.series_id].append(e["item_id"])
        for ids in first_seen.values():
            assert ids == list(range(ids[0], ids[0] + len(ids)))  # never jumps ahead or back
            first = world.catalog.get(ids[0])
            # from the start, or (a fan caught up before the window) from a newly released one
            assert (first.season, first.episode) == (1, 1) or first.release_ts >= world.start_ts_ms
        for a, b in zip(starts, starts[1:]):
            if world.catalog.get(a["item_id"]).kind == "episode":
                followed += 1
                continued += b["item_id"] == a["item_id"] + 1
    assert followed > 500 and continued / followed > 0.5


def test_cut_off_titles_are_resumed(by_user: dict[str, list[dict[str, Any]]]) -> None:
    resumed = 0
    for evs in by_user.values():
        paused_at: dict[int, float] = {}
        for e in evs:
            if e["type"] == "pause":
                paused_at[e["item_id"]] = e["position_s"]
            elif e["type"] == "play" and e["position_s"] > 0:
                assert paused_at.get(e["item_id"]) == e["position_s"]  # resumes where it stopped
                resumed += 1
    assert resumed > 100


def test_late_night_dark_sessions(world: SyntheticWorld, by_user: dict[str, list[dict[str, Any]]]) -> None:
    night_share, evening_share, sessions = [], [], 0
    for uid, evs in by_user.items():
        user = world.user(uid)
        starts = _starts(evs)
        late = [e for e in starts if world.daypart(uid, e["ts"]) == "late_night"]
        evening = [e for e in starts if world.daypart(uid, e["ts"]) == "evening"]
        if user.night_dark:
            night_share += [_is_dark(world, e["item_id"]) for e in late]
            evening_share += [_is_dark(world, e["item_id"]) for e in evening]
        # a "2 AM thriller session": two dark titles started between 00:00 and 04:00 within 3 h
        small_hours = [e for e in late if world.local_hour(uid, e["ts"]) < 4 and _is_dark(world, e["item_id"])]
        sessions += any(b["ts"] - a["ts"] < 3 * 3_600_000 for a, b in zip(small_hours, small_hours[1:]))
    assert sessions >= 1
    assert len(night_share) > 200
    assert np.mean(night_share) > 0.5 and np.mean(night_share) > np.mean(evening_share) + 0.2


def test_genre_fatigue_three_skips_in_a_row(world: SyntheticWorld,
                                            by_user: dict[str, list[dict[str, Any]]]) -> None:
    """Tired users drop three titles of their genre in a row, then mostly stay away from it."""
    tired_users = [u for u in world.users if u.tired_genre]
    assert tired_users
    found, before, after = 0, [], []
    for user in tired_users:
        genre = user.tired_genre
        outcomes = [e for e in by_user.get(user.user_id, []) if e["type"] in ("finish", "skip")]
        hits = [e["type"] == "skip" and world.catalog.get(e["item_id"]).genres[0] == genre for e in outcomes]
        run_end = next((i for i in range(2, len(hits)) if hits[i - 2] and hits[i - 1] and hits[i]), None)
        if run_end is None:
            continue
        found += 1
        finished_genre = [genre in world.catalog.get(e["item_id"]).genres for e in outcomes if e["type"] == "finish"]
        n_before = sum(1 for e in outcomes[:run_end] if e["type"] == "finish")
        before += finished_genre[:n_before]
        after += finished_genre[n_before:]
    assert found >= 0.6 * len(tired_users)
    assert len(after) > 100
    assert np.mean(after) < 0.5 * np.mean(before)  # the back-off


# --- interactions --------------------------------------------------------------------------------


def test_to_interactions(world: SyntheticWorld, events: list[dict[str, Any]]) -> None:
    data = world.to_interactions(events)
    kept = [e for e in events if e["type"] in INTERACTION_TYPES]
    assert data.name == "synthetic" and data.catalog is world.catalog
    assert data.n_interactions == len(kept)
    assert [u.user_id for u in data.users] == sorted({e["user_id"] for e in kept})
    allowed = {ACTION_ID[t] for t in INTERACTION_TYPES}
    for u in data.users:
        assert np.all(np.diff(u.ts) >= 0)
        assert set(u.actions.tolist()) <= allowed
        assert u.items.min() >= 1 and u.items.max() <= len(world.catalog)
    first = data.users[0]
    mine = [e for e in kept if e["user_id"] == first.user_id]
    assert first.items.tolist() == [e["item_id"] for e in mine]
    assert first.actions.tolist() == [ACTION_ID[e["type"]] for e in mine]
    assert dataset_hash(data) == dataset_hash(world.to_interactions(world.simulate(days=DAYS)))
    with pytest.raises(UserInputError, match="not in the catalog"):
        world.to_interactions([{**kept[0], "item_id": len(world.catalog) + 1}])


def test_default_world_size() -> None:
    """The demo defaults: ~1,500 items and 100k-200k events in 30 days."""
    world = SyntheticWorld.generate()
    events = world.simulate(days=30)
    assert len(world.users) == 2000 and 1200 < len(world.catalog) < 1900
    assert 100_000 <= len(events) <= 200_000
