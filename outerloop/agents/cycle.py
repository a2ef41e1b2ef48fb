"""What one outer-loop cycle did for one user (the loop's result type)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from outerloop.contracts.run_record import RunRecord
from outerloop.contracts.plans import Plan
from outerloop.contracts.rows import Row
from outerloop.contracts.triggers import Trigger


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
