"""What happened to one agent run, as data (for accounting, metrics and reports)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from outerloop.contracts.budget import DeadlineExceeded, TokenBudgetExceeded, ToolCallBudgetExceeded

Outcome = Literal["ok", "killed", "error", "over_tool_budget", "over_token_budget"]
ErrorKind = Literal["deadline", "tool_calls", "tokens", "other"]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An agent's exception as plain data: it crosses the worker-process pipe even when the
    exception object itself would not unpickle (custom ``__init__`` signatures)."""

    kind: ErrorKind
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> "ErrorInfo":
        kind: ErrorKind = "other"
        if isinstance(exc, DeadlineExceeded):
            kind = "deadline"
        elif isinstance(exc, ToolCallBudgetExceeded):
            kind = "tool_calls"
        elif isinstance(exc, TokenBudgetExceeded):
            kind = "tokens"
        return cls(kind=kind, message=f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One finished (or stopped) agent run.

    ``overrun_ms`` is the time from the deadline to the moment the run was actually stopped
    (task finished after cancellation, or worker process dead after SIGKILL); 0 unless killed.
    ``retries``: how many times the same plan step of the same cycle had already run before this
    run (counted by the graph from what actually executed; the enforcer itself runs once). Runs
    are never retried on purpose, so it is 0 unless something re-ran the step, and then it
    shows. ``stopped`` is False only for an in-process agent that kept ignoring
    cancellation: it may still be running, but its context raises and its token is revoked.
    ``value`` is the agent's return value (``None`` unless ``outcome == "ok"``).
    """

    run_id: str
    agent: str
    budget_ms: float
    elapsed_ms: float
    outcome: Outcome
    overrun_ms: float = 0.0
    retries: int = 0
    tool_calls: int = 0
    llm_tokens: int = 0
    error: str | None = None
    isolated: bool = False
    worker_pid: int | None = None
    fencing_token: int | None = None
    writes_committed: int = 0
    stopped: bool = True
    note: str | None = None
    value: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (without ``value``, which is never copied: an agent's return value
        may hold objects that neither copy nor serialize)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "value"}
