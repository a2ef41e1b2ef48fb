"""Typed symbolic memory of each user, in three layers: run scratch (one run, in the graph
state), a process cache revalidated by version, and durable Redis written by compare-and-set.
"""

from outerloop.memory.cache import CacheStats, MemoryCache
from outerloop.memory.facts import (
    ContinueWatching,
    Daypart,
    Fact,
    GenreAffinity,
    GenreBackoff,
    InvalidFact,
    RuntimePreference,
    UnknownFact,
    fact_class,
    fact_kinds,
    parse_fact,
)
from outerloop.memory.scratch import MemoryScratch
from outerloop.memory.store import (
    MemoryChanges,
    MemoryStore,
    UpdateResult,
    UserMemory,
    VersionConflict,
)

__all__ = [
    "CacheStats",
    "ContinueWatching",
    "Daypart",
    "Fact",
    "GenreAffinity",
    "GenreBackoff",
    "InvalidFact",
    "MemoryCache",
    "MemoryChanges",
    "MemoryScratch",
    "MemoryStore",
    "RuntimePreference",
    "UnknownFact",
    "UpdateResult",
    "UserMemory",
    "VersionConflict",
    "fact_class",
    "fact_kinds",
    "parse_fact",
]
