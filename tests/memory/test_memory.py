"""Memory facts (schema), the durable store (CAS), the process cache and run scratch."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from outerloop.errors import UsageError
from outerloop.memory import (
    ContinueWatching,
    GenreAffinity,
    GenreBackoff,
    InvalidFact,
    MemoryCache,
    MemoryChanges,
    MemoryScratch,
    MemoryStore,
    RuntimePreference,
    UserMemory,
    VersionConflict,
    parse_fact,
)
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_client,
    redis_keys,
    redis_target,
)

USER = "u-7"
SOON = datetime(2031, 1, 1, tzinfo=UTC)


def backoff(genre: str = "crime", confidence: float = 0.8) -> GenreBackoff:
    return GenreBackoff(genre=genre, until=SOON, evidence=["ev-1", "ev-2", "ev-3"],
                        confidence=confidence, source="memory")


def affinity(genre: str, score: float, source: str = "memory") -> GenreAffinity:
    return GenreAffinity(genre=genre, score=score, evidence="watched a lot", confidence=0.6,
                         source=source)


@pytest.fixture
def store(redis_client, redis_keys) -> MemoryStore:
    return MemoryStore(redis_client, keys=redis_keys)


# -- schema --------------------------------------------------------------------------------------
def test_every_fact_kind_round_trips_through_json():
    facts = [
        backoff(),
        affinity("comedy", -0.3),
        RuntimePreference(daypart="weekday_night", minutes=45,
                          evidence="45-minute episodes on weekday nights", confidence=0.9,
                          source="memory"),
        ContinueWatching(series_id="s-12", next_item_id=881, next_episode=4, evidence=["ev-9"],
                         confidence=1.0, source="planner"),
    ]
    for fact in facts:
        again = parse_fact(fact.model_dump_json())
        assert again == fact and type(again) is type(fact)
    assert len({f.key for f in facts}) == 4


@pytest.mark.parametrize("bad, field", [
    ({"confidence": 1.5}, "confidence"),
    ({"confidence": -0.1}, "confidence"),
    ({"until": "2031-01-01T00:00:00"}, "until"),  # naive datetime: ambiguous
    ({"genre": ""}, "genre"),
    ({"evidence": []}, "evidence"),
    ({"source": None}, "source"),
    ({"surprise": 1}, "surprise"),  # unknown fields are rejected, not dropped
])
def test_bad_facts_are_rejected_naming_the_field(bad, field):
    data = {"kind": "genre_backoff", "genre": "crime", "until": "2031-01-01T00:00:00Z",
            "evidence": ["ev-1"], "confidence": 0.5, "source": "memory", **bad}
    with pytest.raises(InvalidFact) as exc:
        parse_fact(data)
    assert f"genre_backoff.{field}" in str(exc.value)


def test_unknown_kind_and_direct_construction_errors_name_the_field():
    with pytest.raises(InvalidFact, match="kind"):
        parse_fact({"kind": "mood", "evidence": "x", "confidence": 0.5, "source": "m"})
    with pytest.raises(ValidationError, match="minutes"):
        RuntimePreference(daypart="weekday_night", minutes=0, evidence="x", confidence=0.5,
                          source="m")
    with pytest.raises(ValidationError, match="daypart"):
        RuntimePreference(daypart="lunch", minutes=30, evidence="x", confidence=0.5, source="m")
    with pytest.raises(ValidationError, match="score"):
        affinity("drama", float("nan"))


# -- durable store -------------------------------------------------------------------------------
async def test_empty_memory_is_version_zero(store: MemoryStore):
    memory = await store.load(USER)
    assert memory.version == 0 and len(memory) == 0
    assert await store.version(USER) == 0


async def test_commit_stamps_versions_and_applies_deltas(store: MemoryStore):
    v1 = await store.commit(USER, 0, MemoryChanges(upsert=(backoff(), affinity("comedy", 0.5))))
    assert v1 == 1
    v2 = await store.commit(USER, 1, MemoryChanges(upsert=(affinity("comedy", 0.9),),
                                                   delete=(backoff().key,)))
    memory = await store.load(USER)
    assert (v2, memory.version) == (2, 2)
    assert list(memory.facts) == ["genre_affinity:comedy"]
    fact = memory.get("genre_affinity:comedy")
    assert isinstance(fact, GenreAffinity) and fact.score == 0.9 and fact.version == 2
    assert memory.of_kind(GenreBackoff) == []


async def test_commit_with_a_list_replaces_the_memory(store: MemoryStore):
    await store.commit(USER, 0, MemoryChanges(upsert=(backoff("crime"), backoff("horror"))))
    await store.commit(USER, 1, [affinity("comedy", 0.2)])
    memory = await store.load(USER)
    assert list(memory.facts) == ["genre_affinity:comedy"] and memory.version == 2


async def test_cas_loser_gets_version_conflict(store: MemoryStore):
    await store.commit(USER, 0, MemoryChanges(upsert=(affinity("drama", 0.1),)))
    a = await store.load(USER)
    b = await store.load(USER)  # both agents read version 1
    assert await store.commit(USER, a.version, MemoryChanges(upsert=(affinity("drama", 0.5, "a"),))) == 2
    with pytest.raises(VersionConflict) as exc:
        await store.commit(USER, b.version, MemoryChanges(upsert=(affinity("drama", 0.7, "b"),)))
    assert (exc.value.expected, exc.value.actual) == (1, 2)
    fact = (await store.load(USER)).get("genre_affinity:drama")
    assert fact.source == "a" and fact.score == 0.5  # the loser wrote nothing


async def test_update_with_retry_rereads_and_redecides(store: MemoryStore, redis_client, redis_keys):
    await store.commit(USER, 0, MemoryChanges(upsert=(affinity("drama", 1.0),)))
    rival = MemoryStore(redis_client, keys=redis_keys)
    seen_versions: list[int] = []

    async def decide(memory: UserMemory) -> MemoryChanges:
        seen_versions.append(memory.version)
        if len(seen_versions) == 1:  # another agent commits between our read and our write
            current = memory.get("genre_affinity:drama")
            await rival.commit(USER, memory.version,
                               MemoryChanges(upsert=(affinity("drama", current.score + 10, "rival"),)))
        current = memory.get("genre_affinity:drama")
        return MemoryChanges(upsert=(affinity("drama", current.score + 1),))

    result = await store.update_with_retry(USER, decide)
    assert result.attempts == 2 and result.changed and result.version == 3
    assert seen_versions == [1, 2]
    assert (await store.load(USER)).get("genre_affinity:drama").score == 12.0  # 1 + 10 + 1


async def test_update_with_retry_gives_up_after_max_attempts(store: MemoryStore):
    async def always_loses(memory: UserMemory) -> MemoryChanges:
        await store.commit(USER, memory.version, MemoryChanges(upsert=(affinity("x", 0.0, "rival"),)))
        return MemoryChanges(upsert=(affinity("x", 1.0),))

    with pytest.raises(VersionConflict):
        await store.update_with_retry(USER, always_loses, max_attempts=3)


async def test_nothing_to_decide_writes_nothing(store: MemoryStore):
    result = await store.update_with_retry(USER, lambda memory: None)
    assert (result.changed, result.version, result.attempts) == (False, 0, 1)
    assert await store.version(USER) == 0


async def test_commit_misuse(store: MemoryStore):
    with pytest.raises(UsageError, match="two facts"):
        await store.commit(USER, 0, MemoryChanges(upsert=(backoff(), backoff(confidence=0.1))))
    with pytest.raises(InvalidFact):
        await store.commit(USER, 0, MemoryChanges(upsert=({"kind": "genre_backoff"},)))  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        await store.commit(USER, 0, "not facts")  # type: ignore[arg-type]
    assert await store.version(USER) == 0


async def test_corrupt_stored_fact_is_reported_with_its_field(store: MemoryStore, redis_client,
                                                              redis_keys):
    await redis_client.hset(redis_keys.memory(USER), mapping={"_v": 1, "genre_backoff:crime": "{}"})
    with pytest.raises(InvalidFact, match="genre_backoff:crime"):
        await store.load(USER)


# -- process cache -------------------------------------------------------------------------------
async def test_cache_serves_by_version_and_refetches_after_another_writer(
        store: MemoryStore, redis_client, redis_keys):
    await store.commit(USER, 0, MemoryChanges(upsert=(affinity("drama", 0.1),)))
    cache = MemoryCache(store)
    first = await cache.get(USER)
    again = await cache.get(USER)
    assert again is first and (cache.stats.hits, cache.stats.refetches) == (1, 1)

    other_process = MemoryStore(redis_client, keys=redis_keys)
    await other_process.commit(USER, 1, MemoryChanges(upsert=(affinity("drama", 0.9),)))
    fresh = await cache.get(USER)
    assert fresh.version == 2 and fresh.get("genre_affinity:drama").score == 0.9
    assert cache.stats.refetches == 2


async def test_cache_update_from_a_stale_snapshot_conflicts_then_redecides(
        store: MemoryStore, redis_client, redis_keys):
    cache = MemoryCache(store)
    await store.commit(USER, 0, MemoryChanges(upsert=(affinity("drama", 1.0),)))
    await cache.get(USER)  # cached at version 1
    other_process = MemoryStore(redis_client, keys=redis_keys)
    await other_process.commit(USER, 1, MemoryChanges(upsert=(affinity("drama", 5.0),)))

    def bump(memory: UserMemory) -> MemoryChanges:
        return MemoryChanges(upsert=(affinity("drama", memory.get("genre_affinity:drama").score + 1),))

    result = await cache.update_with_retry(USER, bump)
    assert result.attempts == 2 and result.version == 3  # stale start lost once, no write lost
    assert (await store.load(USER)).get("genre_affinity:drama").score == 6.0
    cached = await cache.get(USER)  # the state the update left is cached: no refetch
    assert cached.version == 3 and cached.get("genre_affinity:drama").score == 6.0
    assert cached == await store.load(USER)
    assert cache.stats.refetches == 1


async def test_cache_is_bounded(store: MemoryStore):
    cache = MemoryCache(store, max_users=2)
    for user in ("a", "b", "c"):
        await cache.get(user)
    assert len(cache) == 2


# -- run scratch ---------------------------------------------------------------------------------
async def test_scratch_collects_changes_and_commits_against_its_base(store: MemoryStore):
    await store.commit(USER, 0, MemoryChanges(upsert=(backoff("crime"), affinity("comedy", 0.4))))
    scratch = MemoryScratch(await store.load(USER))
    scratch.delete(backoff("crime").key)
    scratch.upsert(affinity("comedy", 0.8))
    scratch.upsert(backoff("horror"))
    assert set(scratch.facts()) == {"genre_affinity:comedy", "genre_backoff:horror"}
    with pytest.raises(UsageError):
        scratch.delete("genre_backoff:western")
    version = await store.commit(USER, scratch.base_version, scratch.changes())
    memory = await store.load(USER)
    assert version == 2 and set(memory.facts) == set(scratch.facts())
    stale = MemoryScratch(UserMemory(USER, 1))  # a run that started before that commit
    stale.upsert(affinity("comedy", 0.0))
    with pytest.raises(VersionConflict):
        await store.commit(USER, stale.base_version, stale.changes())


def test_scratch_survives_a_checkpoint_round_trip():
    scratch = MemoryScratch(UserMemory(USER, 3, {backoff().key: backoff()}))
    scratch.upsert(affinity("comedy", 0.3))
    again = pickle.loads(pickle.dumps(scratch))
    assert again.base == scratch.base and again.facts() == scratch.facts()
    assert again.changes() == scratch.changes()


def test_scratch_rejects_non_facts():
    scratch = MemoryScratch(UserMemory(USER, 0))
    with pytest.raises(InvalidFact):
        scratch.upsert("likes crime")  # type: ignore[arg-type]
    scratch.upsert({"kind": "genre_affinity", "genre": "crime", "score": 1, "evidence": "x",  # type: ignore[arg-type]
                    "confidence": 0.5, "source": "m"})
    assert isinstance(scratch.get("genre_affinity:crime"), GenreAffinity)
    assert not MemoryScratch(UserMemory(USER, 0)).changes()
