"""Operator control of agents, across every daemon, without a restart: pause, resume, budget.

The state lives in one Redis hash (:func:`control_key`); every change also goes to an audit
stream (:func:`control_log_key`) with who made it, from where and when, in the same
transaction. The console writes it (:func:`apply_change`, behind the API key); the daemons read
it at cycle time (:class:`ControlState`, refreshed by ``OuterLoopRunner`` in the same round trip
as the user's profile) and apply it where agent runs are dispatched: every plan goes through
:class:`ControlledPlanner` before the graph runs its steps, so

- a **paused** agent's steps are dropped from the plan (with a note in the cycle saying who
  paused it); it never runs, and the rows it wrote earlier keep being served until they expire;
- a **budget override** replaces the agent's declared budget for its steps (a plan that asked
  for less keeps the smaller one), capped below the graph's own backstop timeout for the agent
  (declared latency + ``LoopConfig.node_slack_ms``), which is compiled into the graph.

Hash fields are ``<agent>|paused`` and ``<agent>|budget`` (JSON with ``by``, ``at_ms``, ``note``),
so a pause and a budget change never overwrite each other. Both keys carry one hash tag, so the
transaction is legal on Redis Cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from outerloop.contracts.budget import Budget
from outerloop.contracts.keys import Keys, control_key, control_log_key
from outerloop.errors import OuterloopError, UsageError, UserInputError
from outerloop.storage.clients import AsyncRedisClient

if TYPE_CHECKING:
    from outerloop.agents.planner import PlanOutcome, Planner, PlanningView
    from outerloop.agents.sdk import AgentRegistry
    from outerloop.budgets.enforce import Enforcer

Action = Literal["pause", "resume", "budget", "reset_budget"]
ACTIONS: tuple[str, ...] = ("pause", "resume", "budget", "reset_budget")
LOG_MAXLEN = 10_000
BACKSTOP_MARGIN_MS = 100.0  # an override stays this far below the graph's node timeout


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True, slots=True)
class AgentControl:
    """The operators' settings for one agent (defaults: running, declared budget)."""

    agent: str
    paused: bool = False
    paused_by: str = ""
    paused_at_ms: int = 0
    pause_note: str = ""
    budget: Budget | None = None  # None: the agent's declared budget
    budget_by: str = ""
    budget_at_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        b = self.budget
        return {"agent": self.agent, "paused": self.paused, "paused_by": self.paused_by,
                "paused_at_ms": self.paused_at_ms, "pause_note": self.pause_note,
                "budget": None if b is None else {"latency_ms": b.latency_ms, "max_tool_calls": b.max_tool_calls,
                                                  "max_llm_tokens": b.max_llm_tokens},
                "budget_by": self.budget_by, "budget_at_ms": self.budget_at_ms}


@dataclass(frozen=True, slots=True)
class ControlSnapshot:
    """Every agent's settings as read at one moment."""

    agents: Mapping[str, AgentControl] = field(default_factory=dict)

    def get(self, agent: str) -> AgentControl | None:
        return self.agents.get(agent)

    def paused(self) -> list[str]:
        return sorted(a for a, c in self.agents.items() if c.paused)

    def __bool__(self) -> bool:
        return any(c.paused or c.budget is not None for c in self.agents.values())

    @classmethod
    def parse(cls, raw: Mapping[Any, Any] | None) -> "ControlSnapshot":
        """From the hash as HGETALL returns it; fields that do not parse are ignored."""
        fields: dict[str, dict[str, Any]] = {}
        for k, v in (raw or {}).items():
            agent, _, what = _text(k).rpartition("|")
            try:
                doc = json.loads(v)
            except (ValueError, TypeError):
                continue
            if agent and what in ("paused", "budget") and isinstance(doc, dict):
                fields.setdefault(agent, {})[what] = doc
        out: dict[str, AgentControl] = {}
        for agent, f in fields.items():
            p, b = f.get("paused") or {}, f.get("budget") or {}
            budget = None
            if isinstance(b.get("budget"), dict):
                try:
                    budget = Budget(**b["budget"])
                except (TypeError, OuterloopError):  # a bad value reads as "declared"
                    budget = None
            out[agent] = AgentControl(
                agent=agent, paused=bool(p.get("paused")), paused_by=str(p.get("by", "")),
                paused_at_ms=int(p.get("at_ms", 0) or 0), pause_note=str(p.get("note", "")),
                budget=budget, budget_by=str(b.get("by", "")), budget_at_ms=int(b.get("at_ms", 0) or 0))
        return cls(out)


async def read_control(client: AsyncRedisClient, keys: type[Keys]) -> ControlSnapshot:
    return ControlSnapshot.parse(await client.hgetall(control_key(keys)))


def budget_from(latency_ms: Any, max_tool_calls: Any = None, max_llm_tokens: Any = None) -> Budget:
    """A :class:`Budget` from request values, or :class:`UserInputError` naming the field."""
    try:
        return Budget(latency_ms, max_tool_calls, max_llm_tokens)
    except UsageError as exc:
        raise UserInputError(str(exc).replace("Budget.", "")) from None


async def apply_change(client: AsyncRedisClient, keys: type[Keys], agent: str, action: Action, *, by: str, source: str = "",
                       budget: Budget | None = None, note: str = "", now_ms: int | None = None) -> dict[str, Any]:
    """Record one operator change (state and audit entry in one transaction); returns the entry."""
    if action not in ACTIONS:
        raise UserInputError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if action == "budget" and budget is None:
        raise UserInputError("latency_ms: required to change a budget")
    at = int(time.time() * 1000) if now_ms is None else now_ms
    meta = {"by": by, "at_ms": at, "note": note, "source": source}
    if action in ("pause", "resume"):
        fld, value = f"{agent}|paused", {"paused": action == "pause", **meta}
    else:
        b = budget if action == "budget" else None
        fld, value = f"{agent}|budget", {"budget": None if b is None else {
            "latency_ms": b.latency_ms, "max_tool_calls": b.max_tool_calls, "max_llm_tokens": b.max_llm_tokens},
            **meta}
    entry = {"agent": agent, "action": action, "value": _describe(action, budget), "by": by, "source": source,
             "note": note, "at_ms": str(at)}
    pipe = client.pipeline(transaction=True)
    pipe.hset(control_key(keys), fld, json.dumps(value))
    pipe.xadd(control_log_key(keys), entry, maxlen=LOG_MAXLEN, approximate=True)
    await pipe.execute()
    return {**entry, "at_ms": at}


def _describe(action: str, budget: Budget | None) -> str:
    if action == "pause":
        return "paused"
    if action == "resume":
        return "running"
    if action == "reset_budget" or budget is None:
        return "declared budget"
    extra = [f"{n} {v}" for n, v in (("tool calls", budget.max_tool_calls), ("LLM tokens", budget.max_llm_tokens))
             if v is not None]
    return ", ".join([f"{budget.latency_ms:g} ms", *extra])


async def read_log(client: AsyncRedisClient, keys: type[Keys], count: int = 50) -> list[dict[str, Any]]:
    """The newest changes first."""
    out = []
    for eid, fields in await client.xrevrange(control_log_key(keys), count=count):
        doc = {_text(k): _text(v) for k, v in fields.items()}
        doc["id"] = _text(eid)
        doc["at_ms"] = int(doc.get("at_ms") or 0)
        out.append(doc)
    return out


class ControlState:
    """The snapshot a daemon's cycles plan with (updated at the start of each cycle)."""

    def __init__(self) -> None:
        self.current = ControlSnapshot()
        self.read_ms = 0

    def update(self, raw: Mapping[Any, Any] | None) -> ControlSnapshot:
        self.current = ControlSnapshot.parse(raw)
        self.read_ms = int(time.time() * 1000)
        return self.current


class ControlledPlanner:
    """The loop's :class:`~outerloop.agents.planner.Planner` with the operators' control applied
    to every plan it hands to the graph (cached plans included: the cache keeps plans as the
    policy made them). Everything else is the wrapped planner's."""

    def __init__(self, inner: "Planner", control: Callable[[], ControlSnapshot], *, slack_ms: float) -> None:
        self.inner = inner
        self.control = control
        self.slack_ms = slack_ms

    def __getattr__(self, name: str) -> Any:  # cache, rules, llm, rule_budget: the planner's own
        return getattr(self.inner, name)

    async def plan(self, view: "PlanningView", agents: "AgentRegistry", enforcer: "Enforcer") -> "PlanOutcome":
        from outerloop.contracts.plans import StepBudget

        out = await self.inner.plan(view, agents, enforcer)
        snap = self.control()
        if not snap or not out.plan.steps:
            return out
        steps = []
        for step in out.plan.steps:
            c = snap.get(step.agent)
            if c is not None and c.paused:
                who = f" by {c.paused_by}" if c.paused_by else ""
                out.notes.append(f"{step.agent}: paused{who}; not run (its rows are served until they expire)")
                continue
            if c is not None and c.budget is not None and step.agent in agents:
                declared = agents.get(step.agent).budget
                ceiling = declared.latency_ms + self.slack_ms - BACKSTOP_MARGIN_MS
                want = StepBudget.of(c.budget)
                if want.latency_ms > ceiling:
                    want = want.model_copy(update={"latency_ms": ceiling})
                if step.budget is not None:  # a policy that asked for less keeps it
                    want = want.model_copy(update={"latency_ms": min(want.latency_ms, step.budget.latency_ms)})
                step = step.model_copy(update={"budget": want})
            steps.append(step)
        if len(steps) != len(out.plan.steps) or any(a is not b for a, b in zip(steps, out.plan.steps)):
            out.plan = out.plan.model_copy(update={"steps": steps})
        return out


def max_latency_ms(declared_ms: float, slack_ms: float) -> float:
    """The largest override the daemons apply as given (the graph's backstop is compiled in)."""
    return declared_ms + slack_ms - BACKSTOP_MARGIN_MS
