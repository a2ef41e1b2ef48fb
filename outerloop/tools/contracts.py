"""Tool contracts: a tool is a typed async function with a pydantic input and output model.

A :class:`ToolSpec` is everything a caller needs without importing the implementation: its
name, the description (the function's docstring, so the words a developer writes once are the
words an LLM or an MCP client reads), the JSON schemas of its input and output, its timeout, and
whether its results may be shared across users. The registry, the tool agent and the MCP server
all work from the spec, so a tool is defined once and reachable three ways.

Tools receive one deps object (:class:`ToolDeps`): the Redis client, the model artifacts and the
catalog. They never see agent budgets; the registry counts calls and enforces timeouts.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field

from outerloop.clock import now_ms
from outerloop.errors import RunFailed, UsageError

if TYPE_CHECKING:  # imported for annotations only; tools stay importable without redis at hand
    import numpy as np
    import redis.asyncio as aioredis

    from outerloop.data.schema import Catalog

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)


class ToolTimeout(RunFailed):
    """A tool call ran past its own ``timeout_ms`` (or the agent's remaining time)."""


class ToolOutputInvalid(RunFailed):
    """A tool returned something that does not validate against its output model."""


class AnnIndex(Protocol):
    """What the tools need from the FAISS index wrapper."""

    def search(self, user_vecs: "np.ndarray", k: int) -> tuple["np.ndarray", "np.ndarray"]: ...


class ModelArtifacts(Protocol):
    """What the tools need from trained artifacts (``outerloop.inner_loop.model.artifacts.Artifacts``)."""

    catalog: "Catalog"
    item_vectors: "np.ndarray"  # (N+1, d), row 0 = padding
    popularity: "np.ndarray"  # (N+1,)
    index: AnnIndex
    model_version: str

    def encode(self, histories: Any, actions: Any = None, ts: Any = None) -> "np.ndarray": ...



@dataclass(slots=True)
class ToolDeps:
    """The one object every tool receives. ``extra`` carries whatever an application adds for its
    own tools (a feature store client, a clock for replays) without changing this type."""

    redis: "aioredis.Redis"
    artifacts: ModelArtifacts
    clock_ms: Callable[[], int] = now_ms
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def catalog(self) -> "Catalog":
        return self.artifacts.catalog


ShareScope = Literal["none", "cluster", "global"]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One registered tool. Build it with :func:`tool`; call it through a ``ToolRegistry``.

    ``share`` says when an output may be reused for another caller: ``"none"`` (personal),
    ``"cluster"`` (same for users in one coarse cluster of the embedding space: the caller gives
    the cluster key) or ``"global"`` (same input, same answer for everyone, e.g. trending).
    ``cache_ttl_ms`` bounds how stale a shared answer may get.
    """

    name: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    fn: Callable[[Any, ToolDeps], Awaitable[BaseModel]]
    timeout_ms: int = 100
    share: ShareScope = "none"
    cache_ttl_ms: int = 60_000

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        return self.output_model.model_json_schema()

    def cache_key(self, parsed: BaseModel, share_key: str | None) -> str | None:
        """Where a shareable output is cached: the canonical input for ``share="global"`` tools,
        the caller's cluster key for ``share="cluster"`` ones; None means not cached."""
        if self.share == "global":
            return parsed.model_dump_json()
        if self.share == "cluster":
            return share_key
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-able description: what an MCP server lists or an LLM is shown."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema(),
            "output_schema": self.output_schema(),
            "timeout_ms": self.timeout_ms,
            "share": self.share,
        }


def _models_of(fn: Callable[..., Any]) -> tuple[type[BaseModel], type[BaseModel]]:
    """Input and output models from the annotations ``async def f(args: In, deps) -> Out``."""
    try:
        hints = get_type_hints(fn)
    except NameError as exc:
        raise UsageError(f"tool {fn.__name__!r}: cannot resolve its type hints ({exc})") from exc
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise UsageError(
            f"tool {fn.__name__!r} must take exactly (args: <pydantic model>, deps: ToolDeps); "
            f"it takes {params}"
        )
    in_model, out_model = hints.get(params[0]), hints.get("return")
    for what, model in (("first parameter", in_model), ("return type", out_model)):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise UsageError(f"tool {fn.__name__!r}: its {what} must be annotated with a pydantic model")
    return typing.cast(type[BaseModel], in_model), typing.cast(type[BaseModel], out_model)


def tool(
    *,
    name: str | None = None,
    timeout_ms: int = 100,
    share: ShareScope = "none",
    cache_ttl_ms: int = 60_000,
    description: str | None = None,
) -> Callable[[Callable[[InT, ToolDeps], Awaitable[OutT]]], ToolSpec]:
    """Turn ``async def f(args: In, deps: ToolDeps) -> Out`` into a :class:`ToolSpec`.

    The docstring is the description (required: a tool nobody can describe cannot be chosen by a
    planner or an MCP client). Nothing is registered anywhere: pass the spec to
    ``ToolRegistry.add`` or ``OuterLoop(tools=[...])``.
    """

    def wrap(fn: Callable[[InT, ToolDeps], Awaitable[OutT]]) -> ToolSpec:
        tool_name = name or fn.__name__
        if not _NAME.match(tool_name):
            raise UsageError(f"tool name {tool_name!r} must match {_NAME.pattern}")
        if not inspect.iscoroutinefunction(fn):
            raise UsageError(f"tool {tool_name!r} must be an async function")
        if timeout_ms <= 0:
            raise UsageError(f"tool {tool_name!r}: timeout_ms must be positive, got {timeout_ms}")
        text = description or inspect.getdoc(fn)
        if not text:
            raise UsageError(f"tool {tool_name!r} needs a docstring (it becomes its description)")
        in_model, out_model = _models_of(fn)
        return ToolSpec(
            name=tool_name,
            description=text,
            input_model=in_model,
            output_model=out_model,
            fn=fn,
            timeout_ms=timeout_ms,
            share=share,
            cache_ttl_ms=cache_ttl_ms,
        )

    return wrap


# --- models shared by several built-in tools -------------------------------------------------


class ScoredItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    item_id: int = Field(ge=1)
    score: float


class ScoredItems(BaseModel):
    """A ranked list, best first."""

    items: list[ScoredItem] = Field(default_factory=list)

    @classmethod
    def from_pairs(cls, pairs: "Iterable[tuple[int, float]]") -> "ScoredItems":
        """Build from (item_id, score) pairs in one validation call (hundreds of items: one
        call is several times cheaper than one model per item)."""
        return cls.model_validate({"items": [{"item_id": int(i), "score": float(s)} for i, s in pairs]})

    def ids(self) -> list[int]:
        return [it.item_id for it in self.items]
