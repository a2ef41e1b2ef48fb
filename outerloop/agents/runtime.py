"""What a cycle runs with: the long-lived dependencies (:class:`LoopDeps`, LangGraph's run
context) and the per-cycle snapshot of one user (:class:`CycleScope`, read once at the start).

Reading the user once (history, seen set and rows in one round trip; memory through the
version-checked process cache) and handing the same snapshot to every agent keeps a cycle to a
handful of Redis round trips, and lets every agent of the cycle decide from the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from outerloop.contracts.keys import Keys
from outerloop.contracts.rows import Row
from outerloop.contracts.triggers import Trigger
from outerloop.memory.store import UserMemory

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from outerloop.agents.caches import PlanCache
    from outerloop.agents.planner import Planner
    from outerloop.agents.sdk import AgentRegistry
    from outerloop.budgets.enforce import Enforcer
    from outerloop.memory.cache import MemoryCache
    from outerloop.memory.store import MemoryStore
    from outerloop.tools.contracts import ModelArtifacts, ToolDeps
    from outerloop.tools.registry import ToolRegistry

_EMPTY = np.empty(0, dtype=np.int64)


class Clusters(Protocol):
    """Coarse clusters of user vectors (``KMeansClusters``, ``SignLSH``, ``AdaptiveClusters``):
    ``(cluster key, representative vector)``, or None when the user cannot share (yet)."""

    def assign(self, vec: np.ndarray) -> tuple[str, np.ndarray] | None: ...


@dataclass(frozen=True, slots=True)
class History:
    """A user's recent interactions, oldest first (the transformer's tokens)."""

    items: np.ndarray = field(default_factory=lambda: _EMPTY)  # (L,) dense item ids
    actions: np.ndarray = field(default_factory=lambda: _EMPTY)  # (L,) ACTION_ID
    ts: np.ndarray = field(default_factory=lambda: _EMPTY)  # (L,) ms

    def __len__(self) -> int:
        return int(self.items.shape[0])


@dataclass(slots=True)
class CycleScope:
    """One user's state as the cycle read it, shared by the cycle's agents.

    ``rows`` are the rows stored when the cycle started (expired ones included, so the planner
    can tell stale from missing). ``user_vector`` / ``cluster`` are filled lazily by the first
    agent that needs them.
    """

    user_id: str
    now_ms: int
    triggers: list[Trigger]
    history: History
    seen: frozenset[int]
    rows: dict[str, Row]
    memory: UserMemory
    tz_offset_min: int = 0
    user_vector: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    step_runs: dict[tuple[str, int], int] = field(default_factory=dict)  # executions per plan step (retries)


@dataclass(slots=True)
class LoopConfig:
    """Tunables of the outer loop (times in ms)."""

    history_len: int = 200  # tokens of history read per cycle
    row_len: int = 50  # items per row
    ensemble_row_len: int = 300  # items in the ensemble agent's log-prob row (the ranker reads their scores)
    # next-item branches of that row (its likeliest items; 0: none) and the items each keeps: a row
    # one interaction old is served fresh when the user's next item was one of them. On ML-1M's test
    # cut the served transformer, one interaction stale, had the next item in its top 100 / 200 /
    # 300 for 67% / 77% / 82% of users (1,500 sampled; a one-off script, not a benchmark). Each user's stored row grows by branches x
    # len x 6 bytes (200 x 100: 120 kB, 160 kB as base64), and an agent run by about 25 ms per 100
    # branches with two transformers (one-off timing on this 2-core box, under load)
    ensemble_branches: int = 200
    ensemble_branch_len: int = 100
    # shared vector-search pool re-scored per user: what a tool-cache hit costs in quality. On
    # ML-1M (3,416 items, 64 clusters, 600 users) 600 lost 5.9% of recall@100 against uncached
    # search (p10 user 20%) at 90% hits, 1,500 loses 0.7% (p10 1%) at the same hits for ~0.1 ms
    # more re-scoring; `outerloop bench loop` sweeps it (tool_cache_curve) for another catalog
    retrieval_pool: int = 1500
    stale_horizon_ms: int = 60 * 60 * 1000  # a sweep refreshes rows expiring within this
    max_replans: int = 1  # evaluator flags -> planner, at most this many times per cycle
    node_slack_ms: float = 500.0  # LangGraph's own node timeout = budget + this (a backstop)
    accounting_window: int = 20_000  # run records kept for stats() (values dropped)
    encode_in_thread: bool = False  # embed_history off the event loop (for models slower than ~5 ms)
    watchdog: bool = True  # notice in-process agents that hold the event loop past their deadline
    on_blocking: str = "isolate"  # such an agent from then on: "isolate" (a worker process) | "disable"


@dataclass(slots=True)
class LoopDeps:
    """The one dependencies object of a cycle (LangGraph's ``context``). Built by ``OuterLoop``;
    plain fields so tests can assemble one by hand. Agents never see it: their context takes the
    narrow parts it needs (tools, artifacts, a staging store; no Redis client)."""

    redis: "aioredis.Redis"
    keys: type[Keys]
    artifacts: "ModelArtifacts"
    tools: "ToolCaller"  # the registry itself, or an MCP client with the same call shape
    tool_deps: "ToolDeps"
    agents: "AgentRegistry"
    enforcer: "Enforcer"
    memory: "MemoryStore"
    memory_cache: "MemoryCache"
    planner: "Planner"
    clusters: Clusters
    config: LoopConfig
    clock_ms: Callable[[], int]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_cache(self) -> "PlanCache":
        return self.planner.cache
