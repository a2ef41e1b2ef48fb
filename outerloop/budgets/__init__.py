"""Budgets for agent runs: hard deadlines (cancel in-process, SIGKILL isolated), tool-call and
token limits, fenced commits, no retries, and accounting of what was killed.

Typical use::

    fence = Fence(redis)                      # per-user fencing tokens
    async with WorkerPool(size=3) as pool:    # warm processes for isolated (CPU-bound) agents
        enforcer = Enforcer(fence=fence, pool=pool)
        record = await enforcer.run(agent_fn, Budget(latency_ms=200, max_tool_calls=5),
                                    user_id="u1")
"""

from outerloop.budgets.accounting import Accounting, percentile
from outerloop.contracts.budget import (
    Budget,
    BudgetExceeded,
    DeadlineExceeded,
    TokenBudgetExceeded,
    ToolCallBudgetExceeded,
)
from outerloop.budgets.context import RunContext, StagedWrite
from outerloop.budgets.enforce import Enforcer, run_with_budget
from outerloop.budgets.fencing import Fence, FenceRejected, Lease
from outerloop.budgets.pool import PoolStats, WorkerPool
from outerloop.contracts.run_record import Outcome, RunRecord

__all__ = [
    "Accounting",
    "Budget",
    "BudgetExceeded",
    "DeadlineExceeded",
    "Enforcer",
    "Fence",
    "FenceRejected",
    "Lease",
    "Outcome",
    "PoolStats",
    "RunContext",
    "RunRecord",
    "StagedWrite",
    "TokenBudgetExceeded",
    "ToolCallBudgetExceeded",
    "WorkerPool",
    "percentile",
    "run_with_budget",
]
