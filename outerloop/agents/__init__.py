"""The outer loop's agents: planner, memory agent, tool agent, evaluator, the LangGraph wiring
and the agent SDK. The public names are re-exported (lazily) from :mod:`outerloop`."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AgentContext": "outerloop.agents.sdk",
    "AgentRegistry": "outerloop.agents.sdk",
    "AgentSpec": "outerloop.agents.sdk",
    "agent": "outerloop.agents.sdk",
    "CycleResult": "outerloop.agents.cycle",
    "Plan": "outerloop.contracts.plans",
    "PlanStep": "outerloop.contracts.plans",
    "Row": "outerloop.contracts.rows",
    "Trigger": "outerloop.contracts.triggers",
    "LoopConfig": "outerloop.agents.runtime",
    "OuterLoop": "outerloop.agents.loop",
    "build_graph": "outerloop.agents.graph",
    "LLMPolicy": "outerloop.agents.planner",
    "Planner": "outerloop.agents.planner",
    "RulePolicy": "outerloop.agents.planner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'outerloop.agents' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
