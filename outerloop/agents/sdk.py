"""The agent SDK: ``@agent`` turns a function into an :class:`AgentSpec`; the graph runs it with
an :class:`AgentContext` under its budget.

An agent is ``async def f(ctx: AgentContext) -> Any``. Through ``ctx`` it

- reads the cycle's facts about the user (``ctx.history``, ``ctx.memory(GenreBackoff)``, the
  plan step that asked for it: ``ctx.step.rows``, ``ctx.step.params``);
- calls the tools it declared (``await ctx.call_tool("vector_search", {...})``), each call
  counted against its ``max_tool_calls`` and bounded by the tool's timeout;
- stages rows (``ctx.emit_row(...)``), memory facts (``ctx.remember(fact)``,
  ``ctx.update_memory(decide)``) and other writes (``ctx.store.hset(...)``); nothing is written
  unless the run ends within its budget, and then all of it in one fenced script (facts
  compare-and-set on the memory's version, decided again on a conflict).

The context is sealed: no Redis client, no handle on the loop; reads go through ``ctx.store``.

Nothing registers itself: hand specs to ``OuterLoop(agents=[...])`` or an :class:`AgentRegistry`.

Agents declared ``isolated=True`` (CPU-bound code) run in a worker process that is SIGKILLed at
the deadline; they get an :class:`IsolatedContext` holding data only (history, memory in scope,
the user vector when the cycle has one, the step) and can emit rows, but cannot call tools.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel

from outerloop.budgets.context import RunContext
from outerloop.contracts.budget import Budget
from outerloop.contracts.plans import PlanStep
from outerloop.contracts.rows import Row, RowBranches, ScoreKind
from outerloop.contracts.triggers import SUBSCRIPTION_GROUPS, TRIGGER_KINDS, Subscription, Trigger, kinds_of
from outerloop.errors import UsageError
from outerloop.memory.facts import Fact, fact_class, fact_kinds
from outerloop.memory.store import MemoryChanges, UserMemory, staged_memory
from outerloop.storage.clients import AsyncRedisClient

if TYPE_CHECKING:
    from outerloop.agents.runtime import CycleScope, LoopDeps

F = TypeVar("F")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
DEFAULT_ROW_TTL_MS = 6 * 3600 * 1000


def _kind_of(scope: str | type) -> str:
    """A memory scope (a fact class, its kind, or ``"*"``) as a kind."""
    if isinstance(scope, type):
        if not issubclass(scope, Fact) or not isinstance(scope.model_fields["kind"].default, str):
            raise UsageError(f"memory scope {scope!r} is not a memory fact class (subclass outerloop.Fact)")
        return str(scope.model_fields["kind"].default)
    if scope != "*" and fact_class(scope) is None:
        raise UsageError(f"unknown memory scope {scope!r}; known: {fact_kinds()} or '*' "
                         "(pass your own fact class itself to declare it)")
    return scope


@dataclass(frozen=True, slots=True, eq=False)
class AgentSpec:
    """A registered agent.

    ``rows``: the row ids it may emit (the planner refreshes them on a sweep and on drift).
    ``triggers``: the trigger kinds on which the rule planner schedules it (custom agents; the
    built-ins have their own rules): the kinds the scheduler fires
    (:data:`~outerloop.contracts.triggers.TriggerKind`), or ``"event"``, every kind that carries
    the user's events (:data:`~outerloop.contracts.triggers.SUBSCRIPTION_GROUPS`); a name that is
    neither is a ``UsageError``. ``memory_scopes``: fact kinds it may read and write (``"*"`` =
    all). ``tools``: the tools it may call (``"*"`` = any registered tool).
    """

    name: str
    fn: Callable[..., Any]
    budget: Budget
    description: str = ""
    tools: tuple[str, ...] = ()
    memory_scopes: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()
    triggers: tuple[Subscription, ...] = ("sweep", "manual")
    isolated: bool = False
    row_ttl_ms: int = DEFAULT_ROW_TTL_MS
    module: str | None = None  # where the spec is reachable by name (isolated agents pickle by it)
    qualname: str | None = None

    @property
    def can_isolate(self) -> bool:
        """Whether a worker process can find this spec by name (a module-level ``@agent``)."""
        return bool(self.module and self.qualname and "<locals>" not in self.qualname)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise UsageError(f"agent name {self.name!r} must match {_NAME.pattern}")
        if not isinstance(self.budget, Budget):
            raise UsageError(f"agent {self.name!r}: budget must be an outerloop Budget, got {self.budget!r}")
        if not self.isolated and not inspect.iscoroutinefunction(self.fn):
            raise UsageError(f"agent {self.name!r} must be async def (or declared isolated=True)")
        unknown = [t for t in self.triggers if not kinds_of(t)]
        if unknown:
            raise UsageError(f"agent {self.name!r}: unknown trigger kinds {unknown}; known: "
                             f"{[*TRIGGER_KINDS, *SUBSCRIPTION_GROUPS]}")

    def may_read(self, kind: str) -> bool:
        return "*" in self.memory_scopes or kind in self.memory_scopes

    def may_call(self, tool: str) -> bool:
        return "*" in self.tools or tool in self.tools

    def __reduce__(self) -> tuple[Any, ...]:
        # Functions decorated in place are only reachable through the spec that replaced them,
        # so a spec crosses to a worker process as "the attribute qualname of module".
        if self.module is None or self.qualname is None:
            raise UsageError(f"agent {self.name!r} cannot be sent to a worker process: define it "
                             "at module level with @agent")
        return (_spec_by_name, (self.module, self.qualname))


def _spec_by_name(module: str, qualname: str) -> AgentSpec:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, AgentSpec):
        raise UsageError(f"{module}.{qualname} is not an agent spec")
    return obj


def agent(
    *,
    name: str | None = None,
    budget: Budget,
    tools: Iterable[str] = (),
    memory_scopes: Iterable[str | type] = (),
    rows: Iterable[str] | None = None,
    triggers: Iterable[Subscription] = ("sweep", "manual"),
    isolated: bool = False,
    row_ttl_ms: int = DEFAULT_ROW_TTL_MS,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], AgentSpec]:
    """Declare an agent. ``rows`` defaults to one row named after the agent.

    Works on an async function ``f(ctx)``, on a (sync or async) module-level function with
    ``isolated=True``, and on an object with a ``run(ctx)`` method (a class instance).
    """

    def wrap(obj: Callable[..., Any]) -> AgentSpec:
        fn = obj.run if not inspect.isfunction(obj) and hasattr(obj, "run") else obj
        agent_name = name or getattr(obj, "name", None) or getattr(fn, "__name__", "")
        text = description or inspect.getdoc(obj) or ""
        return AgentSpec(
            name=agent_name,
            fn=fn,
            budget=budget,
            description=text,
            tools=tuple(tools),
            memory_scopes=tuple(_kind_of(s) for s in memory_scopes),
            rows=tuple(rows) if rows is not None else (agent_name,),
            triggers=tuple(triggers),
            isolated=isolated,
            row_ttl_ms=row_ttl_ms,
            module=getattr(obj, "__module__", None) if inspect.isfunction(obj) else None,
            qualname=getattr(obj, "__qualname__", None) if inspect.isfunction(obj) else None,
        )

    return wrap


class AgentRegistry:
    """Named agents in registration order. Two agents with one name is a ``UsageError``."""

    def __init__(self, agents: Iterable[AgentSpec] = ()) -> None:
        self._agents: dict[str, AgentSpec] = {}
        for spec in agents:
            self.add(spec)

    def add(self, spec: AgentSpec) -> AgentSpec:
        if not isinstance(spec, AgentSpec):
            raise UsageError(f"expected an AgentSpec (decorate the function with @agent), got {spec!r}")
        if spec.name in self._agents:
            raise UsageError(f"an agent named {spec.name!r} is already registered")
        owners = {r: s.name for s in self._agents.values() for r in s.rows}
        for r in spec.rows:
            if r in owners:
                raise UsageError(f"row {r!r} of agent {spec.name!r} is already produced by {owners[r]!r}")
        self._agents[spec.name] = spec
        return spec

    def get(self, name: str) -> AgentSpec:
        try:
            return self._agents[name]
        except KeyError:
            raise UsageError(f"no agent named {name!r}; registered: {sorted(self._agents)}") from None

    def owner_of(self, row_id: str) -> AgentSpec | None:
        for spec in self._agents.values():
            if row_id in spec.rows:
                return spec
        return None

    def names(self) -> list[str]:
        return list(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __iter__(self) -> Iterator[AgentSpec]:
        return iter(self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)


@dataclass(slots=True)
class AgentOutput:
    """What an agent run leaves behind for the graph (its ``RunRecord.value``)."""

    rows: dict[str, Row] = field(default_factory=dict)
    triggers: list[Trigger] = field(default_factory=list)
    memory: UserMemory | None = None  # the memory after this run's commit, if it wrote any
    value: Any = None


class _RowStager:
    """Shared by both contexts: build a :class:`Row` and stage it on the run."""

    run: RunContext
    spec: AgentSpec
    _rows: dict[str, Row]

    def _stage_row(self, rows_key: str, model_version: str, now_ms: int, row_id: str,
                   title: str, reason: str, items: Sequence[tuple[int, float]], ttl_ms: int | None,
                   ordered: bool = False, score_kind: ScoreKind = "relative",
                   history_ts: int | None = None, floor: float | None = None,
                   branches: RowBranches | None = None) -> Row:
        if row_id not in self.spec.rows:
            raise UsageError(f"agent {self.spec.name!r} may only emit rows {list(self.spec.rows)}, "
                             f"not {row_id!r} (declare it in @agent(rows=...))")
        row = Row(
            row_id=row_id, title=title, reason=reason,
            items=[(int(i), round(float(s), 6)) for i, s in items],
            produced_by=self.spec.name, run_id=self.run.run_id, model_version=model_version,
            created_at=now_ms, expires_at=now_ms + (ttl_ms if ttl_ms is not None else self.spec.row_ttl_ms),
            ordered=ordered, score_kind=score_kind, history_ts=history_ts, floor=floor, branches=branches,
        )
        # fields left at None are left out: a reader that predates a field still decodes the row
        self.run.stage(rows_key, row.model_dump_json(exclude_none=True), field=row_id)
        self._rows[row_id] = row
        return row


class RunStore:
    """An agent's narrow way to Redis: reads within the loop's key namespace, and writes that are
    *staged* on the run (committed in its one fenced script only if it ends in budget).

    Writes go to the run's user's keys (``set``, ``hset``, ``hdel``), or, with ``shared=True``,
    add to a counter over every user (``hincrbyfloat``). There is no client to reach past it.
    """

    __slots__ = ("_redis", "_run", "_prefix")

    def __init__(self, redis: AsyncRedisClient, run: RunContext, prefix: str) -> None:
        self._redis = redis
        self._run = run
        self._prefix = f"{prefix}:"

    def _key(self, key: str) -> str:
        if not key.startswith(self._prefix):
            raise UsageError(f"key {key!r} is outside this loop's namespace ({self._prefix}*)")
        self._run.check()
        return key

    # reads (live, not fenced: they change nothing)
    async def get(self, key: str) -> bytes | None:
        return await self._redis.get(self._key(key))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(await self._redis.mget([self._key(k) for k in keys])) if keys else []

    async def hget(self, key: str, field: str) -> bytes | None:
        return await self._redis.hget(self._key(key), field)

    async def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        return list(await self._redis.hmget(self._key(key), list(fields))) if fields else []

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return await self._redis.hgetall(self._key(key))

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """Several hashes in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(self._key(k))
        return list(await pipe.execute()) if keys else []

    # writes (staged)
    def set(self, key: str, value: bytes | str) -> None:
        self._run.stage(self._key(key), value)

    def hset(self, key: str, field: str, value: bytes | str) -> None:
        self._run.stage(self._key(key), value, field=field)

    def hdel(self, key: str, field: str) -> None:
        self._run.stage(self._key(key), "", field=field, op="hdel")

    def hincrbyfloat(self, key: str, field: str, amount: float, *, shared: bool = False) -> None:
        self._run.stage(self._key(key), repr(float(amount)), field=field, op="hincrbyfloat", shared=shared)


class AgentContext(_RowStager):
    """What an in-process agent receives. One per run; never shared between runs.

    Sealed: it holds no Redis client and no handle on the loop. The agent reads the cycle's
    snapshot of the user (history, rows, memory), calls its declared tools, reads Redis through
    :attr:`store`, and *stages* everything it writes (rows, facts, counters): the enforcer
    commits all of it in one fenced script if the run ends within its budget, and none of it
    otherwise.
    """

    def __init__(self, run: RunContext, spec: AgentSpec, step: PlanStep, scope: "CycleScope",
                 loop: "LoopDeps") -> None:
        self.run = run
        self.spec = spec
        self.step = step
        self.scope = scope
        self.store = RunStore(loop.redis, run, loop.keys.prefix)
        self._tools = loop.tools
        self._tool_deps = loop.tool_deps
        self._artifacts = loop.artifacts
        self._keys = loop.keys
        self._config = loop.config
        self._agents = loop.agents
        self._clusters = loop.clusters
        self._memory_cache = loop.memory_cache
        self._rows: dict[str, Row] = {}
        self._triggers: list[Trigger] = []
        self._changes: dict[str, Any] = {}
        self._deletes: set[str] = set()
        self._decides: list[Callable[[UserMemory], Any]] = []
        self._on_memory: list[Callable[[MemoryCommit], None]] = []

    # -- what the agent knows ---------------------------------------------------------------
    @property
    def user_id(self) -> str:
        return self.scope.user_id

    @property
    def now_ms(self) -> int:
        return self.scope.now_ms

    @property
    def triggers(self) -> list[Trigger]:
        return self.scope.triggers

    @property
    def params(self) -> dict[str, Any]:
        return self.step.params

    @property
    def history(self) -> "Any":
        """The user's recent history (``items``, ``actions``, ``ts`` arrays, oldest first)."""
        return self.scope.history

    @property
    def seen(self) -> frozenset[int]:
        return self.scope.seen

    @property
    def artifacts(self) -> Any:
        return self._artifacts

    @property
    def catalog(self) -> Any:
        return self._artifacts.catalog

    @property
    def config(self) -> Any:
        """The loop's :class:`~outerloop.agents.runtime.LoopConfig` (row lengths, pools)."""
        return self._config

    @property
    def keys(self) -> Any:
        """The loop's key namespace (:class:`~outerloop.contracts.keys.Keys`): names only."""
        return self._keys

    def catalog_index(self) -> Any:
        """The catalog's lookups (genres, series, next episodes), built once per loop."""
        from outerloop.tools.builtin import catalog_index

        return catalog_index(self._tool_deps)

    def row_owner(self, row_id: str) -> str | None:
        """The agent that produces ``row_id`` in this loop, or None."""
        owner = self._agents.owner_of(row_id)
        return owner.name if owner is not None else None

    def remaining_ms(self) -> float:
        return self.run.remaining_ms()

    def existing_row(self, row_id: str) -> Row | None:
        """The row as it was stored when the cycle started (maybe expired), or None."""
        return self.scope.rows.get(row_id)

    def memory(self, kind: type[F] | None = None) -> list[F]:
        """Facts in this agent's memory scopes (of one class, or all of them)."""
        facts = [f for f in self.scope.memory if self.spec.may_read(f.kind)]
        if kind is not None:
            k = _kind_of(kind)
            if not self.spec.may_read(k):
                raise UsageError(f"agent {self.spec.name!r} has no memory scope {k!r}")
            facts = [f for f in facts if f.kind == k]
        return facts  # type: ignore[return-value]

    # -- acting -------------------------------------------------------------------------------
    async def call_tool(self, name: str, args: BaseModel | dict[str, Any], *,
                        share_key: str | None = None) -> Any:
        """Call a declared tool through the registry (validated, counted, timed, maybe cached)."""
        if not self.spec.may_call(name):
            raise UsageError(f"agent {self.spec.name!r} did not declare tool {name!r} "
                             f"(declared: {list(self.spec.tools)})")
        return await self._tools.call(name, args, self._tool_deps, budget=self.run, share_key=share_key)

    async def user_vector(self) -> np.ndarray | None:
        """The model's embedding of the user's history (one ``embed_history`` call per cycle,
        shared by the cycle's agents); None for a user without history."""
        if self.scope.user_vector is None:
            h = self.scope.history
            if len(h.items) == 0:
                return None
            out = await self._tools.call(
                "embed_history",
                {"items": h.items.tolist(), "actions": h.actions.tolist() or None, "ts": h.ts.tolist() or None},
                self._tool_deps, budget=self.run,
            )
            self.scope.user_vector = np.asarray(out.vector, dtype=np.float32)
        return self.scope.user_vector

    def cluster(self, vec: np.ndarray) -> tuple[str, np.ndarray] | None:
        """The user's coarse cluster (key, representative vector) for shared tool caching, or
        None when results cannot be shared (clusters not fitted yet)."""
        return self._clusters.assign(vec)

    def emit_row(self, row_id: str, *, title: str, reason: str, items: Sequence[tuple[int, float]],
                 ttl_ms: int | None = None, ordered: bool = False, score_kind: ScoreKind = "relative",
                 floor: float | None = None, branches: RowBranches | None = None) -> Row:
        """Stage a row; it reaches ``Keys.rows(user)`` only if this run commits in budget.
        ``ordered``: serve the items in this order (the inner loop otherwise re-ranks them).
        ``score_kind="log_prob"``: the scores are log-probabilities of being the next item, which
        the inner loop's ranker reads as a feature (``floor``: where the row was cut; ``branches``:
        the row had the next interaction been each of several items, see ``RowBranches``). The
        row records the newest event it saw."""
        ts = self.scope.history.ts
        return self._stage_row(self._keys.rows(self.user_id), self._artifacts.model_version,
                               self.now_ms, row_id, title, reason, items, ttl_ms, ordered, score_kind,
                               int(ts[-1]) if len(ts) else None, floor, branches)

    def raise_trigger(self, trigger: Trigger) -> None:
        """Ask the planner to look at this (e.g. a drift flag)."""
        self._triggers.append(trigger)

    def remember(self, fact: Any) -> None:
        """Stage a fact (kind must be in the agent's memory scopes)."""
        if not self.spec.may_read(fact.kind):
            raise UsageError(f"agent {self.spec.name!r} has no memory scope {fact.kind!r}")
        self.run.check()
        self._deletes.discard(fact.key)
        self._changes[fact.key] = fact

    def forget(self, key: str) -> None:
        """Stage the removal of a fact by key."""
        kind = key.split(":", 1)[0]
        if not self.spec.may_read(kind):
            raise UsageError(f"agent {self.spec.name!r} has no memory scope {kind!r}")
        self.run.check()
        self._changes.pop(key, None)
        self._deletes.add(key)

    def update_memory(self, decide: Callable[[UserMemory], Any],
                      on_commit: "Callable[[MemoryCommit], None] | None" = None) -> None:
        """Stage a memory decision: ``decide(memory) -> MemoryChanges | None``, a pure function
        of the memory it is given. It is decided on the cycle's snapshot and written with the
        run's commit, compare-and-set on the memory's version; if another writer moved the
        version, it is decided again on the memory the commit found (never written stale).
        ``on_commit`` is told what was written, once it was."""
        self.run.check()
        self._decides.append(decide)
        if on_commit is not None:
            self._on_memory.append(on_commit)

    def output(self, value: Any) -> AgentOutput:
        # the trigger list is shared: memory commit callbacks may still raise triggers
        return AgentOutput(rows=dict(self._rows), triggers=self._triggers, value=value)

    async def _stage_memory(self, out: AgentOutput) -> None:
        """The run's facts as one guarded, staged write (see :meth:`update_memory`)."""
        decides = list(self._decides)
        if self._changes or self._deletes:
            upsert, delete = tuple(self._changes.values()), tuple(sorted(self._deletes))
            decides.insert(0, lambda mem: MemoryChanges(upsert=upsert, delete=tuple(k for k in delete if k in mem.facts)))
        if not decides:
            return
        callbacks = list(self._on_memory)

        def committed(before: UserMemory, changes: MemoryChanges, after: UserMemory, attempts: int) -> None:
            out.memory = after
            self._memory_cache.put(after)
            info = MemoryCommit(before=before, changes=changes, after=after, attempts=attempts)
            for cb in callbacks:
                cb(info)

        cond = await staged_memory(self._keys, self.user_id, self.scope.memory, decides, committed)
        if cond is not None:
            self.run.stage_conditional(cond)


@dataclass(frozen=True, slots=True)
class MemoryCommit:
    """What a run's memory commit wrote: the memory it decided on, the delta, the memory after,
    and how many decisions it took (1 = no other writer got in between)."""

    before: UserMemory
    changes: MemoryChanges
    after: UserMemory
    attempts: int


@dataclass(slots=True)
class IsolatedPayload:
    """Plain data an isolated agent gets (it crosses a process boundary)."""

    user_id: str
    now_ms: int
    step: PlanStep
    triggers: list[Trigger]
    items: np.ndarray
    actions: np.ndarray
    ts: np.ndarray
    seen: frozenset[int]
    facts: list[Any]
    user_vector: np.ndarray | None
    model_version: str
    rows_key: str  # Keys.rows(user) in the loop's namespace


class IsolatedContext(_RowStager):
    """The context of an ``isolated=True`` agent: data in, rows out, no tools, no Redis.

    It reads like an :class:`AgentContext` where it can (``history``, ``seen``, ``memory(kind)``,
    ``triggers``, ``params``, ``emit_row``), so an ``async def`` agent moved to a worker process
    after blocking the event loop keeps working if it only computes rows from the user's data;
    what needs the loop (tools, the catalog) raises :class:`UsageError` here.
    """

    def __init__(self, run: RunContext, spec: AgentSpec, payload: IsolatedPayload) -> None:
        self.run = run
        self.spec = spec
        self.payload = payload
        self._rows: dict[str, Row] = {}

    user_id = property(lambda self: self.payload.user_id)
    now_ms = property(lambda self: self.payload.now_ms)
    step = property(lambda self: self.payload.step)
    params = property(lambda self: self.payload.step.params)
    triggers = property(lambda self: self.payload.triggers)
    user_vector = property(lambda self: self.payload.user_vector)

    @property
    def history(self) -> Any:
        from outerloop.agents.runtime import History

        p = self.payload
        return History(p.items, p.actions, p.ts)

    @property
    def seen(self) -> frozenset[int]:
        return self.payload.seen

    def memory(self, kind: type[F] | None = None) -> list[Any]:
        facts = list(self.payload.facts)
        return facts if kind is None else [f for f in facts if f.kind == _kind_of(kind)]

    def remaining_ms(self) -> float:
        return self.run.remaining_ms()

    async def call_tool(self, name: str, args: Any, **_: Any) -> Any:
        raise UsageError(f"agent {self.spec.name!r} runs isolated (in a worker process), where tools cannot be "
                         f"called (asked for {name!r})")

    @property
    def catalog(self) -> Any:
        raise UsageError(f"agent {self.spec.name!r} runs isolated (in a worker process), without the catalog")

    artifacts = catalog

    def emit_row(self, row_id: str, *, title: str, reason: str, items: Sequence[tuple[int, float]],
                 ttl_ms: int | None = None, ordered: bool = False, score_kind: ScoreKind = "relative",
                 floor: float | None = None, branches: RowBranches | None = None) -> Row:
        p = self.payload
        return self._stage_row(p.rows_key, p.model_version, p.now_ms, row_id, title, reason, items, ttl_ms,
                               ordered, score_kind, int(p.ts[-1]) if len(p.ts) else None, floor, branches)


async def run_agent(run: RunContext, spec: AgentSpec, step: PlanStep, scope: "CycleScope",
                    loop: "LoopDeps") -> AgentOutput:
    """The in-process entry the enforcer runs: build the context, run the agent, stage its facts
    (decided on the cycle's snapshot, still inside the budget), hand back what it produced. The
    enforcer commits rows, facts and counters together, or nothing."""
    ctx = AgentContext(run, spec, step, scope, loop)
    value = spec.fn(ctx)
    if inspect.isawaitable(value):
        value = await value
    out = ctx.output(value)
    await ctx._stage_memory(out)
    return out


def run_isolated_agent(run: RunContext, spec: AgentSpec, payload: IsolatedPayload) -> AgentOutput:
    """The worker-process entry (module level, so it pickles by reference)."""
    import asyncio

    ctx = IsolatedContext(run, spec, payload)
    value = spec.fn(ctx)
    if inspect.isawaitable(value):
        value = asyncio.run(_await(value))
    return AgentOutput(rows=dict(ctx._rows), value=value)


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw
