"""The daemon's runner in the demo: the real outer loop (built-in planner and agents, plus the
agents of ``--agents``, in the demo :mod:`~outerloop.demo.agents`) with a run log.

- **A run log.** After every cycle one entry goes to the Redis stream :func:`run_log_key`: the
  user, the triggers, the plan, every agent's :class:`~outerloop.contracts.run_record.RunRecord`
  (killed runs included) and the rows committed. The demo reads it to show a kill and to sum
  up what the daemon did; a report can be built from it.
- **Manual requests.** :func:`request_agents` is :func:`outerloop.scheduler.refresh.request_refresh_sync`:
  the named agents get their ``manual`` trigger with the request's detail (e.g. ``work_ms``).

The daemon loads it by name: ``outerloop daemon --artifacts DIR --agents outerloop.demo.agents:deep_rerank
--runner outerloop.demo.runner:demo_runner``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from outerloop.agents.cycle import CycleResult
from outerloop.agents.loop import OuterLoop
from outerloop.contracts.keys import Keys, SchedulerKeys
from outerloop.contracts.triggers import Trigger
from outerloop.scheduler.dispatch import REDIS_DOWN
from outerloop.scheduler.refresh import request_refresh_sync
from outerloop.scheduler.runners import OuterLoopRunner, RunnerSetup
from outerloop.storage.clients import RedisClient

log = logging.getLogger(__name__)

RUN_LOG_MAXLEN = 100_000


def run_log_key(keys: type[Keys]) -> str:
    """The stream of per-cycle entries (field ``cycle``: JSON)."""
    return f"{keys.prefix}:demo:runs"


def cycle_entry(result: CycleResult, triggers: Sequence[Trigger], at_ms: int) -> dict[str, Any]:
    """What the run log keeps of one cycle (JSON-ready)."""
    return {
        "user": result.user_id,
        "at_ms": at_ms,
        "elapsed_ms": round(result.elapsed_ms, 3),
        "triggers": [t.kind for t in triggers],
        "plan": result.plan.rationale,
        "records": [r.to_dict() for r in result.records],
        "rows_committed": sorted(result.rows_committed),
        "notes": list(result.notes),
    }


class DemoLoop(OuterLoop):
    """``OuterLoop`` whose cycles leave an entry in the run log."""

    async def run_cycle(self, user_id: str, triggers: Sequence[Trigger] = (), *,
                        now_ms: int | None = None) -> CycleResult:
        result = await super().run_cycle(user_id, triggers, now_ms=now_ms)
        entry = cycle_entry(result, triggers, self.clock_ms())
        try:  # the log is for people: a failed append never fails the cycle
            assert self.deps is not None
            await self.deps.redis.xadd(run_log_key(self.keys), {"cycle": json.dumps(entry)},
                                       maxlen=RUN_LOG_MAXLEN, approximate=True)
        except REDIS_DOWN as exc:
            log.warning("run log: could not record the cycle of %s: %s", user_id, exc)
        return result


def demo_runner(setup: RunnerSetup) -> OuterLoopRunner:
    """The ``--runner`` factory: :class:`DemoLoop` with the built-in agents and those of
    ``--agents`` on ``--artifacts``, sharing the daemon's client and keys."""
    return OuterLoopRunner(setup.outer_loop(DemoLoop), setup.client, setup.keys)


# --- what the demo process calls (blocking client) ----------------------------------------------

def request_agents(client: RedisClient, keys: SchedulerKeys, user_id: str, agents: Sequence[str],
                   **detail: int | float | str) -> None:
    """Ask the daemon to run ``agents`` for ``user_id`` now (their ``manual`` trigger, with ``detail``)."""
    request_refresh_sync(client, keys, user_id, agents, detail)


def read_run_log(client: RedisClient, keys: type[Keys], after: str = "-") -> list[tuple[str, dict[str, Any]]]:
    """Run-log entries after the entry id ``after`` (``-``: all), oldest first."""
    start = "-" if after == "-" else f"({after}"
    out = []
    for entry_id, fields in client.xrange(run_log_key(keys), min=start, max="+"):
        raw = fields.get(b"cycle") or fields.get("cycle")
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        out.append((eid, json.loads(raw)))
    return out


def last_run_log_id(client: RedisClient, keys: type[Keys]) -> str:
    """The newest entry id, or ``0-0`` when the log is empty (a cursor for :func:`read_run_log`)."""
    newest = client.xrevrange(run_log_key(keys), count=1)
    if not newest:
        return "0-0"
    eid = newest[0][0]
    return eid.decode() if isinstance(eid, bytes) else eid
