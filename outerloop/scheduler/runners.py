"""Cycle runners the daemon can drive: the real outer loop behind an adapter, and a small
row-refresh runner (a real cycle that writes a row) for tests, benchmarks and set-ups without
trained agents.

The daemon only knows :class:`~outerloop.scheduler.dispatch.CycleRunner`; a runner is handed the
user's coalesced triggers (:class:`~outerloop.scheduler.triggers.PendingTrigger`), whose names are
the agents' trigger kinds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outerloop import telemetry
from outerloop.clock import now_ms
from outerloop.contracts.events import Event
from outerloop.contracts.keys import Keys, SchedulerKeys, control_key
from outerloop.contracts.rows import Row
from outerloop.contracts.triggers import LATE_NIGHT_SESSION, SESSION_CLOSED
from outerloop.scheduler.control import ControlState, ControlledPlanner
from outerloop.scheduler.dispatch import CycleOutcome
from outerloop.scheduler.journal import CycleJournal
from outerloop.scheduler.triggers import PendingTrigger
from outerloop.storage.clients import AsyncRedisClient

log = logging.getLogger(__name__)



def queue_refresh_log(pipe: Any, refresh_log: str, *, user_id: str, run_id: str, started_ms: int,
                      triggers: Sequence[PendingTrigger], committed: Sequence[str], planned: Sequence[str],
                      runs: Sequence[tuple[str, str]] = ()) -> None:
    """Queue one entry of a cycle's refresh log (benchmarks and tests) on ``pipe``.

    The entry id is the server's clock when the entry was written, after the rows were committed:
    an upper bound on when they became visible. Fields: ``user``, ``run_id``, ``started_ms`` (the
    cycle started, before it read the user's state), ``first_fired_ms`` (its earliest trigger),
    ``event_ids`` (every source event of its triggers), ``triggers`` (names), ``rows`` (row ids
    committed), ``planned`` (row ids the cycle set out to produce), ``runs`` (``agent:outcome``
    per agent run) and ``session_end_ts`` (event time of the newest closed session among its
    triggers, or empty)."""
    session_end = [int(t.detail["end_ts"]) for t in triggers
                   if t.name in (SESSION_CLOSED, LATE_NIGHT_SESSION) and t.detail.get("end_ts") is not None]
    pipe.xadd(refresh_log, {
        "user": user_id, "run_id": run_id, "started_ms": str(started_ms),
        "first_fired_ms": str(min((t.first_ms for t in triggers), default=0)),
        "event_ids": ",".join(sorted({i for t in triggers for i in t.event_ids})),
        "triggers": ",".join(t.name for t in triggers),
        "rows": ",".join(committed), "planned": ",".join(dict.fromkeys(planned)),
        "runs": ",".join(f"{agent}:{outcome}" for agent, outcome in runs),
        "session_end_ts": str(max(session_end)) if session_end else "",
    })


class RowRefreshRunner:
    """Writes one "recent" row from the user's latest items: the smallest real cycle.

    ``work_ms`` simulates agent time (to exercise concurrency limits and graceful stop).
    ``refresh_log``: a stream key; right behind each row write, one entry records the user, the
    source event ids and when the cycle started (the entry id is the commit time), so a
    benchmark can measure event-to-row freshness. The write is a ``row.write`` span, a child of
    the daemon's cycle span, so a trace shows where the refreshed row came from.
    """

    ROW_ID = "recent"

    def __init__(self, client: AsyncRedisClient, *, keys: type[Keys] = Keys, row_ttl_s: float = 3_600.0, work_ms: float = 0.0,
                 refresh_log: str | None = None, produced_by: str = "scheduler.row_refresh") -> None:
        self.client = client
        self.keys = keys
        self.row_ttl_s = row_ttl_s
        self.work_ms = work_ms
        self.refresh_log = refresh_log
        self.produced_by = produced_by

    async def __call__(self, user_id: str, triggers: Sequence[PendingTrigger]) -> CycleOutcome:
        if self.work_ms > 0:
            await asyncio.sleep(self.work_ms / 1000)
        items: list[int] = []
        for token in reversed(await self.client.lrange(self.keys.history(user_id), -50, -1)):
            item = int(token.split(b":", 1)[0])
            if item not in items:
                items.append(item)
        if not items:  # no history (yet): the triggering events
            for trig in triggers:
                for ev in reversed(trig.events):
                    if ev.item_id is not None and ev.item_id not in items:
                        items.append(ev.item_id)
        run_id = uuid.uuid4().hex
        now = now_ms()
        row = Row(
            row_id=self.ROW_ID,
            title="Pick up where you left off",
            reason="refreshed on " + ", ".join(t.name for t in triggers),
            items=[(item, round(1.0 / (rank + 1), 4)) for rank, item in enumerate(items[:20])],
            produced_by=self.produced_by,
            run_id=run_id,
            model_version="none",
            created_at=now,
            expires_at=now + int(self.row_ttl_s * 1000),
        )
        with telemetry.span("row.write", user_id=user_id, row_id=self.ROW_ID, run_id=run_id, items=len(row.items)):
            if not self.refresh_log:
                await self.client.hset(self.keys.rows(user_id), self.ROW_ID, row.model_dump_json())
            else:
                # the log entry rides in the same round trip, behind the row: on one server the
                # commands run in order, so the entry's id (the server's clock, ms) is a time at
                # which the row was already visible
                pipe = self.client.pipeline(transaction=False)
                pipe.hset(self.keys.rows(user_id), self.ROW_ID, row.model_dump_json())
                queue_refresh_log(pipe, self.refresh_log, user_id=user_id, run_id=run_id, started_ms=now,
                                  triggers=triggers, committed=[self.ROW_ID], planned=[self.ROW_ID])
                await pipe.execute()
        return CycleOutcome(status="ok", rows_committed=1, run_id=run_id, refresh_at_ms=row.expires_at)


class OuterLoopRunner:
    """Adapter: the daemon's runner protocol over ``OuterLoop.run_cycle``, and the daemon's
    event sink feeding the loop's co-watch graph and trending counts (:meth:`ingest`).

    Each cycle reads the operators' control (:mod:`outerloop.scheduler.control`: paused agents,
    budget overrides) in the same round trip as the user's profile and plans with it, then
    leaves its entry in the journal the console reads (:mod:`outerloop.scheduler.journal`).

    ``refresh_log``: a stream key; after each cycle, one entry (:func:`queue_refresh_log`) records
    its source events, the rows it planned and committed and each agent run's outcome, so a
    benchmark or a test can measure event-to-row freshness and session coverage of the real loop.
    A failed log write is logged and never fails the cycle (its rows are committed by then)."""

    def __init__(self, loop: Any, client: AsyncRedisClient, keys: SchedulerKeys, *, refresh_log: str | None = None) -> None:
        self.loop = loop
        self.client = client
        self.keys = keys
        self.refresh_log = refresh_log
        self.control = ControlState()
        self.journal = CycleJournal(client, keys)
        loop.planner = ControlledPlanner(loop.planner, lambda: self.control.current,
                                         slack_ms=loop.config.node_slack_ms)
        if getattr(loop, "deps", None) is not None:  # (a loop started before it was handed over)
            loop.deps.planner = loop.planner

    @property
    def agent_names(self) -> list[str]:
        """The agents this runner's loop can run (published in the daemon's heartbeat)."""
        return list(self.loop.agents.names())

    async def ingest(self, applied: Sequence[Event], redelivered: Sequence[Event]) -> None:
        """Newly applied events go to ``OuterLoop.ingest``; redeliveries only to the co-watch
        graph, which is idempotent per event (the trending counts are not, so a redelivered
        event is never counted twice there; one lost to a crash is simply not counted)."""
        if applied:
            await self.loop.ingest(applied)
        if redelivered:
            deps = (await self.loop.start()).deps
            await self.loop.co_watch.apply(deps.redis, list(redelivered))

    async def aclose(self) -> None:
        await self.loop.aclose()

    async def __call__(self, user_id: str, triggers: Sequence[PendingTrigger]) -> CycleOutcome:
        started = now_ms()
        pipe = self.client.pipeline(transaction=False)
        # The user's time zone, for the agents' daypart rules at cycle time. Read here although
        # the sessionizer's Lua reads the same profile field when it closes a session: its
        # late-night rule runs inside the atomic script, so it cannot be handed the value from
        # here, and most cycles (a finished title, a sweep, a manual request) close no session,
        # so there is no value of the Lua's to hand on. It rides in the control read's round trip.
        pipe.hget(self.keys.profile(user_id), "utc_offset_min")
        pipe.hgetall(control_key(self.keys.base))
        raw, control = await pipe.execute()
        self.control.update(control)
        tz = int(raw) if raw is not None else 0
        cycle_triggers = [t for p in triggers if (t := p.as_trigger(tz)) is not None]
        result = await self.loop.run_cycle(user_id, cycle_triggers)
        if self.refresh_log:
            await self._log(user_id, triggers, result, started)
        await self.journal.record(user_id, triggers, result, started_ms=started, loop=self.loop)
        killed = tuple(r.agent for r in result.records if r.outcome == "killed")
        expiries = [row.expires_at for row in result.rows_committed.values()]
        return CycleOutcome(
            status="killed" if killed else "ok",
            rows_committed=len(result.rows_committed),
            killed_agents=killed,
            run_id=next((r.run_id for r in result.records), None),
            detail="; ".join(result.notes),
            refresh_at_ms=min(expiries) if expiries else None,
        )

    async def _log(self, user_id: str, triggers: Sequence[PendingTrigger], result: Any, started_ms: int) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            queue_refresh_log(pipe, str(self.refresh_log), user_id=user_id,
                              run_id=next((r.run_id for r in result.records), ""), started_ms=started_ms,
                              triggers=triggers, committed=list(result.rows_committed),
                              planned=[r for p in result.plans for s in p.steps for r in s.rows],
                              runs=[(r.agent, r.outcome) for r in result.records])
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - a measurement aid: it never fails a committed cycle
            log.warning("refresh log: could not record the cycle of %s: %s", user_id, exc)


@dataclass(frozen=True, slots=True)
class RunnerSetup:
    """What a ``--runner MODULE:FACTORY`` factory is given: ``factory(setup) -> runner``.

    The daemon's client and keys, the artifacts directory (``--artifacts``), the agents and
    tools of ``--agents`` / ``--tools`` and the ``--refresh-log`` stream (None: no log).
    :meth:`outer_loop` builds the loop they describe.
    """

    client: AsyncRedisClient
    keys: SchedulerKeys
    artifacts_dir: Path | None = None
    agents: Sequence[Any] = ()
    tools: Sequence[Any] = ()
    refresh_log: str | None = None

    def artifacts(self) -> Any:
        from outerloop.errors import UserInputError
        from outerloop.inner_loop.model.artifacts import Artifacts

        if self.artifacts_dir is None:
            raise UserInputError("this runner needs trained artifacts (--artifacts DIR)")
        return Artifacts.load(self.artifacts_dir)

    def outer_loop(self, cls: Any = None, **kwargs: Any) -> Any:
        """``OuterLoop`` (or the subclass ``cls``) on the artifacts with the built-in agents plus
        ``agents`` and ``tools``, sharing the daemon's client and key namespace."""
        from outerloop.agents.loop import OuterLoop

        return (cls or OuterLoop)(self.artifacts(), redis=self.client, keys=self.keys.base,
                                  agents=list(self.agents), tools=list(self.tools), **kwargs)


def outer_loop_runner(setup: RunnerSetup) -> OuterLoopRunner:
    """The real outer loop (built-in agents and the setup's own) on trained artifacts."""
    return OuterLoopRunner(setup.outer_loop(), setup.client, setup.keys, refresh_log=setup.refresh_log)
