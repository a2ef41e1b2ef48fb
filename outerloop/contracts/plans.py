"""What the planner decides: :class:`Plan` / :class:`PlanStep` (which agents run, in what order,
for which rows, why, under what budget). The rule policy and an LLM policy produce the same type
(the LLM through structured output), so either can decide and the graph cannot tell.

Triggers (what a plan answers) are in :mod:`outerloop.contracts.triggers`, rows (what the steps
produce) in :mod:`outerloop.contracts.rows`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from outerloop.contracts.budget import Budget


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


