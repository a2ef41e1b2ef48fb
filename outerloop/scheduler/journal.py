"""What the daemons publish for people to look at (the console): every cycle, every agent run,
each daemon's caches and agents. Written in one round trip per cycle, after the cycle's rows are
committed; a failed write is logged and never fails the cycle.

Keys (all under the deployment's prefix):

- ``user journal`` (LIST per user, hash-tagged with the user's other keys, newest first, capped
  at :data:`CYCLES_PER_USER`): one JSON entry per cycle: the triggers with their source events,
  every plan (steps, reasons, policy), every :class:`~outerloop.contracts.run_record.RunRecord`, the
  rows committed (row -> run id), the notes (paused agents among them), and the time from the
  daemon applying the triggering event to the commit (``refresh_ms``).
- ``runs`` (STREAM, capped at :data:`RUNS_MAXLEN`): one entry per cycle with its run records in
  short form; the console's distributions and the plan-cache hit rate read the recent ones.
- ``counts`` (HASH ``agent|outcome`` -> runs since the start) and one HASH per minute with the
  same fields (kept a day): totals and runs or kills over time without reading the stream.
- ``daemons`` (HASH ``host:pid`` -> JSON, refreshed at most every second by each daemon): the
  loop's cache hit rates, its agents (declared budget, rows, triggers, isolated) and the stream
  settings (shards, group) the console needs to measure lag.

On a cluster the keys written per cycle are spread by the user's stream shard: with ``shards``
> 1 the ``runs`` stream, the ``counts`` hash and the minute hashes of shard ``i`` carry the hash
tag ``{s<i>}`` (the tag of the shard's stream and indexes, so a shard's scheduler load is one
unit to place on a node), and the console merges the shards' keys
(:func:`outerloop.contracts.keys.runs_keys`...). One shard keeps the plain names. Every write is
a non-transactional pipeline, which a cluster client splits by node, so no command spans two
slots.

``daemons`` stays one key, on purpose: it is written at most once a second per daemon (not per
cycle or event), and it is where the console learns the shard count that names every other
journal key, so it cannot itself be named by shard. The operators' control hash and its audit
log (:mod:`outerloop.scheduler.control`) stay one slot too (``{control}``): a change and its
audit entry are one MULTI, which needs one slot, and they change at an operator's pace.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from outerloop.clock import now_ms
from outerloop.contracts.keys import (
    SchedulerKeys,
    counts_key,
    daemons_key,
    minute_key,
    runs_key,
    shard_of,
    user_journal_key,
)
from outerloop.scheduler.control import max_latency_ms
from outerloop.storage.clients import AsyncRedisClient

if TYPE_CHECKING:
    from outerloop.agents.cycle import CycleResult
    from outerloop.scheduler.triggers import PendingTrigger

log = logging.getLogger(__name__)

CYCLES_PER_USER = 30
USER_JOURNAL_TTL_S = 7 * 24 * 3600
RUNS_MAXLEN = 20_000
MINUTE_TTL_S = 24 * 3600
EVENTS_PER_TRIGGER = 10
IDS_PER_TRIGGER = 20


def instance_name() -> str:
    """``host:pid``, as the heartbeat reports them (so the console can join the two)."""
    return f"{socket.gethostname()}:{os.getpid()}"



def _scalar(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


def trigger_doc(t: "PendingTrigger") -> dict[str, Any]:
    events = []
    for e in list(t.events)[-EVENTS_PER_TRIGGER:]:
        events.append({"event_id": e.event_id, "type": e.type, "item_id": e.item_id, "ts": e.ts})
    return {"name": t.name, "count": t.count, "first_ms": t.first_ms, "last_ms": t.last_ms,
            "event_ids": list(t.event_ids[-IDS_PER_TRIGGER:]), "events": events,
            "detail": {k: _scalar(v) for k, v in t.detail.items()}}


def cycle_entry(user_id: str, triggers: Sequence["PendingTrigger"], result: "CycleResult", *, started_ms: int,
                done_ms: int, daemon: str) -> dict[str, Any]:
    """One cycle as the console shows it (JSON-ready)."""
    records = [r.to_dict() for r in result.records]
    fired = [t.first_ms for t in triggers if t.event_ids and t.first_ms]
    refresh = done_ms - min(fired) if fired and result.rows_committed else None
    return {
        "user": user_id, "daemon": daemon, "started_ms": started_ms, "done_ms": done_ms,
        "elapsed_ms": round(result.elapsed_ms, 3),
        "triggers": [trigger_doc(t) for t in triggers],
        "plans": [{"policy": p.policy, "rationale": p.rationale,
                   "steps": [{"agent": s.agent, "rows": list(s.rows), "reason": s.reason,
                              "budget_ms": s.budget.latency_ms if s.budget is not None else None}
                             for s in p.steps]} for p in result.plans],
        "plan_cache_hit": result.plan_cache_hit,
        "records": records,
        "committed": {rid: {"run_id": row.run_id, "produced_by": row.produced_by, "title": row.title,
                            "items": len(row.items)} for rid, row in result.rows_committed.items()},
        "notes": list(result.notes),
        "refresh_ms": refresh,
    }


def short_records(records: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """``[agent, outcome, elapsed_ms, budget_ms, overrun_ms, retries, tool_calls, run_id]`` per run."""
    return [[r["agent"], r["outcome"], round(float(r["elapsed_ms"]), 3), float(r["budget_ms"]),
             round(float(r.get("overrun_ms") or 0.0), 3), int(r.get("retries") or 0), int(r.get("tool_calls") or 0),
             r["run_id"]] for r in records]


class CycleJournal:
    """Writes what one daemon's cycles did (see the module docstring)."""

    def __init__(self, client: AsyncRedisClient, keys: SchedulerKeys, *, stats_interval_s: float = 1.0) -> None:
        self.client = client
        self.keys = keys
        self.name = instance_name()
        self.stats_interval_s = stats_interval_s
        self._stats_at = 0.0
        self.failures = 0

    async def record(self, user_id: str, triggers: Sequence["PendingTrigger"], result: "CycleResult", *,
                     started_ms: int, loop: Any = None) -> dict[str, Any] | None:
        done = now_ms()
        base = self.keys.base
        shard, shards = shard_of(user_id, self.keys.shards), self.keys.shards
        try:
            entry = cycle_entry(user_id, triggers, result, started_ms=started_ms, done_ms=done, daemon=self.name)
            pipe = self.client.pipeline(transaction=False)
            jkey = user_journal_key(base, user_id)
            pipe.lpush(jkey, json.dumps(entry, separators=(",", ":")))
            pipe.ltrim(jkey, 0, CYCLES_PER_USER - 1)
            pipe.expire(jkey, USER_JOURNAL_TTL_S)
            pipe.xadd(runs_key(base, shard, shards), {
                "user": user_id, "at_ms": str(done), "plan_cache_hit": "1" if result.plan_cache_hit else "0",
                "refresh_ms": "" if entry["refresh_ms"] is None else str(entry["refresh_ms"]),
                "records": json.dumps(short_records(entry["records"]), separators=(",", ":")),
            }, maxlen=RUNS_MAXLEN, approximate=True)
            if entry["records"]:
                mkey = minute_key(base, done // 60_000, shard, shards)
                for r in entry["records"]:
                    f = f"{r['agent']}|{r['outcome']}"
                    pipe.hincrby(counts_key(base, shard, shards), f, 1)
                    pipe.hincrby(mkey, f, 1)
                pipe.expire(mkey, MINUTE_TTL_S)
            if loop is not None and time.monotonic() - self._stats_at >= self.stats_interval_s:
                self._stats_at = time.monotonic()
                pipe.hset(daemons_key(base), self.name, json.dumps(self.daemon_doc(loop), separators=(",", ":")))
            await pipe.execute()
            return entry
        except Exception as exc:  # noqa: BLE001 - the journal is for people: it never fails a cycle
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("journal: could not record the cycle of %s (%d failures): %s", user_id, self.failures, exc)
            return None

    def daemon_doc(self, loop: Any) -> dict[str, Any]:
        """This daemon's loop: cache hit rates, agents, stream settings (JSON-ready)."""
        stats = loop.stats()
        memory = None
        deps = getattr(loop, "deps", None)
        if deps is not None:
            st = deps.memory_cache.stats
            total = st.hits + st.refetches
            memory = round(st.hits / total, 4) if total else None
        slack = float(loop.config.node_slack_ms)
        agents = {}
        for spec in loop.agents:
            b = spec.budget
            agents[spec.name] = {"budget_ms": b.latency_ms, "max_tool_calls": b.max_tool_calls,
                                 "max_llm_tokens": b.max_llm_tokens, "rows": list(spec.rows),
                                 "triggers": list(spec.triggers), "isolated": spec.isolated,
                                 "max_override_ms": max_latency_ms(b.latency_ms, slack)}
        return {"name": self.name, "at_ms": now_ms(), "shards": self.keys.shards, "group": self.keys.group,
                "cycles": stats["cycles"], "plan_cache_hit_rate": stats["plan_cache_hit_rate"],
                "tool_cache_hit_rate": stats["tool_cache_hit_rate"], "memory_cache_hit_rate": memory,
                "tool_cache_by_tool": stats["tool_cache_by_tool"], "agents": agents}
