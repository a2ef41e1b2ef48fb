"""The LangGraph wiring: a thin factory that returns a compiled ``StateGraph``.

Shape: ``START -> planner -> <agent> -> <agent> ... -> END``. The planner puts steps on a queue;
after the planner and after every agent a router sends the state to the agent of the next
step, back to the planner when an agent raised triggers (the evaluator's drift flags, at most
``max_replans`` times a cycle), or to the end.

Every agent node runs its step through the budgets ``Enforcer`` (cancel or SIGKILL at the
deadline, fenced commit of staged writes only for runs that ended in time) and records the
``RunRecord`` in the state. Agent nodes get **no retry policy**: a killed run stays killed.
LangGraph's own per-node ``timeout`` is set a little above the budget as a backstop for the
node's own bookkeeping, with an ``error_handler`` that records the failure and moves on, so one
failing agent never stops the rest of the cycle. Developer misuse (``UsageError``) is not
swallowed: it propagates out of the cycle.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

from langgraph.errors import NodeError, NodeTimeoutError
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from outerloop.agents.planner import PlanningView
from outerloop.agents.runtime import CycleScope, LoopConfig, LoopDeps
from outerloop.agents.sdk import (
    AgentOutput,
    AgentRegistry,
    AgentSpec,
    IsolatedPayload,
    run_agent,
    run_isolated_agent,
)
from outerloop.contracts.run_record import RunRecord
from outerloop.contracts.plans import Plan, PlanStep
from outerloop.contracts.rows import Row
from outerloop.contracts.triggers import Trigger
from outerloop.errors import UsageError
from outerloop.telemetry import record_agent_run
from outerloop.tools.builtin import catalog_index

PLANNER_NODE = "planner"


def _merge(a: dict[str, Row], b: dict[str, Row]) -> dict[str, Row]:
    return {**a, **b}


class CycleState(TypedDict, total=False):
    """The graph's state for one cycle of one user."""

    scope: CycleScope
    pending: list[Trigger]  # triggers not planned yet
    plans: list[Plan]
    queue: list[PlanStep]
    records: Annotated[list[RunRecord], operator.add]
    committed: Annotated[dict[str, Row], _merge]
    next_triggers: Annotated[list[Trigger], operator.add]
    plan_rounds: int
    cache_hits: int
    notes: Annotated[list[str], operator.add]


RESERVED = frozenset({PLANNER_NODE, *CycleState.__annotations__})


def initial_state(scope: CycleScope) -> CycleState:
    return CycleState(scope=scope, pending=list(scope.triggers), plans=[], queue=[], records=[], committed={},
                      next_triggers=[], plan_rounds=0, cache_hits=0, notes=[])


def _next(queue: list[PlanStep], pending: list[Trigger], rounds: int, max_replans: int) -> str:
    if queue:
        return queue[0].agent
    if pending and rounds <= max_replans:
        return PLANNER_NODE
    return END


async def planner_node(state: CycleState, runtime: Runtime[LoopDeps]) -> dict[str, Any]:
    deps = runtime.context
    scope = state["scope"]
    view = PlanningView.build(scope, state.get("pending", []), deps.agents, catalog_index(deps.tool_deps),
                              deps.config)
    ran_before = _count_run(scope, ("plan", state.get("plan_rounds", 0)))
    out = await deps.planner.plan(view, deps.agents, deps.enforcer)
    return {
        "plans": [*state.get("plans", []), out.plan],
        "queue": [*state.get("queue", []), *out.plan.steps],
        "pending": [],
        "records": [dataclasses.replace(r, retries=ran_before) for r in out.records],
        "plan_rounds": state.get("plan_rounds", 0) + 1,
        "cache_hits": state.get("cache_hits", 0) + int(out.cache_hit),
        "notes": out.notes,
    }


def _step_index(state: CycleState) -> int:
    """The position of the queue's head among every step planned in this cycle."""
    planned = sum(len(p.steps) for p in state.get("plans", []))
    return planned - len(state.get("queue", []))


def _count_run(scope: CycleScope, key: tuple[str, int]) -> int:
    """Count one execution of a plan step (or of a planning round) in this cycle; returns how
    many times it had run before. Runs are never retried on purpose, so anything but 0 means
    something re-ran it (a retry policy, a replayed node), and the record says so."""
    before = scope.step_runs.get(key, 0)
    scope.step_runs[key] = before + 1
    return before


def _payload(spec: AgentSpec, step: PlanStep, scope: CycleScope, deps: LoopDeps) -> IsolatedPayload:
    h = scope.history
    return IsolatedPayload(
        user_id=scope.user_id, now_ms=scope.now_ms, step=step, triggers=scope.triggers, items=h.items,
        actions=h.actions, ts=h.ts, seen=scope.seen, facts=[f for f in scope.memory if spec.may_read(f.kind)],
        user_vector=scope.user_vector, model_version=deps.artifacts.model_version, rows_key=deps.keys.rows(scope.user_id),
    )


def make_agent_node(spec: AgentSpec) -> Callable[..., Any]:
    """The node that runs the queue's head step with ``spec`` under its budget."""

    async def node(state: CycleState, runtime: Runtime[LoopDeps]) -> dict[str, Any]:
        deps = runtime.context
        queue = state["queue"]
        step, rest = queue[0], queue[1:]
        scope = state["scope"]
        budget = step.budget.to_budget() if step.budget is not None else spec.budget
        ran_before = _count_run(scope, ("step", _step_index(state)))
        demoted = deps.enforcer.demoted(spec.name)  # it blocked the event loop in an earlier run
        if demoted == "isolate" and not spec.can_isolate:
            rec = _cannot_isolate(spec, budget)
        elif spec.isolated or demoted == "isolate":
            rec = await deps.enforcer.run(run_isolated_agent, budget, spec, _payload(spec, step, scope, deps),
                                          agent=spec.name, user_id=scope.user_id, isolated=True)
        else:
            rec = await deps.enforcer.run(run_agent, budget, spec, step, scope, deps,
                                          agent=spec.name, user_id=scope.user_id)
        if ran_before:
            rec = dataclasses.replace(rec, retries=ran_before)
        update: dict[str, Any] = {"queue": rest, "records": [rec]}
        out = rec.value
        if rec.outcome == "ok" and isinstance(out, AgentOutput):
            update["committed"] = out.rows
            if out.memory is not None:
                scope.memory = out.memory  # later agents of the cycle decide on the new facts
            if out.triggers:
                update["pending"] = [*state.get("pending", []), *out.triggers]
                update["next_triggers"] = out.triggers
        elif rec.outcome != "ok":
            update["notes"] = [f"{spec.name}: {rec.outcome}, nothing committed ({rec.error})"]
        return update

    node.__name__ = f"agent_{spec.name}"
    return node


def _cannot_isolate(spec: AgentSpec, budget: Any) -> RunRecord:
    return RunRecord(run_id="-", agent=spec.name, budget_ms=budget.latency_ms, elapsed_ms=0.0, outcome="error",
                     error="disabled: it blocked the event loop and cannot run in a worker process (define it at "
                           "module level with @agent to have it isolated instead)")


def make_error_handler(spec: AgentSpec, max_replans: int) -> Callable[..., Any]:
    """Records a node that failed outside the enforcer (LangGraph's backstop timeout, a bug in
    bookkeeping) as a run that committed nothing, then routes on. Misuse propagates."""

    async def handler(state: CycleState, error: NodeError, runtime: Runtime[LoopDeps]) -> Command[Any]:
        if isinstance(error.error, UsageError):
            raise error.error
        queue = state.get("queue", [])
        rest = queue[1:] if queue else []
        timed_out = isinstance(error.error, NodeTimeoutError)
        blocked = runtime.context.enforcer.take_blocked_run(spec.name) if runtime.context is not None else None
        ran = state["scope"].step_runs.get(("step", _step_index(state)), 1) if "scope" in state else 1
        if blocked is not None and ran > 1:
            blocked = dataclasses.replace(blocked, retries=ran - 1)
        if blocked is not None:  # it held the event loop past the backstop: the enforcer's account of it
            record_agent_run(blocked)
            goto = _next(rest, state.get("pending", []), state.get("plan_rounds", 0), max_replans)
            return Command(update={"queue": rest, "records": [blocked],
                                   "notes": [f"{spec.name}: {blocked.outcome}, nothing committed ({blocked.error})"]},
                           goto=goto)
        rec = RunRecord(
            run_id="-", agent=spec.name, budget_ms=spec.budget.latency_ms,
            elapsed_ms=float(getattr(error.error, "elapsed", 0.0)) * 1000.0,
            outcome="killed" if timed_out else "error", error=f"{type(error.error).__name__}: {error.error}",
            note="stopped by the graph's backstop timeout" if timed_out else "failed outside the enforcer",
            retries=max(0, ran - 1),
        )
        record_agent_run(rec)  # the enforcer's span ended as cancelled; the metrics learn how
        goto = _next(rest, state.get("pending", []), state.get("plan_rounds", 0), max_replans)
        return Command(update={"queue": rest, "records": [rec],
                               "notes": [f"{spec.name}: {rec.outcome} in the graph ({rec.error})"]}, goto=goto)

    return handler


def build_graph(agents: AgentRegistry, config: LoopConfig | None = None) -> CompiledStateGraph:
    """Compile the cycle graph for these agents. Run it with
    ``await graph.ainvoke(initial_state(scope), context=loop_deps)``."""
    config = config or LoopConfig()
    for spec in agents:
        if spec.name in RESERVED:
            raise UsageError(f"agent name {spec.name!r} is reserved by the graph ({sorted(RESERVED)})")
    builder: StateGraph[CycleState, LoopDeps, CycleState, CycleState] = StateGraph(CycleState, context_schema=LoopDeps)
    builder.add_node(PLANNER_NODE, planner_node)
    for spec in agents:
        builder.add_node(
            spec.name,
            make_agent_node(spec),
            timeout=(spec.budget.latency_ms + config.node_slack_ms) / 1000.0,
            error_handler=make_error_handler(spec, config.max_replans),
            # retry_policy deliberately absent: budgets are kill-no-retry
        )
    destinations = [*agents.names(), PLANNER_NODE, END]

    async def route(state: CycleState) -> str:  # async: a sync router would run in a thread pool
        return _next(state.get("queue", []), state.get("pending", []), state.get("plan_rounds", 0),
                     config.max_replans)

    builder.add_edge(START, PLANNER_NODE)
    builder.add_conditional_edges(PLANNER_NODE, route, destinations)
    for spec in agents:
        builder.add_conditional_edges(spec.name, route, destinations)
    return builder.compile(name="outerloop-cycle")


def elapsed_ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
