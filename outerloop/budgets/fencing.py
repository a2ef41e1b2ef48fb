"""Per-user fencing tokens: a run that was killed (or simply late) can never write.

Each run takes a *lease*: a token from ``INCR Keys.fence(user)`` (monotonic per user) and a
deadline on the Redis server's clock, kept in a small sorted set of live leases. Every fenced
write is one Lua script that first checks the lease (present, deadline not passed) and only then
applies the writes, so the check and the write are atomic. Killing a run removes its lease
(revoke); ending a run removes it too (release), so a token is single-use: any write that
carries it afterwards is refused.

All keys of a user share the ``{user}`` hash tag, so the scripts run on Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from outerloop.budgets.context import Guard, StagedWrite
from outerloop.contracts.keys import Keys
from outerloop.errors import OuterloopError, UsageError
from outerloop.storage.clients import is_cluster
from outerloop.storage.scripts import LuaScript, ScriptSet

RejectReason = Literal["not_live", "deadline"]


class GuardFailed(OuterloopError):
    """A commit's guard did not hold (another writer moved the guarded value): nothing of the
    commit was applied. ``current`` is the guarded hash as the commit found it."""

    def __init__(self, index: int, key: str, current: dict[bytes, bytes]) -> None:
        self.index = index
        self.key = key
        self.current = current
        super().__init__(f"guard {index} on {key!r} failed: the value changed since it was read")


class FenceRejected(OuterloopError):
    """A fenced write was refused: its token was revoked, released, never issued, or its
    deadline (server clock) had passed. Nothing of that write reached Redis."""

    def __init__(self, user_id: str, token: int, reason: RejectReason) -> None:
        self.user_id = user_id
        self.token = token
        self.reason = reason
        super().__init__(f"write with fencing token {token} for user {user_id!r} refused: {reason}")


@dataclass(frozen=True, slots=True)
class Lease:
    """A live fencing token; ``deadline_us`` is on the Redis server's clock (``TIME``)."""

    user_id: str
    token: int
    deadline_us: int


# Lua fragment shared by every fenced script (the memory store embeds it too). Returns nil when
# the lease is live, else the reason. A lease past its deadline is removed on sight.
LEASE_CHECK = "fence_lease_check"  # the Lua every fenced commit starts with (also memory's)

# KEYS[1] fence counter, KEYS[2] leases; ARGV[1] budget in us, ARGV[2] prune age in us.
_ACQUIRE = LuaScript.of("acquire", "fence_acquire")

# KEYS[1] leases, then the guards' keys, then the written keys. ARGV[1] token, ARGV[2] '1' =
# release the lease, ARGV[3] number of guards, then per guard: field, '1' if a value is expected
# ('0': the field must be absent), the value; then per written key: kind ('s' SET | 'h' HSET |
# 'd' HDEL | 'f' HINCRBYFLOAT), field, value. A broken guard returns its index and its hash.
_COMMIT = LuaScript.of("commit", LEASE_CHECK, "fence_commit")
_KIND = {"set": "s", "hset": "h", "hdel": "d", "hincrbyfloat": "f"}

_REVOKE = LuaScript.of("revoke", "fence_revoke")
SCRIPTS = ScriptSet(_ACQUIRE, _COMMIT, _REVOKE)


def user_tag(user_id: str) -> str:
    return f"{{{user_id}}}"


def leases_key(user_id: str, keys: type[Keys] = Keys) -> str:
    """ZSET token -> deadline (server us) of the user's live leases."""
    return keys.fence_leases(user_id)


class Fence:
    """Issues, checks and revokes fencing tokens for one Redis (standalone or Cluster).

    ``keys`` is the key namespace (a :class:`~outerloop.contracts.keys.Keys` subclass with another
    ``prefix`` in tests). ``prune_after_ms``: leases whose deadline is older than this are
    dropped when the next lease of that user is issued (they are refused anyway).
    """

    def __init__(self, redis: aioredis.Redis, *, keys: type[Keys] = Keys,
                 prune_after_ms: int = 60_000) -> None:
        self.redis = redis
        self.keys = keys
        self.prune_after_ms = prune_after_ms
        self._cluster = is_cluster(redis)

    def leases_key(self, user_id: str) -> str:
        return leases_key(user_id, self.keys)

    async def acquire(self, user_id: str, latency_ms: float) -> Lease:
        """Issue the next token for ``user_id``, live for ``latency_ms`` from now (server clock)."""
        token, deadline = await SCRIPTS.call(
            self.redis, "acquire", [self.keys.fence(user_id), self.leases_key(user_id)],
            [int(latency_ms * 1000), int(self.prune_after_ms * 1000)],
        )
        return Lease(user_id=user_id, token=int(token), deadline_us=int(deadline))

    async def commit(self, user_id: str, token: int, writes: Sequence[StagedWrite], *,
                     guards: Sequence[Guard] = (), release: bool = True) -> int:
        """Apply ``writes`` atomically iff ``token``'s lease is live and every guard holds;
        returns the number written.

        ``release=True`` ends the lease in the same script (the run is over). Raises
        :class:`FenceRejected` when the lease is gone or past its deadline, and
        :class:`GuardFailed` (lease kept) when a guard does not hold. ``shared`` writes (counters
        over every user) are part of the script on a standalone server; on a Cluster, where a
        script reaches one slot only, they follow it in one pipeline once it succeeded.
        """
        tag = user_tag(user_id)
        keys = [self.leases_key(user_id)]
        args: list[Any] = [str(token), "1" if release else "0", len(guards)]
        for g in guards:
            if tag not in g.key:
                raise UsageError(f"key {g.key!r} is not a key of user {user_id!r}")
            keys.append(g.key)
            args += [g.field, "0" if g.expected is None else "1", g.expected or ""]
        after: list[StagedWrite] = []
        for w in writes:
            if w.shared and self._cluster:
                after.append(w)
                continue
            if not w.shared and tag not in w.key:
                raise UsageError(f"key {w.key!r} is not a key of user {user_id!r}")
            keys.append(w.key)
            args += [_KIND[w.kind], w.field or "", w.value]
        ok, detail, *rest = await SCRIPTS.call(self.redis, "commit", keys, args)
        if int(ok) == 2:
            flat = rest[0] if rest else []
            index = int(detail) - 1
            raise GuardFailed(index, guards[index].key, dict(zip(flat[::2], flat[1::2])))
        if int(ok) != 1:
            reason = detail.decode() if isinstance(detail, bytes) else str(detail)
            raise FenceRejected(user_id, token, reason)  # type: ignore[arg-type]
        if after:
            pipe = self.redis.pipeline(transaction=False)
            for w in after:
                pipe.hincrbyfloat(w.key, w.field, float(w.value))
            await pipe.execute()
        return int(detail) + len(after)

    async def revoke(self, user_id: str, token: int) -> bool:
        """End the lease now (a killed run); True if it was still live."""
        return bool(await SCRIPTS.call(self.redis, "revoke", [self.leases_key(user_id)], [str(token)]))

    async def is_live(self, user_id: str, token: int) -> bool:
        """True while the lease exists (its deadline may still have passed: writes check both)."""
        return await self.redis.zscore(self.leases_key(user_id), str(token)) is not None
