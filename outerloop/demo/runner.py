"""The daemon's runner in the demo: the real outer loop (built-in planner and agents, plus the
demo's :mod:`~outerloop.demo.agents`), with two additions the demo needs to tell its story.

- **A run log.** After every cycle one entry goes to the Redis stream :func:`run_log_key`: the
  user, the triggers, the plan, every agent's :class:`~outerloop.budgets.record.RunRecord`
  (killed runs included) and the rows committed. The demo reads it to show a kill and to sum
  up what the daemon did; a report can be built from it.
- **Manual requests.** :func:`request_agents` queues a ``manual`` scheduler trigger naming
  agents (with scalar details, e.g. ``work_ms``); the cycle hands it to the planner as the
  agents' ``manual`` trigger, so exactly those agents run for that user.

The daemon loads it by name: ``outerloop daemon --runner outerloop.demo.runner:demo_runner``,
with the artifacts in ``OUTERLOOP_ARTIFACTS_DIR`` (a runner factory gets only the client and
the keys).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from outerloop.agents.contracts import CycleResult, Trigger
from outerloop.agents.loop import OuterLoop
from outerloop.errors import UserInputError
from outerloop.scheduler.dispatch import REDIS_DOWN, fire_args, fire_keys, now_ms
from outerloop.scheduler.keys import SchedulerKeys, shard_of
from outerloop.scheduler.runners import OuterLoopRunner
from outerloop.scheduler.triggers import LUA_FIRE, TriggerRules
from outerloop.storage import Keys

log = logging.getLogger(__name__)

MANUAL = "manual"  # the scheduler trigger name of a request naming agents
RUN_LOG_MAXLEN = 100_000


def run_log_key(keys: type[Keys]) -> str:
    """The stream of per-cycle entries (field ``cycle``: JSON)."""
    return f"{keys.prefix}:demo:runs"


def as_manual(trigger: Trigger) -> Trigger:
    """A request from :func:`request_agents` reaches the loop as an ``event`` trigger without
    events (the scheduler's generic mapping); turn it back into the agents' ``manual`` one."""
    if trigger.kind != "event" or trigger.detail.get("trigger") != MANUAL:
        return trigger
    agents = [a for a in str(trigger.detail.get("agents", "")).split(",") if a]
    return Trigger(kind="manual", at_ms=trigger.at_ms, agents=agents, tz_offset_min=trigger.tz_offset_min,
                   detail=dict(trigger.detail))


def cycle_entry(result: CycleResult, triggers: Sequence[Trigger], at_ms: int) -> dict[str, Any]:
    """What the run log keeps of one cycle (JSON-ready)."""
    return {
        "user": result.user_id,
        "at_ms": at_ms,
        "elapsed_ms": round(result.elapsed_ms, 3),
        "triggers": [str(t.detail.get("trigger", t.kind)) for t in triggers],
        "plan": result.plan.rationale,
        "records": [r.to_dict() for r in result.records],
        "rows_committed": sorted(result.rows_committed),
        "notes": list(result.notes),
    }


class DemoLoop(OuterLoop):
    """``OuterLoop`` whose cycles take manual requests and leave an entry in the run log."""

    async def run_cycle(self, user_id: str, triggers: Sequence[Trigger] = (), *,
                        now_ms: int | None = None) -> CycleResult:
        triggers = [as_manual(t) for t in triggers]
        result = await super().run_cycle(user_id, triggers, now_ms=now_ms)
        entry = cycle_entry(result, triggers, self.clock_ms())
        try:  # the log is for people: a failed append never fails the cycle
            assert self.deps is not None
            await self.deps.redis.xadd(run_log_key(self.keys), {"cycle": json.dumps(entry)},
                                       maxlen=RUN_LOG_MAXLEN, approximate=True)
        except REDIS_DOWN as exc:
            log.warning("run log: could not record the cycle of %s: %s", user_id, exc)
        return result


def demo_runner(client: Any, keys: SchedulerKeys) -> OuterLoopRunner:
    """The ``--runner`` factory: :class:`DemoLoop` with the built-in agents and ``deep_rerank``
    on the artifacts in ``OUTERLOOP_ARTIFACTS_DIR``, sharing the daemon's client and keys."""
    from outerloop.config import get_settings
    from outerloop.demo.agents import deep_rerank
    from outerloop.inner_loop.artifacts import Artifacts

    artifacts = Path(get_settings().artifacts_dir)
    if not (artifacts / "manifest.json").is_file():
        raise UserInputError(f"demo runner: no trained artifacts in {artifacts} (set OUTERLOOP_ARTIFACTS_DIR)")
    loop = DemoLoop(Artifacts.load(artifacts), redis=client, keys=keys.base, agents=[deep_rerank])
    return OuterLoopRunner(loop, client, keys)


# --- what the demo process calls (blocking client) ----------------------------------------------

def request_agents(client: Any, keys: SchedulerKeys, user_id: str, agents: Sequence[str],
                   **detail: int | float | str) -> None:
    """Ask the daemon to run ``agents`` for ``user_id`` now (one ``manual`` trigger, coalesced
    with the user's other pending triggers, then the user queued as due)."""
    now = now_ms()
    args = fire_args(MANUAL, now, {"agents": ",".join(agents), **detail}, TriggerRules())
    client.eval(LUA_FIRE, 4, *fire_keys(keys, user_id), *args)
    client.zadd(keys.due(shard_of(user_id, keys.shards)), {user_id: now}, nx=True)


def read_run_log(client: Any, keys: type[Keys], after: str = "-") -> list[tuple[str, dict[str, Any]]]:
    """Run-log entries after the entry id ``after`` (``-``: all), oldest first."""
    start = "-" if after == "-" else f"({after}"
    out = []
    for entry_id, fields in client.xrange(run_log_key(keys), min=start, max="+"):
        raw = fields.get(b"cycle") or fields.get("cycle")
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        out.append((eid, json.loads(raw)))
    return out


def last_run_log_id(client: Any, keys: type[Keys]) -> str:
    """The newest entry id, or ``0-0`` when the log is empty (a cursor for :func:`read_run_log`)."""
    newest = client.xrevrange(run_log_key(keys), count=1)
    if not newest:
        return "0-0"
    eid = newest[0][0]
    return eid.decode() if isinstance(eid, bytes) else eid
