"""``OuterLoop``: assembles the graph from the built-in and your agents and tools, and runs
cycles for users.

    loop = OuterLoop(artifacts, redis=RedisTarget(...), agents=[new_this_week], tools=[new_releases])
    async with loop:
        result = await loop.run_cycle("u42", [Trigger.session_closed(events)])
        result.rows_committed, result.records, result.plan

One ``OuterLoop`` per process and event loop: it owns one Redis client, the enforcer (fence and,
when an agent is isolated, a pool of warm worker processes), the process memory cache, the plan
cache and the tool cache. Nothing is global; two loops in one process do not share anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from outerloop.agents.caches import AdaptiveClusters, PlanCache
from outerloop.agents.cycle import CycleResult
from outerloop.agents.ensemble_agent import ensemble_agent
from outerloop.agents.evaluator import evaluator
from outerloop.agents.graph import build_graph, initial_state
from outerloop.agents.memory_agent import memory_agent
from outerloop.agents.planner import LLMPolicy, Planner
from outerloop.agents.runtime import Clusters, CycleScope, History, LoopConfig, LoopDeps
from outerloop.agents.sdk import AgentRegistry, AgentSpec
from outerloop.agents.tool_agent import tool_agent
from outerloop.budgets.accounting import Accounting
from outerloop.budgets.enforce import Enforcer
from outerloop.budgets.fencing import Fence
from outerloop.budgets.pool import WorkerPool
from outerloop.clock import now_ms
from outerloop.config import get_settings
from outerloop.contracts.budget import Budget
from outerloop.contracts.events import Event
from outerloop.contracts.keys import Keys
from outerloop.contracts.rows import Row, stored_rows
from outerloop.contracts.triggers import Trigger
from outerloop.errors import UsageError
from outerloop.memory.cache import MemoryCache
from outerloop.memory.store import MemoryStore
from outerloop.storage.clients import RedisTarget
from outerloop.tools.builtin import ENCODE_IN_THREAD, CoWatchGraph, TrendingCounter, builtin_tools
from outerloop.tools.contracts import ModelArtifacts, ToolDeps, ToolSpec
from outerloop.tools.ensemble import ENSEMBLE
from outerloop.tools.registry import ToolCaller, ToolRegistry

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from langchain_core.language_models import BaseChatModel
    from langgraph.graph.state import CompiledStateGraph

    from outerloop.inner_loop.model.ensemble import Ensemble

BUILTIN_AGENTS: tuple[AgentSpec, ...] = (evaluator, memory_agent, tool_agent)


def _load_ensemble(artifacts: ModelArtifacts) -> "Ensemble | None":
    """The artifacts' trained ensemble (``<dir>/ensemble``), or None when there is none."""
    from outerloop.inner_loop.model.ensemble import Ensemble

    d = getattr(artifacts, "dir", None)
    return Ensemble.load(artifacts) if d is not None and Ensemble.exists(d) else None  # type: ignore[arg-type]



class OuterLoop:
    """The outer loop for one process.

    ``agents`` / ``tools``: your ``@agent`` / ``@tool`` specs, added to the built-ins
    (``builtins=False`` leaves the built-in agents out; built-in tools are always there).
    ``redis``: a URL, a ``RedisTarget`` or a client (default: the settings' target, read now:
    the ``OUTERLOOP_REDIS_URL`` server or the embedded one). ``budgets``: per-agent budget
    overrides by name. ``llm``: a langchain-core chat model for the planner (rules decide when
    it is slow or wrong). ``clusters``: how users are grouped for shared tool results (default:
    k-means fitted on the first 1,000 user vectors seen, no sharing before that; pass
    ``KMeansClusters.fit(user_vectors)`` to share from the start). ``torch_threads``: torch's
    intra-op and FAISS's OpenMP threads, set once at start (one history or query at a time gains
    nothing from them, and on a busy machine they cost tens to hundreds of milliseconds); None
    leaves both alone. ``tool_caller``: where the agents' tool calls go (default: this loop's registry, in
    process); pass an ``McpToolClient`` to call the same tools over MCP.
    """

    def __init__(
        self,
        artifacts: ModelArtifacts,
        *,
        redis: RedisTarget | str | "aioredis.Redis" | None = None,
        keys: type[Keys] = Keys,
        agents: Iterable[AgentSpec] = (),
        tools: Iterable[ToolSpec] = (),
        builtins: bool = True,
        budgets: dict[str, Budget] | None = None,
        llm: "BaseChatModel | None" = None,
        llm_budget: Budget | None = None,
        config: LoopConfig | None = None,
        clusters: Clusters | None = None,
        pool: WorkerPool | None = None,
        clock_ms: Callable[[], int] = now_ms,
        torch_threads: int | None = 1,
        tool_caller: "ToolCaller | None" = None,
        ensemble: "Ensemble | None | bool" = True,
    ) -> None:
        self.artifacts = artifacts
        self.keys = keys
        self.config = config or LoopConfig()
        self.clock_ms = clock_ms
        self.torch_threads = torch_threads
        if isinstance(redis, str):
            redis = RedisTarget(url=redis)
        self._redis_arg = redis if redis is not None else RedisTarget.from_settings(get_settings())
        self.ensemble = _load_ensemble(artifacts) if ensemble is True else (ensemble or None)
        specs = [*(BUILTIN_AGENTS if builtins else ()), *((ensemble_agent,) if builtins and self.ensemble else ()),
                 *agents]
        overrides = dict(budgets or {})
        self.agents = AgentRegistry(
            dataclasses.replace(s, budget=overrides.pop(s.name)) if s.name in overrides else s for s in specs
        )
        if overrides:
            raise UsageError(f"budgets given for unknown agents: {sorted(overrides)}")
        self.co_watch = CoWatchGraph(keys=keys)
        self.trending = TrendingCounter(keys=keys)
        self.tools = ToolRegistry(builtin_tools(self.co_watch, self.trending))
        for t in tools:
            self.tools.add(t)
        for spec in self.agents:
            for name in spec.tools:
                if name != "*" and name not in self.tools:
                    raise UsageError(f"agent {spec.name!r} declares tool {name!r}, which is not registered")
        self.tool_caller: ToolCaller = tool_caller if tool_caller is not None else self.tools
        self.planner = Planner(llm=LLMPolicy(llm, budget=llm_budget) if llm is not None else None, cache=PlanCache())
        self.clusters: Clusters = clusters if clusters is not None else AdaptiveClusters()
        self._pool = pool
        self._own_pool = False
        self._own_redis = False
        self.accounting = Accounting()
        self.graph: CompiledStateGraph = build_graph(self.agents, self.config)
        self.deps: LoopDeps | None = None
        self.cycles = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> "OuterLoop":
        """Open the Redis client (bound to the running event loop) and, when an agent is
        isolated, start the worker pool. Called by ``async with`` and on first use."""
        if self.deps is not None:
            return self
        from outerloop.inner_loop.serving.user_state import UserStore  # the inner loop's one reader

        if isinstance(self._redis_arg, RedisTarget):
            redis = self._redis_arg.async_client()
            self._own_redis = True
        else:
            redis = self._redis_arg
            self._own_redis = False
        if self._pool is None and any(s.isolated for s in self.agents):
            modules = sorted({s.module for s in self.agents if s.isolated and s.module})
            self._pool = WorkerPool(size=2, preload=modules)
            self._own_pool = True
        if self._pool is not None and self._own_pool:
            await self._pool.start()
        store = MemoryStore(redis, keys=self.keys)
        self.deps = LoopDeps(
            redis=redis, keys=self.keys, artifacts=self.artifacts, tools=self.tool_caller,
            tool_deps=ToolDeps(redis=redis, artifacts=self.artifacts, clock_ms=self.clock_ms,
                               extra={ENCODE_IN_THREAD: self.config.encode_in_thread, ENSEMBLE: self.ensemble}),
            agents=self.agents, enforcer=Enforcer(fence=Fence(redis, keys=self.keys), pool=self._pool,
                                                  watchdog=self.config.watchdog, on_blocking=self.config.on_blocking,
                                                  pool_factory=self._pool_for_offenders),
            memory=store, memory_cache=MemoryCache(store), planner=self.planner, clusters=self.clusters,
            config=self.config, clock_ms=self.clock_ms,
        )
        self._users = UserStore(redis, history_cap=self.config.history_len, keys=self.keys)
        torch = sys.modules.get("torch")  # only if the artifacts brought it in
        if torch is not None and self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        faiss = sys.modules.get("faiss")
        if faiss is not None and self.torch_threads is not None:
            # one query at a time gains nothing from OpenMP, and on a busy machine the calling
            # thread can spin at its barrier waiting for starved workers (the likely cause of the
            # tools agent holding the event loop ~230 ms past its deadline in a loaded replay)
            faiss.omp_set_num_threads(self.torch_threads)
        if len(self.artifacts.catalog):  # the first forward pass pays for lazy init: not in a budget
            await asyncio.to_thread(self.artifacts.encode, [[1]])
            if self.ensemble is not None:  # nor the ensemble's members'
                await asyncio.to_thread(self.ensemble.top, np.asarray([1]), 1)
        return self

    def _pool_for_offenders(self) -> WorkerPool:
        """Workers for in-process agents moved out after blocking the event loop (started on the
        first such offence; the agents' own modules preloaded)."""
        modules = sorted({s.module for s in self.agents if s.module and not s.module.startswith("outerloop.")})
        return WorkerPool(size=2, preload=modules)

    async def aclose(self) -> None:
        if self.deps is None:
            return
        await self.deps.enforcer.aclose()
        if self._own_pool and self._pool is not None:
            await self._pool.close()
        if self._own_redis:
            await self.deps.redis.aclose()
        self.deps = None

    async def __aenter__(self) -> "OuterLoop":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- cycles ---------------------------------------------------------------------------------
    async def read_scope(self, user_id: str, triggers: Sequence[Trigger], now_ms: int) -> CycleScope:
        """Everything the cycle knows about the user: two round trips (state, memory)."""
        deps = (await self.start()).deps
        assert deps is not None
        state, memory = await asyncio.gather(  # two independent reads, in flight together
            self._users.read(user_id, self.config.history_len), deps.memory_cache.get(user_id))
        return CycleScope(
            user_id=user_id, now_ms=now_ms, triggers=list(triggers),
            history=History(state.items, state.actions, state.ts),
            seen=frozenset(state.seen.tolist()), rows=stored_rows(state.rows), memory=memory,
            tz_offset_min=next((t.tz_offset_min for t in triggers if t.tz_offset_min), 0),
        )

    async def run_cycle(self, user_id: str, triggers: Sequence[Trigger] = (), *,
                        now_ms: int | None = None) -> CycleResult:
        """Plan and run the agents for one user; returns what was planned, every run record,
        and the rows committed (only by runs that finished within budget)."""
        t0 = time.perf_counter()
        now = self.clock_ms() if now_ms is None else now_ms
        scope = await self.read_scope(user_id, triggers, now)
        final = await self.graph.ainvoke(initial_state(scope), context=self.deps)
        records = list(final.get("records", []))
        self.accounting.extend(dataclasses.replace(r, value=None) for r in records)  # totals only
        excess = len(self.accounting.records) - self.config.accounting_window
        if excess > 0:  # a long-running loop keeps recent runs only
            del self.accounting.records[:excess]
        self.cycles += 1
        if getattr(self.clusters, "ready_to_fit", False):  # between cycles, never inside a budget
            await asyncio.to_thread(self.clusters.maybe_fit)  # type: ignore[attr-defined]
        return CycleResult(
            user_id=user_id, plans=list(final.get("plans", [])), records=records,
            rows_committed=dict(final.get("committed", {})), next_triggers=list(final.get("next_triggers", [])),
            elapsed_ms=(time.perf_counter() - t0) * 1000.0, plan_cache_hit=final.get("cache_hits", 0) > 0,
            notes=list(final.get("notes", [])),
        )

    # -- data the tools read --------------------------------------------------------------------
    async def apply_events(self, events: Iterable[Event]) -> int:
        """Apply events as ``POST /v1/events`` does (the users' history and seen items; idempotent
        by ``event_id``) and feed them to the tools' structures (:meth:`ingest`): for scripts,
        notebooks and tests without the API. Returns how many events were new."""
        await self.start()
        events = list(events)
        result = await self._users.apply(events)
        await self.ingest(events)
        return int(result.applied)

    async def ingest(self, events: Iterable[Event]) -> int:
        """Feed events to the structures the tools read (co-watch graph, trending counts).
        Idempotent per event for the co-watch graph. Returns how many events were new."""
        deps = (await self.start()).deps
        assert deps is not None
        fresh = await self.co_watch.claim(deps.redis, events)  # once per event_id, for both
        await self.co_watch.link(deps.redis, fresh)
        await self.trending.record(deps.redis, fresh, self.artifacts.catalog)
        return len(fresh)

    # -- results --------------------------------------------------------------------------------
    async def rows(self, user_id: str) -> dict[str, Row]:
        """The user's stored rows (as the inner loop would read them, expired ones included)."""
        deps = (await self.start()).deps
        assert deps is not None
        return stored_rows(await deps.redis.hgetall(self.keys.rows(user_id)))

    def stats(self) -> dict[str, Any]:
        """Cache hit rates and run accounting since the loop started."""
        return {
            "cycles": self.cycles,
            "plan_cache_hit_rate": round(self.planner.cache.hit_rate, 4),
            "tool_cache_hit_rate": round(self.tools.cache.hit_rate(), 4),
            "tool_cache_by_tool": {k: round(v.hit_rate, 4) for k, v in self.tools.cache.stats.items()},
            "runs": self.accounting.summary(),
        }
