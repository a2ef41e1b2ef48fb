"""Running agent cycles for due users: at most one per user anywhere, a bounded number here.

The queue is a ZSET per shard (user -> time from which it may run) next to each user's pending
triggers. A cycle *claims* a user with one Lua script on the user's keys: take the per-user lock
(SET NX PX, a random token) and move the pending triggers to the in-flight hash. Triggers that
arrive while the cycle runs wait in the pending hash (coalesced) and start the next cycle as
soon as this one finishes. If a daemon dies mid-cycle, its lock expires, the user's queue entry
(leased for the lock's lifetime) falls due again, and the next claim merges the orphaned
in-flight triggers back in: a crash never loses a trigger.

Removing a user from the queue is never blind: remove, then look at the pending hash and put
the user back if something arrived (the event path writes the pending hash before it queues the
user), so no interleaving of two daemons can strand a trigger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from outerloop.scheduler.backoff import Backoff
from outerloop.scheduler.keys import SchedulerKeys, shard_of
from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.scheduler.scripts import LuaScript, ScriptSet, evalsha_many
from outerloop.scheduler.settings import DaemonSettings
from outerloop.scheduler.triggers import LUA_FIRE, LUA_TRIGGERS, Trigger, TriggerRules, triggers_from_hash

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class CycleOutcome:
    """What one cycle did. ``killed`` means an agent overran its budget (recorded, not retried)."""

    status: Literal["ok", "failed", "killed", "timeout"] = "ok"
    rows_committed: int = 0
    killed_agents: tuple[str, ...] = ()
    run_id: str | None = None
    detail: str = ""
    refresh_at_ms: int | None = None  # when the rows it wrote go stale (the stale-row sweep's cue)


class CycleRunner(Protocol):
    """Runs the outer loop for one user (``OuterLoop.run_cycle`` behind an adapter)."""

    async def __call__(self, user_id: str, triggers: Sequence[Trigger]) -> CycleOutcome: ...


# KEYS: lock, pending, inflight   ARGV: token, ttl_ms, max_ids, max_events
# Returns {1, flat inflight hash} or {0, lock pttl}
CLAIM_LUA = LUA_TRIGGERS + r"""
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
trig_merge_hash(KEYS[2], KEYS[3], {ids = tonumber(ARGV[3]), events = tonumber(ARGV[4])})
return {1, redis.call('HGETALL', KEYS[3])}
"""

# KEYS: lock, pending, inflight   ARGV: token, 'done'|'abort', max_ids, max_events
# 'abort' (shutdown cancelled the cycle) hands the triggers back for another daemon.
# Returns {1 if the lock was still ours, pending count}
FINISH_LUA = LUA_TRIGGERS + r"""
local ours = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == 'abort' then
    trig_merge_hash(KEYS[3], KEYS[2], {ids = tonumber(ARGV[3]), events = tonumber(ARGV[4])})
  else
    redis.call('DEL', KEYS[3])
  end
  redis.call('DEL', KEYS[1])
  ours = 1
end
return {ours, redis.call('HLEN', KEYS[2])}
"""

DISPATCH_SCRIPTS = (LuaScript("claim", CLAIM_LUA), LuaScript("finish", FINISH_LUA), LuaScript("fire", LUA_FIRE))


async def request_cycle(client: Any, keys: SchedulerKeys, user_id: str, name: str,
                        detail: dict[str, Any] | None = None, *, rules: TriggerRules | None = None) -> None:
    """Queue a trigger for ``user_id`` from outside the event path (e.g. the evaluator's drift
    flag, with ``detail={"row_id": ...}``). It coalesces with the user's other pending triggers
    and runs in their next cycle."""
    rules = rules or TriggerRules()
    scripts = ScriptSet(LuaScript("fire", LUA_FIRE))
    await scripts.call(client, "fire", fire_keys(user_id),
                       fire_args(name, now_ms(), detail, rules))
    await client.zadd(keys.due(shard_of(user_id, keys.shards)), {user_id: now_ms()}, nx=True)


def fire_keys(user_id: str) -> list[str]:
    """KEYS of :data:`~outerloop.scheduler.triggers.LUA_FIRE` for ``user_id``."""
    return [SchedulerKeys.pending_triggers(user_id), SchedulerKeys.applied(user_id)]


def fire_args(name: str, at_ms: int, detail: dict[str, Any] | None, rules: TriggerRules, *,
              marker: str = "", applied_ttl_s: int = 0, event_id: str = "", event_json: str = "") -> list[Any]:
    """ARGV of :data:`~outerloop.scheduler.triggers.LUA_FIRE` (``marker`` = fire once)."""
    return [name, at_ms, json.dumps(detail) if detail else "", rules.max_event_ids, rules.max_events,
            marker, applied_ttl_s, event_id, event_json]


class Dispatcher:
    """Claims due users and runs their cycles under a bounded semaphore."""

    def __init__(self, *, client: Any, keys: SchedulerKeys, settings: DaemonSettings, runner: CycleRunner,
                 metrics: DaemonMetrics, rules: TriggerRules | None = None) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        self.rules = rules or TriggerRules()
        self.scripts = ScriptSet(*DISPATCH_SCRIPTS)
        self._slots = asyncio.BoundedSemaphore(settings.max_concurrent_cycles)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._accepting = True

    @property
    def running(self) -> int:
        return len(self._running)

    def notify(self) -> None:
        """Something became due (called by the consumer after it queued users)."""
        self._wake.set()

    async def tick(self) -> None:
        """One pass: wait for a wake-up or the poll interval, then start what is due."""
        try:
            await asyncio.wait_for(self._wake.wait(), self.settings.dispatch_poll_s)
        except TimeoutError:
            pass
        self._wake.clear()
        for shard in range(self.keys.shards):
            free = self.settings.max_concurrent_cycles - len(self._running)
            if not self._accepting or free <= 0:
                return
            raw = await self.client.zrangebyscore(self.keys.due(shard), "-inf", now_ms(), start=0, num=free * 2)
            users = [u for u in (r.decode() if isinstance(r, bytes) else r for r in raw) if u not in self._running]
            if users:
                await self._start(shard, users[:free])

    async def _start(self, shard: int, users: list[str]) -> None:
        """Claim ``users`` in one round trip and start a cycle for each one claimed."""
        tokens = {u: uuid.uuid4().hex for u in users}
        calls = [(list(self._user_keys(u)), [tokens[u], self.settings.lock_ttl_ms, self.rules.max_event_ids,
                                             self.rules.max_events]) for u in users]
        replies = await evalsha_many(self.client, self.scripts.sha("claim"), calls)
        if any(isinstance(r, NoScriptError) for r in replies):
            await self.scripts.load(self.client)
            replies = await evalsha_many(self.client, self.scripts.sha("claim"), calls)
        now = now_ms()
        due = self.keys.due(shard)
        leases: dict[str, int] = {}
        retries: dict[str, int] = {}
        to_run: list[tuple[str, list[Trigger]]] = []
        for user, reply in zip(users, replies):
            if isinstance(reply, Exception):
                log.warning("claiming %s failed: %s", user, reply)
                continue
            if int(reply[0]) == 0:  # another daemon runs this user; look again when its lock ends
                self.metrics.cycles_busy_elsewhere += 1
                retries[user] = now + min(max(int(reply[1]), 50), self.settings.lock_ttl_ms)
                continue
            triggers = triggers_from_hash(reply[1])
            if triggers:
                leases[user] = now + self.settings.lock_ttl_ms  # due again only if we die
                to_run.append((user, triggers))
            else:  # nothing pending after all (another daemon ran it): release
                await self._finish(shard, user, tokens[user], "done", None)
        if leases or retries:
            pipe = self.client.pipeline(transaction=False)
            if leases:
                pipe.zadd(due, leases)
            if retries:
                pipe.zadd(due, retries, xx=True)
            await pipe.execute()
        for user, triggers in to_run:
            await self._slots.acquire()  # never blocks: at most `free` users were claimed
            self.metrics.cycles_started += 1
            task = asyncio.create_task(self._run(shard, user, tokens[user], triggers), name=f"cycle:{user}")
            self._running[user] = task
            task.add_done_callback(lambda _t, u=user: self._done(u))

    def _done(self, user: str) -> None:
        self._running.pop(user, None)
        self._slots.release()
        self._wake.set()

    def _user_keys(self, user: str) -> tuple[str, str, str]:
        return (SchedulerKeys.cycle_lock(user), SchedulerKeys.pending_triggers(user),
                SchedulerKeys.inflight_triggers(user))

    async def _run(self, shard: int, user: str, token: str, triggers: list[Trigger]) -> None:
        started = time.monotonic()
        mode = "done"
        status = "failed"
        killed = 0
        refresh_at: int | None = None
        try:
            outcome = await asyncio.wait_for(self.runner(user, triggers), self.settings.cycle_timeout_s)
            status, killed, refresh_at = outcome.status, len(outcome.killed_agents), outcome.refresh_at_ms
        except TimeoutError:
            status = "timeout"
            log.warning("cycle for %s passed the %.1f s backstop; stopped, not retried", user,
                        self.settings.cycle_timeout_s)
        except asyncio.CancelledError:
            mode, status = "abort", "aborted"
            raise
        except Exception:  # one failing cycle never stops the daemon; not retried
            log.exception("cycle for %s failed", user)
        finally:
            self.metrics.record_cycle(status, (time.monotonic() - started) * 1000, killed)
            await asyncio.shield(self._finish(shard, user, token, mode, self._next_refresh_ms(refresh_at)))

    def _next_refresh_ms(self, refresh_at_ms: int | None) -> int:
        """When the stale-row sweep should look at the user again: when the cycle said its rows
        expire, else ``stale_after_s`` from now; never sooner than ``min_refresh_interval_s``."""
        now = now_ms()
        when = refresh_at_ms if refresh_at_ms is not None else now + int(self.settings.stale_after_s * 1000)
        return max(when, now + int(self.settings.min_refresh_interval_s * 1000))

    async def _finish(self, shard: int, user: str, token: str, mode: str, refresh_at_ms: int | None) -> None:
        """Release the user (retrying through Redis outages until the lock would expire anyway)."""
        deadline = time.monotonic() + self.settings.lock_ttl_ms / 1000
        backoff = Backoff(base_s=self.settings.backoff_base_s, cap_s=self.settings.backoff_cap_s)
        while True:
            try:
                reply = await self.scripts.call(self.client, "finish", list(self._user_keys(user)),
                                                [token, mode, self.rules.max_event_ids, self.rules.max_events])
                await self.settle(shard, user, int(reply[1]) > 0, refresh_at_ms=refresh_at_ms)
                return
            except REDIS_DOWN as exc:
                if time.monotonic() > deadline:
                    log.error("could not release %s (%s); its lock expires on its own", user, exc)
                    return
                await asyncio.sleep(backoff.next_delay_s())

    async def settle(self, shard: int, user: str, has_pending: bool, *, refresh_at_ms: int | None = None) -> None:
        """Queue the user now if triggers are pending, else remove it (then re-check); and
        schedule its stale-row check."""
        due = self.keys.due(shard)
        pipe = self.client.pipeline(transaction=False)
        if has_pending:
            pipe.zadd(due, {user: now_ms()})
        else:
            pipe.zrem(due, user)
            pipe.exists(SchedulerKeys.pending_triggers(user))
        if refresh_at_ms is not None:
            pipe.zadd(self.keys.refresh_due(shard), {user: refresh_at_ms})
        replies = await pipe.execute()
        if not has_pending and replies[1]:  # arrived between the finish and the removal
            await self.client.zadd(due, {user: now_ms()})
            has_pending = True
        if has_pending:
            self._wake.set()

    def stop_accepting(self) -> None:
        self._accepting = False
        self._wake.set()

    def cancel_running(self) -> None:
        """Cancel every running cycle now (their triggers are handed back)."""
        for task in list(self._running.values()):
            task.cancel()

    async def drain(self, grace_s: float) -> None:
        """Let running cycles finish within ``grace_s``; cancel the rest, handing their
        triggers back so another daemon runs them."""
        self.stop_accepting()
        tasks = list(self._running.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        for task in late:
            task.cancel()
        if late:
            log.warning("%d cycle(s) still running after %.1f s; cancelled, triggers handed back", len(late), grace_s)
            await asyncio.gather(*late, return_exceptions=True)
