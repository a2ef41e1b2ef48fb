"""The data the outer loop passes around: triggers in, a plan, rows out, a cycle result.

- :class:`Trigger`: why a cycle runs for a user (an event, a closed session, a drift flag from
  the evaluator, a periodic sweep, or a manual request naming agents).
- :class:`Plan` / :class:`PlanStep`: what the planner decided: which agents run, in what order,
  for which rows, why, under what budget. The rule policy and an LLM policy produce the same
  type (the LLM through structured output), so either can decide and the graph cannot tell.
- :class:`Row`: one candidate set, the contract the inner loop reads from ``Keys.rows(user)``.
- :class:`CycleResult`: everything one cycle did, including every agent's ``RunRecord``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from outerloop.budgets.record import RunRecord
from outerloop.clock import now_ms
from outerloop.contracts.budget import Budget
from outerloop.contracts.events import Event

# "backoff" is raised inside a cycle by the memory agent when a genre back-off is new, so the
# planner refreshes the user's other rows without that genre.
TriggerKind = Literal["event", "session_closed", "drift", "sweep", "manual", "backoff"]



class Trigger(BaseModel):
    """Why the outer loop should look at a user now.

    ``events`` are the events behind the trigger (one for ``event``, the session's events for
    ``session_closed``). ``row_id`` names the drifting row for ``drift``. ``agents`` names the
    agents a ``manual`` trigger asks for. ``tz_offset_min`` is the user's offset from UTC, so
    daypart rules ("after 23:00") read local time.
    """

    model_config = ConfigDict(extra="forbid")

    kind: TriggerKind
    at_ms: int = Field(default_factory=now_ms, ge=0)
    events: list[Event] = Field(default_factory=list)
    row_id: str | None = None
    agents: list[str] = Field(default_factory=list)
    tz_offset_min: int = Field(default=0, ge=-14 * 60, le=14 * 60)
    detail: dict[str, float | int | str] = Field(default_factory=dict)

    @classmethod
    def event(cls, ev: Event, *, tz_offset_min: int = 0) -> "Trigger":
        return cls(kind="event", at_ms=ev.ts, events=[ev], tz_offset_min=tz_offset_min)

    @classmethod
    def session_closed(cls, events: list[Event], *, tz_offset_min: int = 0) -> "Trigger":
        at = max((e.ts for e in events), default=now_ms())
        return cls(kind="session_closed", at_ms=at, events=list(events), tz_offset_min=tz_offset_min)

    @classmethod
    def drift(cls, row_id: str, *, at_ms: int | None = None, **detail: float | int | str) -> "Trigger":
        return cls(kind="drift", at_ms=at_ms if at_ms is not None else now_ms(), row_id=row_id, detail=detail)

    @classmethod
    def sweep(cls, *, at_ms: int | None = None) -> "Trigger":
        return cls(kind="sweep", at_ms=at_ms if at_ms is not None else now_ms())

    @classmethod
    def manual(cls, *agents: str, at_ms: int | None = None, **detail: float | int | str) -> "Trigger":
        """A request naming agents; ``detail`` reaches them as the trigger's ``detail``."""
        return cls(kind="manual", at_ms=at_ms if at_ms is not None else now_ms(), agents=list(agents),
                   detail=detail)


class StepBudget(BaseModel):
    """A budget as plain data (what a plan, and an LLM's structured output, can carry)."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(gt=0, le=60_000)
    max_tool_calls: int | None = Field(default=None, ge=0)
    max_llm_tokens: int | None = Field(default=None, ge=0)

    def to_budget(self) -> Budget:
        return Budget(self.latency_ms, self.max_tool_calls, self.max_llm_tokens)

    @classmethod
    def of(cls, b: Budget) -> "StepBudget":
        return cls(latency_ms=b.latency_ms, max_tool_calls=b.max_tool_calls, max_llm_tokens=b.max_llm_tokens)


class PlanStep(BaseModel):
    """Run one agent, for these rows, for this reason. ``budget`` None = the agent's own."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, description="name of a registered agent")
    rows: list[str] = Field(default_factory=list, description="row ids to (re)compute")
    reason: str = Field(default="", description="why this step is needed, for people")
    budget: StepBudget | None = None
    params: dict[str, str | int | float | list[int] | list[str]] = Field(
        default_factory=dict, description="agent-specific hints, e.g. series_id, seed item ids"
    )


class Plan(BaseModel):
    """What to recompute and why, as ordered steps. The LLM policy fills this same type."""

    model_config = ConfigDict(extra="forbid")

    steps: list[PlanStep] = Field(default_factory=list)
    rationale: str = ""
    policy: str = Field(default="rules", description="which policy decided: rules | llm | cache")

    def agents(self) -> list[str]:
        return [s.agent for s in self.steps]


ScoreKind = Literal["relative", "log_prob"]


class Row(BaseModel):
    """One candidate set, as stored in ``Keys.rows(user)`` (field ``row_id``, value this JSON).

    Times are ms since the epoch; a row whose ``expires_at`` has passed is ignored by the
    inner loop, which falls back to the plain funnel.
    """

    model_config = ConfigDict(extra="forbid")

    row_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    title: str
    reason: str
    items: list[tuple[int, float]]
    produced_by: str
    run_id: str
    model_version: str
    created_at: int
    expires_at: int
    ordered: bool = Field(default=False, description="the agent's order is the row's order: the inner "
                          "loop drops seen items but does not re-rank (e.g. continue watching)")
    score_kind: ScoreKind = Field(default="relative", description="'relative': scores only order this row; "
                                  "'log_prob': log-probability that the item is the user's next one, comparable "
                                  "across rows and users, which the inner loop's ranker reads as a feature")
    history_ts: int | None = Field(default=None, description="event time (ms) of the newest interaction the run "
                                   "saw; the inner loop counts the user's interactions since (the row's staleness)")

    def item_ids(self) -> list[int]:
        return [i for i, _ in self.items]

    def is_fresh(self, at_ms: int) -> bool:
        return self.expires_at > at_ms


@dataclass(slots=True)
class CycleResult:
    """What one cycle for one user did.

    ``rows_committed``: rows written by runs that finished in budget (fenced commit succeeded).
    ``records``: one ``RunRecord`` per agent run, in order (killed runs included, never retried).
    ``next_triggers``: triggers raised during the cycle for later (e.g. drift flags).
    """

    user_id: str
    plans: list[Plan]
    records: list[RunRecord]
    rows_committed: dict[str, Row]
    next_triggers: list[Trigger] = field(default_factory=list)
    elapsed_ms: float = 0.0
    plan_cache_hit: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def plan(self) -> Plan:
        """All steps the cycle planned, in order (re-plans appended)."""
        if len(self.plans) == 1:
            return self.plans[0]
        return Plan(
            steps=[s for p in self.plans for s in p.steps],
            rationale=" | ".join(p.rationale for p in self.plans if p.rationale),
            policy="+".join(p.policy for p in self.plans),
        )

    def record(self, agent: str) -> RunRecord | None:
        """The last run record of ``agent`` in this cycle."""
        for r in reversed(self.records):
            if r.agent == agent:
                return r
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "plans": [p.model_dump() for p in self.plans],
            "records": [r.to_dict() for r in self.records],
            "rows_committed": {k: v.model_dump() for k, v in self.rows_committed.items()},
            "next_triggers": [t.model_dump() for t in self.next_triggers],
            "elapsed_ms": self.elapsed_ms,
            "plan_cache_hit": self.plan_cache_hit,
            "notes": self.notes,
        }
