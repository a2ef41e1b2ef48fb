"""One registry of typed tools, and the shared-output cache the registry consults.

The registry is an ordinary object: build one (``ToolRegistry()``, or
``outerloop.tools.builtin.default_registry()`` for the built-ins) and pass it around. Every call
goes through :meth:`ToolRegistry.call`, which is where the contract is enforced:

1. the input is validated against the tool's input model (developer misuse -> ``UsageError``);
2. the call is counted against the calling agent's budget (``budget.count_tool_call()``), so an
   agent over ``max_tool_calls`` stops here, before doing the work;
3. a shareable output is served from the :class:`ToolCache` when another user of the same
   cluster (or anyone, for global tools) already asked;
4. the call runs under ``min(tool timeout, agent's remaining time)``;
5. the output is validated against the output model.

The registry is introspectable (names, descriptions, JSON schemas, timeouts), so an MCP server
can serve the very same tools.

Every call past validation is one ``tool.call`` span (a child of the calling agent's run span,
``cached`` true/false for shareable tools) and one cache lookup counted under ``cache="tool"``:
the registry is the one place every call goes through, in process and behind the MCP server.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from outerloop import telemetry
from outerloop.errors import UsageError
from outerloop.tools.contracts import ToolDeps, ToolOutputInvalid, ToolSpec, ToolTimeout


class CallBudget(Protocol):
    """The part of a run's context the registry charges (``outerloop.budgets.RunContext``)."""

    def count_tool_call(self) -> None: ...

    def remaining_ms(self) -> float: ...


class ToolCaller(Protocol):
    """What agents call tools through: a :class:`ToolRegistry` (in process) or an
    ``outerloop.tools.mcp.client.McpToolClient`` (over MCP, local or remote)."""

    async def call(self, name: str, args: BaseModel | dict[str, Any], deps: ToolDeps, *,
                   budget: CallBudget | None = None, share_key: str | None = None) -> BaseModel: ...

    def __contains__(self, name: object) -> bool: ...


@dataclass(slots=True)
class HitStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(slots=True)
class ToolCache:
    """Bounded LRU of shareable tool outputs, with a time-to-live per tool.

    Keys are ``(tool, share key)``: for cluster-shared tools the caller's cluster key, for global
    tools the canonical JSON of the input. Kept in process on purpose: a hit must cost
    microseconds, and losing it on restart only costs one recomputation per cluster.
    """

    max_entries: int = 4096
    _data: OrderedDict[tuple[str, str], tuple[float, BaseModel]] = field(default_factory=OrderedDict)
    stats: dict[str, HitStats] = field(default_factory=dict)

    def get(self, tool: str, key: str, now_ms: float) -> BaseModel | None:
        st = self.stats.setdefault(tool, HitStats())
        entry = self._data.get((tool, key))
        if entry is None or entry[0] < now_ms:
            if entry is not None:
                del self._data[(tool, key)]
            st.misses += 1
            return None
        self._data.move_to_end((tool, key))
        st.hits += 1
        return entry[1]

    def put(self, tool: str, key: str, value: BaseModel, expires_ms: float) -> None:
        self._data[(tool, key)] = (expires_ms, value)
        self._data.move_to_end((tool, key))
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def hit_rate(self, tool: str | None = None) -> float:
        """Hit rate of one tool, or over all tools."""
        if tool is not None:
            return self.stats.get(tool, HitStats()).hit_rate
        total = HitStats(
            hits=sum(s.hits for s in self.stats.values()),
            misses=sum(s.misses for s in self.stats.values()),
        )
        return total.hit_rate

    def clear(self) -> None:
        self._data.clear()
        self.stats.clear()


class ToolRegistry:
    """Named tools with typed contracts. Adding two tools with one name is a ``UsageError``."""

    def __init__(self, tools: Iterable[ToolSpec] = (), *, cache: ToolCache | None = None) -> None:
        self._tools: dict[str, ToolSpec] = {}
        self.cache = cache if cache is not None else ToolCache()
        for spec in tools:
            self.add(spec)

    # --- introspection -----------------------------------------------------------------------

    def add(self, spec: ToolSpec) -> ToolSpec:
        if not isinstance(spec, ToolSpec):
            raise UsageError(f"expected a ToolSpec (decorate the function with @tool), got {spec!r}")
        if spec.name in self._tools:
            raise UsageError(f"a tool named {spec.name!r} is already registered")
        self._tools[spec.name] = spec
        return spec

    def get(self, name: str) -> ToolSpec:
        try:
            return self._tools[name]
        except KeyError:
            raise UsageError(f"no tool named {name!r}; registered: {sorted(self._tools)}") from None

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def describe(self) -> list[dict[str, Any]]:
        """Every tool's name, description, input/output JSON schema and timeout."""
        return [spec.describe() for spec in self._tools.values()]

    def copy(self) -> "ToolRegistry":
        """A registry with the same tools and the same cache (to extend without mutating)."""
        return ToolRegistry(self._tools.values(), cache=self.cache)

    # --- calling -----------------------------------------------------------------------------

    async def call(
        self,
        name: str,
        args: BaseModel | dict[str, Any],
        deps: ToolDeps,
        *,
        budget: CallBudget | None = None,
        share_key: str | None = None,
    ) -> BaseModel:
        """Validate, charge, maybe serve from cache, run under a timeout, validate the output.

        ``share_key`` is required for ``share="cluster"`` tools to be cached (the caller knows
        the cluster; the registry does not); without it such a call is simply not cached.
        """
        spec = self.get(name)
        try:
            parsed = spec.input_model.model_validate(args.model_dump() if isinstance(args, BaseModel) else args)
        except ValidationError as exc:
            raise UsageError(f"tool {name!r}: invalid input: {exc}") from exc
        key = spec.cache_key(parsed, share_key)
        with telemetry.tool_call_span(name, share=spec.share) as span:
            if budget is not None:
                budget.count_tool_call()  # over budget: a failed call on the span
            now = float(deps.clock_ms())
            if key is not None:
                cached = self.cache.get(name, key, now)
                telemetry.count_cache("tool", cached is not None)
                span.set_attribute("cached", cached is not None)
                if cached is not None:
                    return cached

            timeout_ms = float(spec.timeout_ms)
            if budget is not None:
                timeout_ms = min(timeout_ms, max(budget.remaining_ms(), 0.0))
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout_ms / 1000.0):
                    out = await spec.fn(parsed, deps)
            except TimeoutError:
                took = (time.perf_counter() - started) * 1000
                raise ToolTimeout(f"tool {name!r} timed out after {took:.1f} ms (limit {timeout_ms:.1f} ms)") from None
            if not isinstance(out, spec.output_model):
                try:
                    out = spec.output_model.model_validate(out)
                except ValidationError as exc:
                    raise ToolOutputInvalid(f"tool {name!r} returned an invalid output: {exc}") from exc
            if key is not None:
                self.cache.put(name, key, out, now + spec.cache_ttl_ms)
            return out
