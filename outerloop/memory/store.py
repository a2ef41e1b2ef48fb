"""Durable per-user memory in Redis, written by compare-and-set on a per-user version.

Layout: one HASH per user (``Keys.memory(user)``): field ``_v`` is the version, every other
field is ``fact.key -> fact JSON``. A commit is one Lua script that checks the version the
writer read (and, for writes made inside a budgeted run, its fencing lease), then applies the
changes and bumps the version. So two agents that read the same version cannot both win: the
loser gets :class:`VersionConflict`, re-reads and re-decides (:meth:`MemoryStore.update_with_retry`).
That loop retries a *write decision* against fresh state; it never re-runs an agent.

All keys touched by a commit carry the user's hash tag, so the script works on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import redis.asyncio as aioredis

from outerloop.budgets.fencing import LEASE_CHECK, FenceRejected, leases_key
from outerloop.contracts.keys import Keys
from outerloop.errors import OuterloopError, UsageError
from outerloop.memory.facts import Fact, InvalidFact, check_fact, dump_fact, parse_fact
from outerloop.storage.scripts import LuaScript, ScriptSet

VERSION_FIELD = "_v"
F = TypeVar("F")


class VersionConflict(OuterloopError):
    """The user's memory changed since it was read: re-read and decide again.

    ``current`` is the memory as the failed commit found it (read in the same script), so the
    loser can re-decide without another round trip.
    """

    def __init__(self, user_id: str, expected: int, actual: int,
                 current: "UserMemory | None" = None) -> None:
        self.user_id = user_id
        self.expected = expected
        self.actual = actual
        self.current = current
        super().__init__(
            f"memory of user {user_id!r} is at version {actual}, the write expected {expected}"
        )


@dataclass(frozen=True, slots=True)
class UserMemory:
    """A consistent snapshot of one user's facts at ``version`` (0 = nothing written yet)."""

    user_id: str
    version: int
    facts: Mapping[str, Fact] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "facts", MappingProxyType(dict(self.facts)))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (graph checkpoints, worker processes)
        return (UserMemory, (self.user_id, self.version, dict(self.facts)))

    def get(self, key: str) -> Fact | None:
        return self.facts.get(key)

    def of_kind(self, cls: type[F]) -> list[F]:
        """Facts of one class, e.g. ``mem.of_kind(GenreBackoff)``."""
        return [f for f in self.facts.values() if isinstance(f, cls)]

    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts.values())

    def __len__(self) -> int:
        return len(self.facts)

    def applied(self, decision: "MemoryChanges | Sequence[Fact]", version: int) -> "UserMemory":
        """The memory after ``decision`` was committed as ``version`` (computed locally, the
        same way the commit script applies it, facts stamped with ``version``)."""
        if isinstance(decision, MemoryChanges):
            deleted = set(decision.delete)
            facts = {k: v for k, v in self.facts.items() if k not in deleted}
            upsert: Sequence[Fact] = decision.upsert
        else:
            facts, upsert = {}, decision
        for fact in upsert:
            fact = check_fact(fact)
            facts[fact.key] = fact.model_copy(update={"version": version})
        return UserMemory(self.user_id, version, facts)


@dataclass(frozen=True, slots=True)
class MemoryChanges:
    """A delta: facts to write (replacing any fact with the same key) and keys to delete."""

    upsert: tuple[Fact, ...] = ()
    delete: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upsert or self.delete)


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What :meth:`MemoryStore.update_with_retry` did: the version it left and how many
    read-decide-write attempts (1 = no conflict) it took."""

    version: int
    attempts: int
    changed: bool
    memory: UserMemory  # the memory as this update left it


Decision = MemoryChanges | Sequence[Fact] | None
Decide = Callable[[UserMemory], Decision | Awaitable[Decision]]

# KEYS[1] memory hash, KEYS[2] the user's fencing leases. ARGV[1] expected version,
# ARGV[2] fencing token or '', ARGV[3] '1' = replace every fact, ARGV[4] number of upserts,
# then that many (field, json) pairs, then the fields to delete. A conflict returns the
# current hash, so the loser can re-decide without reading again.
SCRIPTS = ScriptSet(LuaScript.of("commit", LEASE_CHECK, "memory_commit"))


class MemoryStore:
    """The durable layer. ``keys`` is the key namespace (a ``Keys`` subclass in tests)."""

    def __init__(self, redis: aioredis.Redis, *, keys: type[Keys] = Keys,
                 rng: random.Random | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self._rng = rng or random.Random()

    async def version(self, user_id: str) -> int:
        """The current version with one cheap call (what the process cache checks)."""
        raw = await self.redis.hget(self.keys.memory(user_id), VERSION_FIELD)
        return int(raw) if raw is not None else 0

    async def load(self, user_id: str) -> UserMemory:
        """All facts and their version, read atomically (one HGETALL)."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.memory(user_id))
        return _decode(user_id, raw.items())

    async def commit(
        self,
        user_id: str,
        expected_version: int,
        facts: MemoryChanges | Sequence[Fact],
        *,
        fencing_token: int | None = None,
    ) -> int:
        """Write iff the memory is still at ``expected_version``; returns the new version.

        ``facts`` is either a :class:`MemoryChanges` delta or a full list of facts that replaces
        the user's memory. Written facts are stamped with the new version. With a
        ``fencing_token`` (writes from inside a budgeted run) the write is refused with
        :class:`~outerloop.budgets.FenceRejected` once that run's lease is gone or past its
        deadline. Raises :class:`VersionConflict` when another writer got there first.
        """
        replace = not isinstance(facts, MemoryChanges)
        if isinstance(facts, MemoryChanges):
            upsert, delete = facts.upsert, facts.delete
        elif isinstance(facts, str | bytes | Mapping) or not isinstance(facts, Sequence):
            raise UsageError("commit() takes MemoryChanges or a sequence of facts")
        else:
            upsert, delete = tuple(facts), ()
        new_version = expected_version + 1
        args: list[Any] = [
            expected_version, "" if fencing_token is None else str(fencing_token),
            "1" if replace else "0", len(upsert),
        ]
        seen: set[str] = set()
        for fact in upsert:
            fact = check_fact(fact)
            if fact.key in seen:
                raise UsageError(f"two facts with key {fact.key!r} in one commit")
            seen.add(fact.key)
            args += [fact.key, dump_fact(fact.model_copy(update={"version": new_version}))]
        for key in delete:
            if key == VERSION_FIELD:
                raise UsageError(f"{VERSION_FIELD!r} is not a fact key")
            args.append(key)
        status, detail, *rest = await SCRIPTS.call(
            self.redis, "commit", [self.keys.memory(user_id), leases_key(user_id, self.keys)], args
        )
        status = int(status)
        if status == 1:
            return int(detail)
        if status == 0:
            current = _decode(user_id, zip(rest[0][::2], rest[0][1::2])) if rest else None
            raise VersionConflict(user_id, expected_version, int(detail), current)
        reason = detail.decode() if isinstance(detail, bytes) else str(detail)
        raise FenceRejected(user_id, int(fencing_token or 0), reason)  # type: ignore[arg-type]

    async def update_with_retry(
        self,
        user_id: str,
        decide: Decide,
        *,
        max_attempts: int = 50,
        fencing_token: int | None = None,
        start_from: UserMemory | None = None,
        max_backoff_ms: float = 5.0,
    ) -> UpdateResult:
        """Read, ``decide(memory)``, commit; on :class:`VersionConflict` decide again on the
        memory the conflict returned (after a short jittered back-off), up to ``max_attempts``.

        ``decide`` (sync or async) returns changes, a full list of facts, or None for "nothing
        to write". It must be a pure function of the memory it is given: it may run several
        times. ``start_from`` skips the first read (a cached snapshot: if it is stale the
        commit conflicts and the loop continues from the fresh state). A fencing refusal is
        final and is raised, not retried.
        """
        if max_attempts < 1:
            raise UsageError(f"max_attempts must be >= 1, got {max_attempts}")
        memory = start_from if start_from is not None else await self.load(user_id)
        verified = start_from is None
        attempt = 0
        while True:
            attempt += 1
            decision = decide(memory)
            if inspect.isawaitable(decision):
                decision = await decision
            if decision is None or (isinstance(decision, MemoryChanges) and not decision):
                if not verified and await self.version(user_id) != memory.version:
                    memory, verified = await self.load(user_id), True  # decided on stale data
                    attempt -= 1  # not a conflict: decide again on the fresh memory
                    continue
                return UpdateResult(memory.version, attempt, changed=False, memory=memory)
            try:
                version = await self.commit(user_id, memory.version, decision,
                                            fencing_token=fencing_token)
            except VersionConflict as exc:
                if attempt >= max_attempts:
                    raise
                memory = exc.current if exc.current is not None else await self.load(user_id)
                verified = True
                cap_ms = min(max_backoff_ms, 0.05 * 2 ** min(attempt, 10))
                await asyncio.sleep(self._rng.uniform(0.0, cap_ms) / 1000.0)
                continue
            return UpdateResult(version, attempt, changed=True,
                                memory=memory.applied(decision, version))


def _decode(user_id: str, items: Iterable[tuple[bytes, bytes]]) -> UserMemory:
    version = 0
    facts: dict[str, Fact] = {}
    for k, v in items:
        name = k.decode()
        if name == VERSION_FIELD:
            version = int(v)
            continue
        try:
            facts[name] = parse_fact(v, unknown_ok=True, key=name)
        except InvalidFact as exc:
            raise InvalidFact(f"memory of user {user_id!r}, field {name!r}: {exc}") from exc
    return UserMemory(user_id, version, facts)


# -- memory writes staged on a budgeted run --------------------------------------------------------

MemoryCommitted = Callable[[UserMemory, MemoryChanges, UserMemory, int], None]


def _merge(a: MemoryChanges, b: MemoryChanges) -> MemoryChanges:
    """``a`` then ``b`` as one delta (``b`` wins on a key both touch)."""
    up = {f.key: f for f in a.upsert if f.key not in b.delete}
    for f in b.upsert:
        up[f.key] = f
    delete = [k for k in dict.fromkeys([*a.delete, *b.delete]) if k not in up]
    return MemoryChanges(upsert=tuple(up.values()), delete=tuple(delete))


def _as_changes(decision: Any) -> MemoryChanges:
    if decision is None:
        return MemoryChanges()
    if isinstance(decision, MemoryChanges):
        return decision
    raise UsageError("a memory decision in a run returns MemoryChanges (or None); replacing the whole "
                     "memory is not something an agent run can do")


async def decide_changes(memory: UserMemory, decides: Sequence[Decide]) -> MemoryChanges:
    """Run ``decides`` in order, each on the memory as the ones before left it; one delta."""
    total, current = MemoryChanges(), memory
    for decide in decides:
        decision = decide(current)
        if inspect.isawaitable(decision):
            decision = await decision
        changes = _as_changes(decision)
        for fact in changes.upsert:
            check_fact(fact)
        if changes:
            total = _merge(total, changes)
            current = current.applied(changes, current.version)
    return MemoryChanges(upsert=total.upsert, delete=tuple(k for k in total.delete if k in memory.facts))


def memory_writes(keys: type[Keys], user_id: str, version: int, changes: MemoryChanges) -> list[Any]:
    """The staged writes of committing ``changes`` on the memory at ``version`` (facts stamped
    with the new version, the version bumped)."""
    from outerloop.budgets.context import StagedWrite

    key, new = keys.memory(user_id), version + 1
    writes = [StagedWrite(key, dump_fact(check_fact(f).model_copy(update={"version": new})), field=f.key)
              for f in changes.upsert]
    for k in changes.delete:
        if k == VERSION_FIELD:
            raise UsageError(f"{VERSION_FIELD!r} is not a fact key")
        writes.append(StagedWrite(key, "", field=k, op="hdel"))
    writes.append(StagedWrite(key, str(new), field=VERSION_FIELD))
    return writes


async def staged_memory(keys: type[Keys], user_id: str, memory: UserMemory, decides: Sequence[Decide],
                        on_commit: MemoryCommitted | None = None) -> Any:
    """A run's memory decision as a guarded write (:class:`~outerloop.budgets.context.Conditional`):
    decided now on ``memory`` (the snapshot the run read), compare-and-set on its version at the
    run's commit, and decided again on the memory the commit found if another writer moved it.
    None when there is nothing to write."""
    from outerloop.budgets.context import Conditional, Guard

    async def build(mem: UserMemory) -> Conditional | None:
        changes = await decide_changes(mem, decides)
        if not changes:
            return None
        after = mem.applied(changes, mem.version + 1)

        def committed(attempts: int) -> None:
            if on_commit is not None:
                on_commit(mem, changes, after, attempts)

        async def redecide(raw: dict[bytes, bytes]) -> Conditional | None:
            return await build(_decode(user_id, raw.items()))

        guard = Guard(keys.memory(user_id), VERSION_FIELD, str(mem.version) if mem.version else None)
        return Conditional(guard=guard, writes=memory_writes(keys, user_id, mem.version, changes),
                           redecide=redecide, on_commit=committed)

    return await build(memory)
