"""The run context an agent receives: its clock, its counters and its staged writes.

Agents never write durable state directly during a run. They *stage* writes on the context; the
enforcer commits them in one fenced Lua script after the run ends in time, or drops them when it
does not. The same class travels to isolated worker processes (it pickles as plain data), so
in-process and isolated agents see one API.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from outerloop.contracts.budget import (
    Budget,
    BudgetExceeded,
    DeadlineExceeded,
    TokenBudgetExceeded,
    ToolCallBudgetExceeded,
)
from outerloop.errors import UsageError


WriteOp = Literal["set", "hset", "hdel", "hincrbyfloat"]


@dataclass(frozen=True, slots=True)
class StagedWrite:
    """One pending write: ``SET key value`` when ``field`` is None, else ``HSET key field value``;
    ``op`` says otherwise (``hdel key field``, ``hincrbyfloat key field value``).

    The key must belong to the run's user (carry its ``{user}`` hash tag) so that the commit is
    a single-slot script on Redis Cluster; ``shared`` writes (counters over every user, only
    ``hincrbyfloat``) are the exception: they commit with the run's writes on a standalone
    server, and right after them on a Cluster.
    """

    key: str
    value: bytes | str
    field: str | None = None
    op: WriteOp | None = None
    shared: bool = False

    @property
    def kind(self) -> WriteOp:
        return self.op or ("set" if self.field is None else "hset")


@dataclass(frozen=True, slots=True)
class Guard:
    """A condition of the commit: ``HGET key field`` equals ``expected`` (None: the field is
    absent). A run's commit applies nothing unless every guard holds."""

    key: str
    field: str
    expected: str | None


@dataclass(slots=True)
class Conditional:
    """Writes valid only while their guard holds (a compare-and-set decided from a snapshot).

    When the commit finds the guard broken it hands ``redecide`` what the guarded hash holds now
    (field -> value); ``redecide`` returns the new decision (guard and writes, or None for
    nothing to write), so a decision made on stale state is made again, never written. Only
    in-process runs stage these (the callbacks do not cross to a worker process).
    ``on_commit(attempts)`` runs once the run's commit applied it.
    """

    guard: Guard
    writes: list[StagedWrite]
    redecide: Callable[[dict[bytes, bytes]], Awaitable["Conditional | None"]] | None = None
    on_commit: Callable[[int], None] | None = None
    attempts: int = field(default=1)


class RunContext:
    """Per-run state handed to the agent as its first argument.

    ``deadline`` is on the :func:`time.monotonic` clock (system-wide on Linux, so it means the
    same in a worker process). Every method that does work checks the deadline first, so an agent
    that swallowed its cancellation is still stopped at its next tool call or staged write.
    """

    __slots__ = (
        "run_id", "agent", "budget", "user_id", "fencing_token", "deps",
        "started_at", "deadline", "_tool_calls", "_llm_tokens", "_staged", "_exceeded",
        "_stopped", "_conditional",
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
        self._conditional: list[Conditional] = []
        self._exceeded: BudgetExceeded | None = None
        self._stopped = False

    def __getstate__(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self.__slots__}
        state["_conditional"] = []  # callbacks stay in the process that staged them
        return state

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
    def stage(self, key: str, value: bytes | str, *, field: str | None = None, op: WriteOp | None = None,
              shared: bool = False) -> None:
        """Stage a write; it reaches Redis only if the run ends in time and its fencing token is
        still live at commit. ``shared=True``: a counter over every user (``op="hincrbyfloat"``
        only), not a key of the run's user."""
        self._stage_check()
        self._staged.append(self._checked(StagedWrite(key, value, field, op, shared)))

    def stage_conditional(self, cond: Conditional) -> None:
        """Stage writes that hold only while ``cond.guard`` does (see :class:`Conditional`)."""
        self._stage_check()
        for w in cond.writes:
            self._checked(w)
        self._checked(StagedWrite(cond.guard.key, "", cond.guard.field))
        self._conditional.append(cond)

    def _stage_check(self) -> None:
        self.check()
        if self.user_id is None or self.fencing_token is None:
            raise UsageError("staged writes need a fenced run: Enforcer(fence=...) and a user_id")

    def _checked(self, w: StagedWrite) -> StagedWrite:
        if w.shared:
            if w.kind != "hincrbyfloat":
                raise UsageError(f"shared write to {w.key!r}: only counters (hincrbyfloat) may be shared")
        elif f"{{{self.user_id}}}" not in w.key:
            raise UsageError(
                f"staged key {w.key!r} is not a key of user {self.user_id!r} (no {{user}} hash tag)"
            )
        if w.kind != "set" and not w.field:
            raise UsageError(f"staged {w.kind} on {w.key!r} needs a field")
        if not isinstance(w.value, bytes | str):
            raise UsageError(f"staged value for {w.key!r} must be bytes or str, got {type(w.value).__name__}")
        if w.kind == "hincrbyfloat":
            try:
                float(w.value)
            except ValueError:
                raise UsageError(f"hincrbyfloat on {w.key!r}: {w.value!r} is not a number") from None
        return w

    @property
    def staged(self) -> tuple[StagedWrite, ...]:
        return tuple(self._staged)

    @property
    def conditional(self) -> tuple[Conditional, ...]:
        return tuple(self._conditional)

    def _stop(self) -> None:
        """Mark the run as stopped (killed): from now on every context call raises."""
        self._stopped = True
