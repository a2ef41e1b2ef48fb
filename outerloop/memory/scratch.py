"""Run scratch: the memory one agent run works on, carried in the graph state.

It starts from a snapshot (:class:`UserMemory`) and records what the run wants to change
without touching Redis. At the end the run commits :meth:`MemoryScratch.changes` against
:attr:`MemoryScratch.base_version`; if another writer moved the version meanwhile, that commit
raises ``VersionConflict`` and the run re-reads instead of overwriting a newer decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from outerloop.errors import UsageError
from outerloop.memory.facts import Fact, check_fact
from outerloop.memory.store import MemoryChanges, UserMemory


@dataclass(slots=True)
class MemoryScratch:
    """Working memory for one run: a base snapshot plus pending upserts and deletes."""

    base: UserMemory
    upserts: dict[str, Fact] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)  # free-form reasoning, never persisted

    @property
    def user_id(self) -> str:
        return self.base.user_id

    @property
    def base_version(self) -> int:
        return self.base.version

    def facts(self) -> dict[str, Fact]:
        """The memory as this run sees it: the snapshot with its own changes applied."""
        merged = {k: v for k, v in self.base.facts.items() if k not in self.deletes}
        merged.update(self.upserts)
        return merged

    def get(self, key: str) -> Fact | None:
        return self.facts().get(key)

    def upsert(self, fact: Fact) -> None:
        fact = check_fact(fact)
        self.deletes.discard(fact.key)
        self.upserts[fact.key] = fact

    def delete(self, key: str) -> None:
        if key not in self.base.facts and key not in self.upserts:
            raise UsageError(f"no fact {key!r} in the memory of user {self.user_id!r}")
        self.upserts.pop(key, None)
        if key in self.base.facts:
            self.deletes.add(key)

    def changes(self) -> MemoryChanges:
        """The delta to commit (empty when the run changed nothing)."""
        return MemoryChanges(upsert=tuple(self.upserts.values()), delete=tuple(sorted(self.deletes)))
