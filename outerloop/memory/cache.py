"""The process cache: a user's memory kept in this process, revalidated by version.

Reading memory for every agent step would pull every fact every time. The cache asks Redis for
the version only (one ``HGET``) and refetches the facts only when the version moved, i.e. when
some writer (in any process) committed since. Bounded: least recently used users are dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from outerloop.errors import UsageError
from outerloop.memory.store import Decide, MemoryStore, UpdateResult, UserMemory
from outerloop.telemetry import count_cache


@dataclass(slots=True)
class CacheStats:
    hits: int = 0  # version unchanged: served from the process
    refetches: int = 0  # version changed or user not cached: full load


class MemoryCache:
    """Version-validated cache in front of a :class:`MemoryStore` (one per process)."""

    def __init__(self, store: MemoryStore, *, max_users: int = 10_000) -> None:
        if max_users < 1:
            raise UsageError(f"max_users must be >= 1, got {max_users}")
        self.store = store
        self.max_users = max_users
        self.stats = CacheStats()
        self._entries: OrderedDict[str, UserMemory] = OrderedDict()

    async def get(self, user_id: str) -> UserMemory:
        """The user's current memory; one version check when cached and unchanged."""
        cached = self._entries.get(user_id)
        if cached is not None and await self.store.version(user_id) == cached.version:
            self._entries.move_to_end(user_id)
            self.stats.hits += 1
            count_cache("memory", True)
            return cached
        memory = await self.store.load(user_id)
        self.stats.refetches += 1
        count_cache("memory", False)
        self._put(memory)
        return memory

    async def update_with_retry(self, user_id: str, decide: Decide, **options: Any) -> UpdateResult:
        """:meth:`MemoryStore.update_with_retry` starting from the cached snapshot (no read when
        it is current: one round trip per attempt) and caching the state it leaves."""
        result = await self.store.update_with_retry(
            user_id, decide, start_from=self._entries.get(user_id), **options)
        self._put(result.memory)
        return result

    def put(self, memory: UserMemory) -> None:
        """Cache a memory this process knows to be current (it just committed it)."""
        self._put(memory)

    def _put(self, memory: UserMemory) -> None:
        self._entries[memory.user_id] = memory
        self._entries.move_to_end(memory.user_id)
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)

    def invalidate(self, user_id: str) -> None:
        """Forget one user (e.g. right after this process committed for them)."""
        self._entries.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._entries)
