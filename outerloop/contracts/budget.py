"""What an agent run may spend, and the errors raised when it spends more.

A budget is a hard limit, not a hint: the enforcer (:mod:`outerloop.budgets.enforce`) stops the
run at the deadline and never retries it. The three exceptions are distinct so that callers (and
run records) can tell a slow agent from a chatty one from a verbose one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from outerloop.errors import OuterloopError, UsageError


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for one agent run.

    ``latency_ms`` is wall-clock time from the start of the run to its commit. ``None`` for the
    counters means "no limit"; ``0`` means "none allowed".
    """

    latency_ms: float
    max_tool_calls: int | None = None
    max_llm_tokens: int | None = None

    def __post_init__(self) -> None:
        if (isinstance(self.latency_ms, bool) or not isinstance(self.latency_ms, int | float)
                or not math.isfinite(self.latency_ms) or self.latency_ms <= 0):
            raise UsageError(f"Budget.latency_ms must be a finite number > 0, got {self.latency_ms!r}")
        for name in ("max_tool_calls", "max_llm_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UsageError(f"Budget.{name} must be an int >= 0 or None, got {value!r}")

    @property
    def latency_s(self) -> float:
        return self.latency_ms / 1000.0


class BudgetExceeded(OuterloopError):
    """A run went over one of its limits. Never retried: the run's writes are dropped."""


class DeadlineExceeded(BudgetExceeded):
    """The run's latency budget is spent (raised by the run context once the deadline passed)."""


class ToolCallBudgetExceeded(BudgetExceeded):
    """The run asked for more tool calls than ``Budget.max_tool_calls``."""


class TokenBudgetExceeded(BudgetExceeded):
    """The run used more LLM tokens than ``Budget.max_llm_tokens``."""
