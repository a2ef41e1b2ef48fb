"""The run context an agent receives: its clock, its counters and its staged writes.

Agents never write durable state directly during a run. They *stage* writes on the context; the
enforcer commits them in one fenced Lua script after the run ends in time, or drops them when it
does not. The same class travels to isolated worker processes (it pickles as plain data), so
in-process and isolated agents see one API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from outerloop.budgets.budget import (
    Budget,
    BudgetExceeded,
    DeadlineExceeded,
    TokenBudgetExceeded,
    ToolCallBudgetExceeded,
)
from outerloop.errors import UsageError


@dataclass(frozen=True, slots=True)
class StagedWrite:
    """One pending write: ``SET key value`` when ``field`` is None, else ``HSET key field value``.

    The key must belong to the run's user (carry its ``{user}`` hash tag) so that the commit is
    a single-slot script on Redis Cluster.
    """

    key: str
    value: bytes | str
    field: str | None = None


class RunContext:
    """Per-run state handed to the agent as its first argument.

    ``deadline`` is on the :func:`time.monotonic` clock (system-wide on Linux, so it means the
    same in a worker process). Every method that does work checks the deadline first, so an agent
    that swallowed its cancellation is still stopped at its next tool call or staged write.
    """

    __slots__ = (
        "run_id", "agent", "budget", "user_id", "fencing_token", "deps",
        "started_at", "deadline", "_tool_calls", "_llm_tokens", "_staged", "_exceeded",
        "_stopped",
    )

    def __init__(
        self,
        *,
        run_id: str,
        agent: str,
        budget: Budget,
        started_at: float,
        user_id: str | None = None,
        fencing_token: int | None = None,
        deps: Any = None,
    ) -> None:
        self.run_id = run_id
        self.agent = agent
        self.budget = budget
        self.user_id = user_id
        self.fencing_token = fencing_token
        self.deps = deps
        self.started_at = started_at
        self.deadline = started_at + budget.latency_s
        self._tool_calls = 0
        self._llm_tokens = 0
        self._staged: list[StagedWrite] = []
        self._exceeded: BudgetExceeded | None = None
        self._stopped = False

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    # -- clock ---------------------------------------------------------------------------------
    def remaining_ms(self) -> float:
        """Milliseconds left before the deadline (negative once it passed)."""
        return (self.deadline - time.monotonic()) * 1000.0

    @property
    def expired(self) -> bool:
        return self._stopped or time.monotonic() >= self.deadline

    def check(self) -> None:
        """Raise :class:`DeadlineExceeded` if the run is past its deadline or was stopped."""
        if self.expired:
            raise DeadlineExceeded(
                f"run {self.run_id} ({self.agent}) is past its {self.budget.latency_ms:g} ms deadline"
            )

    # -- counters ------------------------------------------------------------------------------
    @property
    def tool_calls(self) -> int:
        return self._tool_calls

    @property
    def llm_tokens(self) -> int:
        return self._llm_tokens

    @property
    def exceeded(self) -> BudgetExceeded | None:
        """The first counter limit this run crossed, if any (the run ends over budget even if
        the agent caught the exception)."""
        return self._exceeded

    def count_tool_call(self, n: int = 1) -> None:
        """Call before each tool call. Raises :class:`ToolCallBudgetExceeded` instead of letting
        the call over ``max_tool_calls`` happen."""
        self.check()
        if self._exceeded is not None:
            raise self._exceeded
        limit = self.budget.max_tool_calls
        if limit is not None and self._tool_calls + n > limit:
            self._exceeded = ToolCallBudgetExceeded(
                f"{self.agent}: tool call {self._tool_calls + n} is over the budget of {limit}"
            )
            raise self._exceeded
        self._tool_calls += n

    def count_tokens(self, n: int) -> None:
        """Report ``n`` LLM tokens used. Raises :class:`TokenBudgetExceeded` once the total is
        over ``max_llm_tokens`` (tokens are counted after they were spent)."""
        self.check()
        if n < 0:
            raise UsageError(f"count_tokens(n) needs n >= 0, got {n}")
        if self._exceeded is not None:
            raise self._exceeded
        self._llm_tokens += n
        limit = self.budget.max_llm_tokens
        if limit is not None and self._llm_tokens > limit:
            self._exceeded = TokenBudgetExceeded(
                f"{self.agent}: {self._llm_tokens} LLM tokens is over the budget of {limit}"
            )
            raise self._exceeded

    # -- staged writes -------------------------------------------------------------------------
    def stage(self, key: str, value: bytes | str, *, field: str | None = None) -> None:
        """Stage a write; it reaches Redis only if the run ends in time and its fencing token is
        still live at commit."""
        self.check()
        if self.user_id is None or self.fencing_token is None:
            raise UsageError("staged writes need a fenced run: Enforcer(fence=...) and a user_id")
        if f"{{{self.user_id}}}" not in key:
            raise UsageError(
                f"staged key {key!r} is not a key of user {self.user_id!r} (no {{user}} hash tag)"
            )
        if not isinstance(value, bytes | str):
            raise UsageError(f"staged value for {key!r} must be bytes or str, got {type(value).__name__}")
        self._staged.append(StagedWrite(key, value, field))

    @property
    def staged(self) -> tuple[StagedWrite, ...]:
        return tuple(self._staged)

    def _stop(self) -> None:
        """Mark the run as stopped (killed): from now on every context call raises."""
        self._stopped = True
