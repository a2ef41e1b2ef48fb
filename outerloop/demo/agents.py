"""The demo's own agent. It exists to show budget enforcement, and nothing else.

``deep_rerank`` is what a team might plug in through the SDK: a CPU-bound re-ranker declared
``isolated=True``, so it runs in a worker process that is SIGKILLed at its deadline. It builds
an "Up next" row from what the user is in the middle of (the next episodes memory knows about,
then titles started and not finished), after an expensive scoring pass whose cost the request
dials: the ``work_ms`` of the manual trigger that asked for it (see
:func:`outerloop.demo.runner.request_agents`). ``outerloop demo`` runs it once well within its
250 ms budget (the row is committed) and once far past it: that run is killed at the deadline,
recorded with its overrun, never retried, and its staged row is never written, so the inner
loop keeps serving the row of the run that finished in time.

The planner schedules it only when asked by name (``triggers=("manual",)``): on its own it
never runs.
"""

from __future__ import annotations

import time

from outerloop.agents.sdk import IsolatedContext, agent
from outerloop.contracts.budget import Budget
from outerloop.data.schema import ACTION_ID
from outerloop.memory.facts import ContinueWatching

DEMO_AGENT = "deep_rerank"
DEMO_ROW = "deep_rerank"
DEMO_BUDGET_MS = 250.0
_STARTED = frozenset({ACTION_ID["play"], ACTION_ID["pause"], ACTION_ID["seek"], ACTION_ID["add_to_list"]})


def requested_work_ms(ctx: IsolatedContext) -> float:
    """The scoring cost the manual request asked for (0 when none did)."""
    asked = [float(t.detail.get("work_ms", 0)) for t in ctx.triggers if t.kind == "manual"]
    return max(asked, default=0.0)


def burn_cpu(ms: float) -> None:
    """Busy-loop for ``ms``: pure CPU that never yields, so only a process kill can stop it."""
    end = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < end:
        x = (x * 31 + 7) % 1_000_003


@agent(name=DEMO_AGENT, budget=Budget(latency_ms=DEMO_BUDGET_MS, max_tool_calls=0, max_llm_tokens=0),
       memory_scopes=[ContinueWatching], rows=(DEMO_ROW,), triggers=("manual",), isolated=True)
def deep_rerank(ctx: IsolatedContext) -> int:
    """Demo agent (shows budget enforcement): an "Up next" row from the next episodes memory
    knows about and titles started but not finished, after a CPU-bound scoring pass whose cost
    the manual request sets (``work_ms``)."""
    work_ms = requested_work_ms(ctx)
    burn_cpu(work_ms)
    p = ctx.payload
    nxt = sorted((f for f in ctx.memory() if isinstance(f, ContinueWatching)), key=lambda f: -f.version)
    picks = [f.next_item_id for f in nxt]
    for item, action in zip(reversed(p.items.tolist()), reversed(p.actions.tolist())):  # newest first
        if int(action) in _STARTED:
            picks.append(int(item))
    picks = [i for i in dict.fromkeys(picks) if i not in p.seen][:20]
    if picks:
        ctx.emit_row(DEMO_ROW, title="Up next, carefully re-ranked",
                     reason=f"{DEMO_AGENT}: scored for {work_ms:.0f} ms of CPU (demo of budget enforcement)",
                     items=[(i, 1.0 - 0.01 * r) for r, i in enumerate(picks)])
    return len(picks)
