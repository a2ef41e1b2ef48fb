"""No lost updates: 8 processes doing 10,000 read-modify-write updates in total.

Every update reads a user's memory, adds 1 to a counter fact and commits by compare-and-set
(``update_with_retry``). Writers pick users at random, so they keep colliding (some 15-20% of
commits conflict). If any update were lost (two writers both winning from the same read), a
user's counter would end below the number of updates that reported success for that user.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections import Counter

import redis.asyncio as aioredis

from outerloop.memory import GenreAffinity, MemoryChanges, MemoryStore, UserMemory
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    namespaced_keys,
    pytest_generate_tests,
    redis_keys,
    redis_target,
    url_for_children,
)

PROCESSES = 8
WRITERS_PER_PROCESS = 1
UPDATES = 10_000
USERS = [f"user-{i}" for i in range(16)]  # 8 writers over 16 users: frequent collisions
COUNTER_KEY = "genre_affinity:counter"


def _bump(memory: UserMemory) -> MemoryChanges:
    current = memory.get(COUNTER_KEY)
    score = current.score if current is not None else 0.0
    return MemoryChanges(upsert=(GenreAffinity(genre="counter", score=score + 1,
                                               evidence="consistency test", confidence=1.0,
                                               source="writer"),))


async def _writers(url: str, prefix: str, n: int, seed: int) -> tuple[dict[str, int], int]:
    client = aioredis.Redis.from_url(url)
    store = MemoryStore(client, keys=namespaced_keys(prefix), rng=random.Random(seed))
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    conflicts = 0

    async def writer(count: int) -> None:
        nonlocal conflicts
        for _ in range(count):
            user = rng.choice(USERS)
            result = await store.update_with_retry(user, _bump, max_attempts=10_000)
            assert result.changed
            done[user] += 1
            conflicts += result.attempts - 1

    share = [n // WRITERS_PER_PROCESS + (i < n % WRITERS_PER_PROCESS) for i in range(WRITERS_PER_PROCESS)]
    await asyncio.gather(*(writer(c) for c in share))
    await client.aclose()
    return dict(done), conflicts


def _process(url: str, prefix: str, n: int, seed: int, start_at: float) -> tuple[dict[str, int], int]:
    time.sleep(max(0.0, start_at - time.time()))  # start together, so they really contend
    return asyncio.run(_writers(url, prefix, n, seed))


def test_concurrent_read_modify_write_loses_nothing(redis_target, redis_keys):
    url = url_for_children(redis_target)
    per_process = [UPDATES // PROCESSES + (i < UPDATES % PROCESSES) for i in range(PROCESSES)]
    start_at = time.time() + 0.5
    # fork: the children start with everything this test process already imported (a fresh
    # interpreter per child costs seconds of imports on two cores); they build their own
    # clients and event loops, and reach the embedded server through its socket URL.
    ctx = multiprocessing.get_context("fork")
    t0 = time.monotonic()
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(_process, [(url, redis_keys.prefix, n, i, start_at)
                                          for i, n in enumerate(per_process)])
    elapsed = time.monotonic() - t0

    succeeded: Counter[str] = Counter()
    conflicts = 0
    for done, c in results:
        succeeded.update(done)
        conflicts += c
    assert sum(succeeded.values()) == UPDATES

    async def final_state() -> dict[str, tuple[int, float]]:
        client = redis_target.async_client()
        store = MemoryStore(client, keys=redis_keys)
        out = {}
        for user in USERS:
            memory = await store.load(user)
            counter = memory.get(COUNTER_KEY)
            out[user] = (memory.version, counter.score if counter else 0.0)
        await client.aclose()
        return out

    final = asyncio.run(final_state())
    for user in USERS:
        version, counter = final[user]
        assert counter == succeeded[user] == version, (user, final[user], succeeded[user])
    assert conflicts > 0, "no write ever conflicted: the test did not exercise concurrency"
    print(f"\n{UPDATES} updates by {PROCESSES * WRITERS_PER_PROCESS} writers in {elapsed:.1f} s, "
          f"{conflicts} CAS conflicts re-decided")
