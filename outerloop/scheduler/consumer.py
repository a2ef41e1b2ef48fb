"""Reading the event stream through a consumer group, at least once, with exactly-once effects.

Order of work for every chunk of entries: decode (malformed -> dead letter), apply each event
with one Lua script on the user's keys (effect + "applied" marker together, so a redelivery is
a no-op), hand the events to the sink (the outer loop's co-watch graph), queue users whose
triggers fired, then XACK. An entry is acknowledged only after its
effect is in Redis; a crash anywhere before that leaves it pending, and the next owner applies
it again harmlessly.

Where entries come from: new ones (``>``); this consumer's own pending entries after a start or
a reconnect (re-claimed with XCLAIM so their delivery count goes up); and entries other
consumers left idle (XAUTOCLAIM). An entry delivered more than ``max_deliveries`` times is
dead-lettered with the reason instead of being tried forever.

Telemetry: each chunk is one ``daemon.apply`` span (kind CONSUMER) linked to the span that
posted each entry (its ``traceparent`` field); the ``traceparent``s are kept per user
(:class:`~outerloop.telemetry.TraceLinks`) for the user's next cycle span to link to. With
telemetry off none of this runs and no round trip is added.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry.trace import SpanKind
from redis.exceptions import ResponseError

from outerloop import telemetry
from outerloop.clock import now_ms
from outerloop.contracts.events import Event
from outerloop.contracts.keys import SchedulerKeys
from outerloop.contracts.stream import EVENT_FIELD, MalformedEntry, decode_entry, describe_fields
from outerloop.contracts.triggers import EPISODE_RELEASED
from outerloop.scheduler.dispatch import REDIS_DOWN, fire_args, fire_keys
from outerloop.scheduler.metrics import DaemonMetrics
from outerloop.scheduler.sessionizer import ApplyResult, Sessionizer
from outerloop.scheduler.settings import DaemonSettings
from outerloop.scheduler.triggers import LUA_FIRE
from outerloop.storage.clients import AsyncRedisClient, is_cluster
from outerloop.storage.scripts import LuaScript, ScriptSet, is_noscript, lua_source

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Receives every chunk's events after their effect is applied and before they are
    acknowledged: ``applied`` for the first time, ``redelivered`` already applied before."""

    async def __call__(self, applied: Sequence[Event], redelivered: Sequence[Event]) -> None: ...


# KEYS: watermark   ARGV: ts. Keeps the largest event time seen on the shard.
MAX_SET_LUA = lua_source("max_set")

Entry = tuple[bytes | str, Any]
EVENT_FIELD_B = EVENT_FIELD.encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


class StreamConsumer:
    """One daemon's reader of every shard's stream."""

    def __init__(self, *, client: AsyncRedisClient, keys: SchedulerKeys, settings: DaemonSettings, sessionizer: Sessionizer,
                 metrics: DaemonMetrics, on_due: Callable[[], None], stopping: asyncio.Event,
                 sink: EventSink | None = None) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.sessionizer = sessionizer
        self.metrics = metrics
        self.on_due = on_due
        self.stopping = stopping
        self.sink = sink
        apply_script, _ = sessionizer.scripts()
        self.scripts = ScriptSet(apply_script, LuaScript("max_set", MAX_SET_LUA), LuaScript("fire", LUA_FIRE))
        self._recover = [True] * keys.shards  # re-claim own pending entries before reading new ones
        self._max_ts_written = [-1] * keys.shards  # skip the watermark write when nothing is newer
        self._in_hand: set[str] = set()  # entry ids this process is applying right now
        self._cluster = is_cluster(client)
        self.trace_links = telemetry.TraceLinks()

    @property
    def me(self) -> str:
        return self.settings.consumer

    def reconnected(self) -> None:
        """After a connection error entries may have been delivered but not seen: re-claim."""
        self._recover = [True] * self.keys.shards

    async def prepare(self) -> None:
        """Create the group on every shard (idempotent) and load the scripts."""
        await self.scripts.load(self.client)
        for shard in range(self.keys.shards):
            await self._ensure_group(shard)

    async def _ensure_group(self, shard: int) -> None:
        try:
            await self.client.xgroup_create(self.keys.stream(shard), self.keys.group,
                                            id=self.settings.group_start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---- sources of entries -------------------------------------------------------------
    async def read(self, shard: int) -> int:
        """One XREADGROUP of new entries (after re-claiming our own pending ones if needed)."""
        handled = 0
        if self._recover[shard]:
            handled += await self.recover_own(shard)
            self._recover[shard] = False
        if self.stopping.is_set():
            return handled
        try:
            reply = await self.client.xreadgroup(self.keys.group, self.me, {self.keys.stream(shard): ">"},
                                                 count=self.settings.read_count, block=self.settings.block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer group missing on %s (Redis lost its data?); recreating", self.keys.stream(shard))
            await self._ensure_group(shard)
            return handled
        for _stream, entries in reply or []:
            handled += await self.process(shard, entries)
        return handled

    async def recover_own(self, shard: int) -> int:
        """Re-claim this consumer's pending entries (a restart under the same name, a lost reply)."""
        stream, handled, cursor = self.keys.stream(shard), 0, "-"
        while not self.stopping.is_set():
            rows = await self.client.xpending_range(stream, self.keys.group, min=cursor, max="+",
                                                    count=self.settings.read_count, consumername=self.me)
            if not rows:
                break
            ids = [r["message_id"] for r in rows]
            counts = {_text(r["message_id"]): int(r["times_delivered"]) + 1 for r in rows}
            entries = await self.client.xclaim(stream, self.keys.group, self.me, min_idle_time=0, message_ids=ids)
            handled += await self.process(shard, entries, counts)
            cursor = "(" + _text(ids[-1])
        return handled

    async def claim_idle(self, shard: int) -> int:
        """XAUTOCLAIM entries idle longer than ``claim_min_idle_ms`` (their consumer died)."""
        stream, handled, cursor = self.keys.stream(shard), 0, "0-0"
        while not self.stopping.is_set():
            reply = await self.client.xautoclaim(stream, self.keys.group, self.me,
                                                 min_idle_time=self.settings.claim_min_idle_ms,
                                                 start_id=cursor, count=self.settings.read_count)
            cursor, entries = _text(reply[0]), reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            for entry_id in deleted:  # Redis >= 7 drops trimmed entries from the PEL itself
                await self._dead_letter(shard, entry_id, None,
                                        "entry was trimmed from the stream before it was applied", None, "trimmed")
            entries = [e for e in entries if _text(e[0]) not in self._in_hand]  # our own reader has them
            if entries:
                self.metrics.entries_claimed += len(entries)
                log.info("claimed %d idle entries on %s", len(entries), stream)
                handled += await self.process(shard, entries, await self._delivery_counts(shard, entries))
            if cursor == "0-0":
                break
        await self._prune_consumers(shard)
        if self.settings.trim_consumed:
            await self.trim_consumed(shard)
        return handled

    async def trim_consumed(self, shard: int) -> None:
        """Drop the entries every consumer group has read and acknowledged. Without it the
        stream grows for ever when producers do not trim; with a producer's MAXLEN instead, a
        backlog could lose entries no daemon has read yet."""
        stream = self.keys.stream(shard)
        floor: tuple[int, int] | None = None
        for g in await self.client.xinfo_groups(stream):
            ms, seq = _entry_id(g["last-delivered-id"])
            keep_from = (ms, seq + 1)  # everything up to the last delivered entry is read
            if int(g.get("pending") or 0):
                oldest = (await self.client.xpending(stream, g["name"]))["min"]
                if oldest:
                    keep_from = min(keep_from, _entry_id(oldest))  # not yet acknowledged
            floor = keep_from if floor is None else min(floor, keep_from)
        if floor is not None and floor > (0, 0):
            await self.client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=True)

    async def _prune_consumers(self, shard: int) -> None:
        """Forget consumers (daemons long gone) that own nothing: a restarted daemon is a new
        consumer, and the group would otherwise list every one that ever ran."""
        for c in await self.client.xinfo_consumers(self.keys.stream(shard), self.keys.group):
            name = _text(c["name"])
            if name != self.me and int(c["pending"]) == 0 and int(c["idle"]) > self.settings.consumer_prune_idle_ms:
                await self.client.xgroup_delconsumer(self.keys.stream(shard), self.keys.group, name)

    async def _delivery_counts(self, shard: int, entries: Sequence[Entry]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(self.keys.stream(shard), self.keys.group, min=entry_id, max=entry_id, count=1)
        counts: dict[str, int] = {}
        for rows in await pipe.execute():
            for r in rows:
                counts[_text(r["message_id"])] = int(r["times_delivered"])
        return counts

    # ---- applying -----------------------------------------------------------------------
    async def process(self, shard: int, entries: Sequence[Entry], deliveries: dict[str, int] | None = None) -> int:
        """Apply ``entries`` chunk by chunk; a stop request leaves the remaining chunks pending."""
        handled = 0
        size = self.settings.apply_chunk
        ids = {_text(e[0]) for e in entries}
        self._in_hand |= ids
        try:
            for start in range(0, len(entries), size):
                if self.stopping.is_set():
                    left = len(entries) - start
                    log.info("stopping: %d read entries left pending for another consumer", left)
                    break
                handled += await self._apply_chunk(shard, entries[start:start + size], deliveries or {})
        finally:
            self._in_hand -= ids
        return handled

    async def _apply_chunk(self, shard: int, chunk: Sequence[Entry], deliveries: dict[str, int]) -> int:
        """One chunk under one ``daemon.apply`` span, linked to the entries' producers."""
        traced = telemetry.enabled()
        links = [ln for ln in (telemetry.link_from_fields(f, entry_id=_text(i)) for i, f in chunk) if ln] \
            if traced else []
        with telemetry.span("daemon.apply", kind=SpanKind.CONSUMER, links=links, shard=shard,
                            entries=len(chunk)) as span:
            acked = await self._apply_entries(shard, chunk, deliveries, traced)
            span.set_attribute("acked", acked)
            return acked

    async def _apply_entries(self, shard: int, chunk: Sequence[Entry], deliveries: dict[str, int],
                             traced: bool) -> int:
        now = now_ms()
        good: list[tuple[bytes | str, Event, Any]] = []
        dead: list[tuple[bytes | str, Any, str, str]] = []  # (id, fields, reason, kind)
        for entry_id, fields in chunk:
            n = deliveries.get(_text(entry_id))
            if n is not None and n > self.settings.max_deliveries:
                dead.append((entry_id, fields, f"not acknowledged after {n - 1} deliveries "
                                               "(its consumers died or its effect failed each time)", "redelivered"))
                continue
            try:
                good.append((entry_id, decode_entry(fields), fields.get(EVENT_FIELD_B)))
            except MalformedEntry as exc:
                dead.append((entry_id, fields, exc.reason, "malformed"))
        acks: list[bytes | str] = []
        for entry_id, fields, reason, kind in dead:
            await self._dead_letter(shard, entry_id, fields, reason, deliveries.get(_text(entry_id)), kind)
            acks.append(entry_id)
        pipe = self.client.pipeline(transaction=False)
        queued = False
        if good:
            if traced:
                await self._remember_traces(chunk, good)
            applied, queued = await self._apply_events(shard, good, now, pipe)
            acks += applied
        # The bookkeeping the events' effects need (queue users, index open sessions, ...) and
        # then the acknowledgement. On one server a pipeline runs in order, so XACK rides along;
        # on a cluster the commands may land on other nodes in any order, so it waits.
        if acks and not self._cluster:
            pipe.xack(self.keys.stream(shard), self.keys.group, *acks)
        if len(pipe):
            for reply in await pipe.execute(raise_on_error=False):
                if is_noscript(reply):
                    await self.scripts.load(self.client)  # the watermark waits for the next chunk
                elif isinstance(reply, Exception):
                    raise reply
        if queued:
            self.on_due()  # after the queue write: the dispatcher reads the queue on its own connection
        if acks and self._cluster:
            await self.client.xack(self.keys.stream(shard), self.keys.group, *acks)
        return len(acks)

    async def _apply_events(self, shard: int, good: list[tuple[bytes | str, Event, Any]], now: int,
                            pipe: Any) -> tuple[list[bytes | str], bool]:
        """Apply the events (one script each, one round trip); queue on ``pipe`` what must
        follow them. Returns the entries to acknowledge and whether users were queued."""
        # one server: the scripts queue users and index sessions themselves (cluster: below)
        inline = None if self._cluster else shard
        calls = [self.sessionizer.apply_call(self.keys, event, now, raw, inline) for _, event, raw in good]
        replies = await self.scripts.call_many(self.client, "apply", calls)  # re-applying is harmless
        acks: list[bytes | str] = []
        due: set[str] = set()
        open_last: dict[str, int] = {}
        follows: list[tuple[str, str]] = []  # (series, user), also for redeliveries (idempotent)
        releases: list[tuple[Event, str]] = []
        first_time: list[Event] = []
        again: list[Event] = []
        applied = dup = late = 0
        max_ts = -1
        for (entry_id, event, _), reply in zip(good, replies):
            if isinstance(reply, Exception):
                if isinstance(reply, REDIS_DOWN):
                    raise reply
                self.metrics.apply_errors += 1
                log.warning("applying %s (entry %s) failed, left pending for a retry: %s",
                            event.event_id, _text(entry_id), reply)
                continue
            res = ApplyResult.from_reply(reply)
            (first_time if res.applied else again).append(event)
            applied += res.applied
            dup += not res.applied
            late += res.late
            self.metrics.sessions_closed += res.sessions_closed
            self.metrics.triggers_fired += res.triggers_fired
            if res.has_pending_triggers:
                due.add(event.user_id)
            if res.open_session_last_ts is not None:
                open_last[event.user_id] = max(open_last.get(event.user_id, -1), res.open_session_last_ts)
            max_ts = max(max_ts, event.ts)
            if res.index_follow and (series := self.sessionizer.series_of(event)) is not None:
                follows.append((series, event.user_id))
            elif event.type == "episode_release" and (series := self.sessionizer.series_of(event)) is not None:
                releases.append((event, series))
            acks.append(entry_id)
        for event, series in releases:
            due |= await self._fan_out_release(shard, event, series, now)
        if self.sink is not None and (first_time or again):
            await self.sink(first_time, again)
        for series, user in follows:
            pipe.sadd(self.keys.followers(series), user)
        if self._cluster and due:
            pipe.zadd(self.keys.due(shard), {u: now for u in due}, nx=True)
        if self._cluster and open_last:
            pipe.zadd(self.keys.open_sessions(shard), open_last)  # may go down: a pause ends a hold
        if max_ts > self._max_ts_written[shard]:
            if self._cluster:
                await self.scripts.call(self.client, "max_set", [self.keys.watermark(shard)], [max_ts])
            else:
                self.scripts.queue_sha(pipe, "max_set", [self.keys.watermark(shard)], [max_ts])
            self._max_ts_written[shard] = max_ts
        self.metrics.record_applied(applied, dup, late)
        return acks, bool(due)

    async def _remember_traces(self, chunk: Sequence[Entry], good: list[tuple[bytes | str, Event, Any]]) -> None:
        """Keep the entries' ``traceparent``s per user for the users' next cycle spans to link
        to. Before the events are applied, in a round trip of its own (telemetry only): on one
        server the apply script queues the user itself, so a cycle may start before any later
        write of this chunk. (A redelivered entry is remembered again; ``take`` dedupes.)"""
        parents = {_text(i): tp for i, f in chunk if (tp := telemetry.traceparent_of(f)) is not None}
        by_user: dict[str, list[str]] = {}
        for entry_id, event, _ in good:
            if (tp := parents.get(_text(entry_id))) is not None:
                by_user.setdefault(event.user_id, []).append(tp)
        if not by_user:
            return
        pipe = self.client.pipeline(transaction=False)
        for user, tps in by_user.items():
            self.trace_links.remember(pipe, self.keys.trace_links(user), tps)
        await pipe.execute(raise_on_error=False)  # a lost link never holds up an event

    async def _fan_out_release(self, shard: int, event: Event, series: str, now: int) -> set[str]:
        """An ``episode_release`` (a catalog event) triggers every follower of the series, once
        per follower even if the release is redelivered (a marker in the follower's applied set)."""
        followers = [_text(u) for u in await self.client.smembers(self.keys.followers(series))]
        followers = [u for u in followers if u != event.user_id]
        if not followers:
            return set()
        rules = self.sessionizer.rules
        detail = {"type": event.type, "ts": event.ts, "item_id": event.item_id, "series_id": series}
        ejson = event.model_dump_json(exclude_none=True)
        calls = [(fire_keys(self.keys, user), fire_args(
            EPISODE_RELEASED, now, detail, rules, marker=f"release:{event.event_id}",
            applied_ttl_s=self.sessionizer.sessions.applied_ttl_s, event_id=event.event_id, event_json=ejson))
            for user in followers]
        replies = await self.scripts.call_many(self.client, "fire", calls)
        fired: set[str] = set()
        for user, reply in zip(followers, replies):
            if isinstance(reply, Exception):
                raise reply  # the entry stays unacknowledged; the retry fires only the missing ones
            if int(reply):
                fired.add(user)
        self.metrics.triggers_fired += len(fired)
        # queue everyone (also those already fired by an earlier delivery that died before queueing)
        await self.client.zadd(self.keys.due(shard), {u: now for u in followers}, nx=True)
        return fired

    async def _dead_letter(self, shard: int, entry_id: bytes | str, fields: Any, reason: str,
                           deliveries: int | None, kind: str) -> None:
        """Park an entry with the reason; the caller acknowledges it. (At least once: a crash
        between this XADD and the XACK can record the same entry twice.) ``kind`` (malformed,
        redelivered, trimmed) labels the dead-letter metric; the reason stays in the stream."""
        await self.client.xadd(self.keys.dead_letter, {
            "reason": reason,
            "stream": self.keys.stream(shard),
            "entry_id": _text(entry_id),
            "group": self.keys.group,
            "consumer": self.me,
            "deliveries": str(deliveries or 1),
            "raw": describe_fields(fields),
            "dead_at_ms": str(now_ms()),
        }, maxlen=self.settings.dead_letter_maxlen, approximate=True)
        self.metrics.dead_letters += 1
        telemetry.count_dead_letter(kind)
        log.warning("dead letter %s from %s: %s", _text(entry_id), self.keys.stream(shard), reason)

    async def measure_lag(self) -> tuple[int | None, int]:
        """(entries behind the group, entries pending) summed over shards. ``lag`` comes from
        XINFO GROUPS (Redis >= 7); on older servers it is counted, capped at 10,000 per shard."""
        lag_total: int | None = 0
        pending_total = 0
        for shard in range(self.keys.shards):
            found = await group_lag(self.client, self.keys.stream(shard), self.keys.group)
            if found is None:
                continue
            lag, pending = found
            pending_total += pending
            if lag_total is not None:
                lag_total += lag
        return lag_total, pending_total


async def group_lag(client: AsyncRedisClient, stream: str, group: str) -> tuple[int, int] | None:
    """(entries the group has not read yet, entries read and not acknowledged) on one stream, or
    None when the group does not exist there. ``lag`` comes from XINFO GROUPS (Redis >= 7); on
    older servers it is counted, capped at 10,000."""
    for g in await client.xinfo_groups(stream):
        if _text(g["name"]) != group:
            continue
        lag = g.get("lag")
        if lag is None:
            last = _text(g.get("last-delivered-id") or "0-0")
            lag = len(await client.xrange(stream, min="(" + last, max="+", count=10_000))
        return int(lag), int(g.get("pending") or 0)
    return None
