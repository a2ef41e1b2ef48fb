"""Running agent cycles for due users: at most one per user anywhere, a bounded number here.

The queue is a ZSET per shard (user -> time from which it may run) next to each user's pending
triggers. A cycle *claims* a user with one Lua script on the user's keys: take the per-user lock
(SET NX PX, a random token) and move the pending triggers to the in-flight set. Triggers that
arrive while the cycle runs stay pending (coalesced) and start the next cycle as soon as this
one finishes. A running cycle renews its lock every third of its TTL; if the daemon dies, the
lock expires within ``lock_ttl_s``, the user's queue entry (leased for the lock's lifetime)
falls due again, and the next claim merges the orphaned in-flight triggers back in: a crash
never loses a trigger.

On one server the claim, renew and finish scripts also update the user's queue entry in the
same atomic step. On a cluster the queue lives in another slot, so the steps are separate, and
removing a user from the queue is never blind: remove, then look at the pending triggers and
put the user back if something arrived (the event path writes triggers before it queues the
user), so no interleaving of two daemons can strand a trigger.

Claims and releases of many users go to Redis together (one round trip per batch).

Telemetry: each cycle is one ``daemon.cycle`` span, the root of its own trace (one cycle serves
many events), linked to the events it consumed (the consumer's ``TraceLinks``, taken in one
extra round trip, only when telemetry is on); the agent runs and their commits are its
children, and its duration goes to the cycle-duration histogram by status.
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

from opentelemetry import context as otel_context
from opentelemetry.trace import Link, Status, StatusCode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from outerloop import telemetry
from outerloop.clock import now_ms
from outerloop.contracts.keys import SchedulerKeys, shard_of
from outerloop.contracts.triggers import TriggerRules
from outerloop.scheduler.backoff import Backoff
from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.scheduler.settings import DaemonSettings
from outerloop.scheduler.triggers import (
    EVENTS_SEP,
    LUA_FIRE,
    LUA_TRIGGERS,
    PendingTrigger,
    triggers_from_parts,
)
from outerloop.storage.clients import AsyncRedisClient, is_cluster
from outerloop.storage.scripts import LuaScript, ScriptSet, lua_source

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)



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

    async def __call__(self, user_id: str, triggers: Sequence[PendingTrigger]) -> CycleOutcome: ...


# KEYS: lock, pending hash/ids/events, in-flight hash/ids/events [, due queue]
# ARGV: token, ttl_ms, max_ids, max_events [, user, now_ms]
# With the due queue (one server only: it is not in the user's slot) the queue entry is updated
# here too: leased for the lock's lifetime, or, when the user is busy, due when its lock ends.
# Returns {1, in-flight hash (flat), ids (JSON array), events (joined by \x1e)} or {0, lock pttl}
CLAIM_LUA = LUA_TRIGGERS + lua_source("dispatch_claim")

# KEYS: as CLAIM_LUA (without the queue) [, due queue, refresh queue]
# ARGV: token, 'done'|'abort', max_ids, max_events [, user, now_ms, refresh_at_ms|'']
# 'abort' (shutdown cancelled the cycle) hands the triggers back for another daemon. With the
# queues (one server only) the user is queued again or removed, atomically with the check.
# Returns {1 if the lock was still ours, 1 if triggers are pending}
FINISH_LUA = LUA_TRIGGERS + lua_source("dispatch_finish")

# KEYS: lock [, due queue]   ARGV: token, ttl_ms [, user, now_ms]
# Extends the lock if it is still ours, and (one server only) the user's queue lease with it, in
# the same step: a lease written after the cycle's finish had re-queued the user would hold
# the user back for a whole lease. Returns 1 if the lock was ours.
RENEW_LUA = lua_source("dispatch_renew")

DISPATCH_SCRIPTS = (LuaScript("claim", CLAIM_LUA), LuaScript("finish", FINISH_LUA), LuaScript("fire", LUA_FIRE),
                    LuaScript("renew", RENEW_LUA))


async def request_cycle(client: AsyncRedisClient, keys: SchedulerKeys, user_id: str, name: str,
                        detail: dict[str, Any] | None = None, *, rules: TriggerRules | None = None) -> None:
    """Queue a trigger for ``user_id`` from outside the event path (e.g. the evaluator's drift
    flag, with ``detail={"row_id": ...}``). It coalesces with the user's other pending triggers
    and runs in their next cycle."""
    rules = rules or TriggerRules()
    scripts = ScriptSet(LuaScript("fire", LUA_FIRE))
    await scripts.call(client, "fire", fire_keys(keys, user_id),
                       fire_args(name, now_ms(), detail, rules))
    await client.zadd(keys.due(shard_of(user_id, keys.shards)), {user_id: now_ms()}, nx=True)


def fire_keys(keys: SchedulerKeys, user_id: str) -> list[str]:
    """KEYS of :data:`~outerloop.scheduler.triggers.LUA_FIRE` for ``user_id``."""
    return [*keys.pending_triggers(user_id), keys.applied(user_id)]


def fire_args(name: str, at_ms: int, detail: dict[str, Any] | None, rules: TriggerRules, *,
              marker: str = "", applied_ttl_s: int = 0, event_id: str = "", event_json: str = "") -> list[Any]:
    """ARGV of :data:`~outerloop.scheduler.triggers.LUA_FIRE` (``marker`` = fire once)."""
    return [name, at_ms, json.dumps(detail) if detail else "", rules.max_event_ids, rules.max_events,
            marker, applied_ttl_s, event_id, event_json]


@dataclass(slots=True)
class _Release:
    shard: int
    user: str
    token: str
    mode: str  # 'done' | 'abort'
    refresh_at_ms: int | None
    done: asyncio.Future[None]


class Dispatcher:
    """Claims due users and runs their cycles under a bounded semaphore."""

    def __init__(self, *, client: AsyncRedisClient, keys: SchedulerKeys, settings: DaemonSettings, runner: CycleRunner,
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
        self._releases: list[_Release] = []
        self._releaser: asyncio.Task[None] | None = None
        self._cluster = is_cluster(client)
        self._tokens: dict[str, tuple[int, str]] = {}  # running user -> (shard, lock token)
        self.trace_links = telemetry.TraceLinks()

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
            # (users running here may look due on a cluster, where leases are not renewed)
            raw = await self.client.zrangebyscore(self.keys.due(shard), "-inf", now_ms(), start=0,
                                                  num=free * 2 + len(self._running))
            users = [u for u in (r.decode() if isinstance(r, bytes) else r for r in raw) if u not in self._running]
            if users:
                await self._start(shard, users[:free])

    async def _start(self, shard: int, users: list[str]) -> None:
        """Claim ``users`` in one round trip and start a cycle for each one claimed."""
        tokens = {u: uuid.uuid4().hex for u in users}
        calls = [(self._user_keys(u), [tokens[u], self.settings.lock_ttl_ms, self.rules.max_event_ids,
                                             self.rules.max_events]) for u in users]
        due = self.keys.due(shard)
        now = now_ms()
        if not self._cluster:  # the script leases the queue entry itself (one round trip for all)
            calls = [([*keys, due], [*args, user, now]) for (keys, args), user in zip(calls, users)]
        replies = await self.scripts.call_many(self.client, "claim", calls)
        leases: dict[str, int] = {}
        retries: dict[str, int] = {}
        to_run: list[tuple[str, list[PendingTrigger]]] = []
        empty: list[str] = []
        for user, reply in zip(users, replies):
            if isinstance(reply, Exception):
                log.warning("claiming %s failed: %s", user, reply)
                continue
            if int(reply[0]) == 0:  # another daemon runs this user; look again when its lock ends
                self.metrics.cycles_busy_elsewhere += 1
                if self._cluster:
                    retries[user] = now + min(max(int(reply[1]), 50), self.settings.lock_ttl_ms)
                continue
            events = reply[3].split(EVENTS_SEP) if reply[3] else []
            triggers = triggers_from_parts(reply[1], json.loads(reply[2]), events)
            if triggers:
                if self._cluster:
                    leases[user] = now + self.settings.lock_ttl_ms  # due again only if we die
                to_run.append((user, triggers))
            else:  # nothing pending after all (another daemon ran it): release
                empty.append(user)
        if empty:
            await asyncio.gather(*(self._finish(shard, u, tokens[u], "done", None) for u in empty))
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
            self._tokens[user] = (shard, tokens[user])
            task.add_done_callback(lambda _t, u=user: self._done(u))

    def _done(self, user: str) -> None:
        self._running.pop(user, None)
        self._tokens.pop(user, None)
        self._slots.release()
        self._wake.set()

    def _user_keys(self, user: str) -> list[str]:
        return [self.keys.cycle_lock(user), *self.keys.pending_triggers(user), *self.keys.inflight_triggers(user)]

    async def _run(self, shard: int, user: str, token: str, triggers: list[PendingTrigger]) -> None:
        started = time.monotonic()
        mode = "done"
        status = "failed"
        killed = 0
        refresh_at: int | None = None
        with telemetry.span("daemon.cycle", parent=otel_context.Context(), user_id=user, shard=shard,
                            triggers=sorted({t.name for t in triggers})) as span:
            try:
                if telemetry.enabled():  # (inside the try: a cancel here still releases the user)
                    for link in await self._consumed_links(user):
                        span.add_link(link.context, link.attributes)
                async with asyncio.timeout(self.settings.cycle_timeout_s):
                    outcome = await self.runner(user, triggers)
                status, killed, refresh_at = outcome.status, len(outcome.killed_agents), outcome.refresh_at_ms
                span.set_attributes({"rows_committed": outcome.rows_committed,
                                     "killed_agents": list(outcome.killed_agents)})
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
                took_ms = (time.monotonic() - started) * 1000
                self.metrics.record_cycle(status, took_ms, killed)
                telemetry.histogram(telemetry.CYCLE_DURATION, description="daemon cycle wall time").record(
                    took_ms, {"status": status})
                span.set_attribute("status", status)
                if status in ("failed", "timeout", "aborted"):
                    span.set_status(Status(StatusCode.ERROR, status))
                if self._tokens.get(user, (0, ""))[1] == token:
                    # no more renewals: one racing the release would find the lock gone and
                    # report it lost (and cancel this finishing cycle)
                    del self._tokens[user]
                await asyncio.shield(self._finish(shard, user, token, mode, self._next_refresh_ms(refresh_at)))

    async def _consumed_links(self, user: str) -> list[Link]:
        """Links to the requests that posted the events this cycle consumes (telemetry only:
        a failure here costs the links, never the cycle)."""
        try:
            return await self.trace_links.take(self.client, self.keys.trace_links(user))
        except Exception as exc:  # noqa: BLE001 - Redis down, a bad value: the cycle runs unlinked
            log.debug("could not read the trace links of %s: %s", user, exc)
            return []

    def _next_refresh_ms(self, refresh_at_ms: int | None) -> int:
        """When the stale-row sweep should look at the user again: when the cycle said its rows
        expire, else ``stale_after_s`` from now; never sooner than ``min_refresh_interval_s``."""
        now = now_ms()
        when = refresh_at_ms if refresh_at_ms is not None else now + int(self.settings.stale_after_s * 1000)
        return max(when, now + int(self.settings.min_refresh_interval_s * 1000))

    async def _finish(self, shard: int, user: str, token: str, mode: str, refresh_at_ms: int | None) -> None:
        """Release the user. Releases of cycles that end close together go to Redis as one
        batch (one round trip for all of them; two on a cluster); this waits until ours is done."""
        release = _Release(shard, user, token, mode, refresh_at_ms, asyncio.get_running_loop().create_future())
        self._releases.append(release)
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.create_task(self._release_all(), name="dispatch:release")
        await release.done

    async def _release_all(self) -> None:
        await asyncio.sleep(0)  # let the other cycles ending in this loop iteration join the batch
        while self._releases:
            batch, self._releases = self._releases, []
            try:
                await self._release_with_retry(batch)
            finally:
                for r in batch:
                    if not r.done.done():
                        r.done.set_result(None)

    async def _release_with_retry(self, batch: list[_Release]) -> None:
        """Retry through Redis outages until the locks would expire anyway (or, while
        stopping, for the shutdown grace period at most)."""
        patience_s = self.settings.lock_ttl_ms / 1000
        if not self._accepting:
            patience_s = min(patience_s, self.settings.shutdown_grace_s)
        deadline = time.monotonic() + patience_s
        backoff = Backoff(base_s=self.settings.backoff_base_s, cap_s=self.settings.backoff_cap_s)
        while True:
            try:
                await self._release_batch(batch)
                return
            except REDIS_DOWN as exc:
                if time.monotonic() > deadline:
                    log.error("could not release %d user(s) (%s); their locks expire on their own", len(batch), exc)
                    return
                await asyncio.sleep(backoff.next_delay_s())

    async def _release_batch(self, batch: list[_Release]) -> None:
        """Finish scripts for the batch, then queue each user again if triggers are pending, or
        remove it from the queue and re-check (the event path writes triggers before queueing),
        and schedule its stale-row check."""
        now = now_ms()
        calls = [(self._user_keys(r.user), [r.token, r.mode, self.rules.max_event_ids, self.rules.max_events])
                 for r in batch]
        if not self._cluster:  # the script settles the queues itself, atomically
            calls = [([*keys, self.keys.due(r.shard), self.keys.refresh_due(r.shard)],
                      [*args, r.user, now, "" if r.refresh_at_ms is None else r.refresh_at_ms])
                     for (keys, args), r in zip(calls, batch)]
        replies = await self.scripts.call_many(self.client, "finish", calls)
        if not self._cluster:
            for r, reply in zip(batch, replies):
                if isinstance(reply, Exception):
                    log.warning("releasing %s failed (%s); its lock expires on its own", r.user, reply)
            if any(isinstance(x, Exception) or int(x[1]) for x in replies):
                self._wake.set()
            return
        # on a cluster the queues live in other slots: settle them after the scripts
        pipe = self.client.pipeline(transaction=False)
        rechecks: list[tuple[_Release, int]] = []  # (release, index of its EXISTS reply)
        n = 0
        requeued = False
        for r, reply in zip(batch, replies):
            if not isinstance(reply, Exception) and int(reply[0]) == 0:
                continue  # the lock had expired and another daemon owns the user (and its entry)
            pending = isinstance(reply, Exception) or int(reply[1]) > 0  # unsure: look again
            if isinstance(reply, Exception):
                log.warning("releasing %s failed (%s); its lock expires on its own", r.user, reply)
            if pending:
                pipe.zadd(self.keys.due(r.shard), {r.user: now})
                requeued = True
                n += 1
            else:
                pipe.zrem(self.keys.due(r.shard), r.user)
                pipe.exists(self.keys.pending_triggers(r.user)[0])
                rechecks.append((r, n + 1))
                n += 2
            if r.refresh_at_ms is not None:
                pipe.zadd(self.keys.refresh_due(r.shard), {r.user: r.refresh_at_ms})
                n += 1
        results = await pipe.execute()
        late = [r for r, i in rechecks if results[i]]  # arrived between the finish and the removal
        if late:
            pipe = self.client.pipeline(transaction=False)
            for r in late:
                pipe.zadd(self.keys.due(r.shard), {r.user: now})
            await pipe.execute()
        if requeued or late:
            self._wake.set()

    async def renew_locks(self) -> None:
        """Extend the locks (and, on one server, the queue leases) of the running cycles. A lock
        found taken means this daemon was too slow to renew it and another may run the user
        now: the cycle here is cancelled, so there is never a second one (its late writes are
        fenced anyway). On a cluster the lease is not extended here (that write could not be
        atomic with the lock); a lease that runs out just makes the user look due, and a claim
        then finds the lock held and leases it again."""
        running = [(u, shard, token) for u, (shard, token) in self._tokens.items()]
        if not running:
            return
        ttl = self.settings.lock_ttl_ms
        now = now_ms()
        if self._cluster:
            calls = [([self.keys.cycle_lock(u)], [token, ttl]) for u, _, token in running]
        else:
            calls = [([self.keys.cycle_lock(u), self.keys.due(shard)], [token, ttl, u, now])
                     for u, shard, token in running]
        replies = await self.scripts.call_many(self.client, "renew", calls)
        for (user, _, token), reply in zip(running, replies):
            if isinstance(reply, Exception) or int(reply):
                continue
            current = self._tokens.get(user)
            if current is not None and current[1] == token:  # (not a cycle that ended meanwhile)
                self.metrics.locks_lost += 1
                log.warning("lost the lock of %s (renewal too late); cancelling its cycle here", user)
                self._running[user].cancel()

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
