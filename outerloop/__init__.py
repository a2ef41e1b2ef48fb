"""outerloop: agents around your recommender, never in its request path.

The public SDK on one screen (imported lazily, so ``import outerloop`` stays light):

- :func:`agent` / :func:`tool`: declare an agent (``async def f(ctx: AgentContext)``, or
  ``isolated=True`` for CPU-bound code, which gets an :class:`IsolatedContext`) or a typed tool
  (``async def f(args: In, deps: ToolDeps) -> Out``, docstring = description);
- :class:`Budget`: what one agent run may spend (latency, tool calls, LLM tokens); overrun =
  killed, never retried, nothing committed;
- :class:`OuterLoop`: built-in agents + yours in one LangGraph graph;
  ``await loop.run_cycle(user_id, triggers) -> CycleResult``; :func:`run_daemon` runs it in the
  daemon (what ``outerloop daemon --agents ... --tools ...`` does), with :class:`DaemonSettings`;
- :class:`Artifacts` (``Artifacts.load(dir)``: the trained model, index and catalog) and
  :class:`Event` (what ``POST /v1/events`` takes);
- :class:`Fact`: the base of memory facts (subclass it for your own kinds and declare them in
  ``memory_scopes``); the built-ins :class:`GenreAffinity`, :class:`GenreBackoff`,
  :class:`RuntimePreference`, :class:`ContinueWatching`;
- :class:`Trigger`, :class:`Plan`, :class:`PlanStep`, :class:`Row`, :class:`CycleResult`,
  :class:`RunRecord`: the data you meet on the way;
- :class:`UsageError` (you misused the SDK) vs :class:`RunFailed` (a run failed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "agent": "outerloop.agents.sdk",
    "AgentContext": "outerloop.agents.sdk",
    "IsolatedContext": "outerloop.agents.sdk",
    "tool": "outerloop.tools.contracts",
    "ToolDeps": "outerloop.tools.contracts",
    "ToolRegistry": "outerloop.tools.registry",
    "Budget": "outerloop.contracts.budget",
    "RunRecord": "outerloop.contracts.run_record",
    "OuterLoop": "outerloop.agents.loop",
    "LoopConfig": "outerloop.agents.runtime",
    "run_daemon": "outerloop.scheduler.run",
    "DaemonSettings": "outerloop.scheduler.settings",
    "Artifacts": "outerloop.inner_loop.model.artifacts",
    "Event": "outerloop.contracts.events",
    "Fact": "outerloop.memory.facts",
    "GenreAffinity": "outerloop.memory.facts",
    "GenreBackoff": "outerloop.memory.facts",
    "RuntimePreference": "outerloop.memory.facts",
    "ContinueWatching": "outerloop.memory.facts",
    "Trigger": "outerloop.contracts.triggers",
    "Plan": "outerloop.contracts.plans",
    "PlanStep": "outerloop.contracts.plans",
    "Row": "outerloop.contracts.rows",
    "CycleResult": "outerloop.agents.cycle",
    "UsageError": "outerloop.errors",
    "RunFailed": "outerloop.errors",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names resolve on first access
    from outerloop.agents.cycle import CycleResult
    from outerloop.agents.loop import OuterLoop
    from outerloop.agents.runtime import LoopConfig
    from outerloop.agents.sdk import AgentContext, IsolatedContext, agent
    from outerloop.contracts.run_record import RunRecord
    from outerloop.contracts.budget import Budget
    from outerloop.contracts.events import Event
    from outerloop.contracts.plans import Plan, PlanStep
    from outerloop.contracts.rows import Row
    from outerloop.contracts.triggers import Trigger
    from outerloop.errors import RunFailed, UsageError
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.memory.facts import ContinueWatching, Fact, GenreAffinity, GenreBackoff, RuntimePreference
    from outerloop.scheduler.run import run_daemon
    from outerloop.scheduler.settings import DaemonSettings
    from outerloop.tools.contracts import ToolDeps, tool
    from outerloop.tools.registry import ToolRegistry


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'outerloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
