"""``McpToolClient``: call tools on an MCP server with the same shape as ``ToolRegistry.call``.

The tool agent calls ``tools.call(name, args, deps, budget=..., share_key=...)`` and gets a
validated output model back. This class keeps that shape when the tools live behind MCP (a local
subprocess over stdio, a remote server over streamable HTTP, or an in-process ``MCPServer``), so
swapping transports is a constructor argument, not a code change in the agents:

    async with McpToolClient.stdio("outerloop", ["mcp", "--artifacts", "artifacts/demo"]) as tools:
        out = await tools.call("vector_search", {"vector": v, "k": 100}, deps, budget=run)

What stays the same as in process: the input is validated locally against the tool's contract
(a ``UsageError`` before anything is sent), the call is charged to the budget
(``budget.count_tool_call()``), shareable outputs are served from the same kind of
``ToolCache``, and the output is validated into the contract's output model. What differs: the
server runs the tool with its own deps (``deps`` is accepted for the shape and only lends its
clock to the cache), and the call's time limit is the tool's timeout plus an allowance for the
round trip, never more than the agent's remaining time.

Contracts (the ``ToolSpec`` s whose models type the calls) default to the built-in tools; pass the
registry your agents use. On connect, each contract's schemas are compared with the server's
listing, so a client and server on different contract versions fail at start, not mid-run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2  # the mcp SDK's HTTP client (a dependency of mcp)
from mcp import Client, MCPError, StdioServerParameters
from mcp_types import CallToolResult, Tool
from pydantic import BaseModel, ValidationError

from outerloop.errors import RunFailed, UsageError, UserInputError
from outerloop.tools.contracts import ToolDeps, ToolOutputInvalid, ToolSpec, ToolTimeout
from outerloop.tools.mcp.server import ERROR_META_KEY, explain_validation
from outerloop.tools.registry import CallBudget, ToolCache, ToolRegistry

if TYPE_CHECKING:
    from mcp.client import Transport
    from mcp.server import MCPServer

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    MCPError, OSError, httpx2.HTTPError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream,
)


class McpToolClient:
    """Tools on an MCP server, called like ``ToolRegistry.call``. Use it as an async context
    manager (it owns the connection); one client serves concurrent calls."""

    def __init__(
        self,
        server: "MCPServer | Transport | StdioServerParameters | str",
        *,
        contracts: ToolRegistry | Iterable[ToolSpec] | None = None,
        token: str | None = None,
        cache: ToolCache | None = None,
        rpc_allowance_ms: float = 1000.0,
        check_contracts: bool = True,
    ) -> None:
        if contracts is None:
            from outerloop.tools.builtin import builtin_tools

            contracts = builtin_tools()
        self._specs: dict[str, ToolSpec] = {s.name: s for s in contracts}
        self._server = server
        self._token = token
        self.cache = cache if cache is not None else ToolCache()
        self.rpc_allowance_ms = float(rpc_allowance_ms)
        self.check_contracts = check_contracts
        self._client: Client | None = None
        self._stack: AsyncExitStack | None = None
        self._remote: dict[str, Tool] = {}
        self._refused: int | None = None
        self.calls_sent = 0  # calls that went over MCP (cache hits and local refusals excluded)

    # --- ways to reach a server ---------------------------------------------------------------

    @classmethod
    def stdio(cls, command: str, args: Sequence[str] = (), *, env: dict[str, str] | None = None,
              cwd: str | Path | None = None, **options: Any) -> "McpToolClient":
        """Start ``command args...`` (e.g. ``outerloop mcp --artifacts DIR``) and talk over its
        stdin/stdout. ``env`` is added to a minimal inherited environment (PATH, HOME, ...)."""
        return cls(StdioServerParameters(command=command, args=list(args), env=env, cwd=cwd), **options)

    @classmethod
    def http(cls, url: str, *, token: str, **options: Any) -> "McpToolClient":
        """A streamable-HTTP server at ``url`` (ending in ``/mcp``), with its bearer token."""
        return cls(url, token=token, **options)

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> "McpToolClient":
        stack = AsyncExitStack()
        failure: BaseException | None = None
        try:
            try:
                client = Client(await self._transport(stack))
                self._client = await stack.enter_async_context(client)
                listing = await self._client.list_tools()
            except* _TRANSPORT_ERRORS as group:  # the SDK raises from task groups
                failure = group
        except BaseException:
            await stack.aclose()
            raise
        if failure is not None:
            self._client = None
            await stack.aclose()
            raise RunFailed(f"cannot connect to the MCP server: {self._connect_problem(failure)}") from failure
        self._stack = stack
        self._remote = {t.name: t for t in listing.tools}
        if self.check_contracts:
            try:
                self._check_contracts()
            except UsageError:
                await self.__aexit__(None, None, None)
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _transport(self, stack: AsyncExitStack) -> Any:
        server = self._server
        if not isinstance(server, str):
            return server
        from mcp.client.streamable_http import streamable_http_client

        async def note_refusal(response: httpx2.Response) -> None:
            if response.status_code in (401, 403):  # the SDK reports these as a generic error
                self._refused = response.status_code

        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        http = await stack.enter_async_context(httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(30.0, read=300.0), event_hooks={"response": [note_refusal]}))
        return streamable_http_client(server, http_client=http)

    def _connect_problem(self, failure: BaseException) -> str:
        if self._refused is not None:
            which = "no" if not self._token else "a wrong"
            return f"HTTP {self._refused}: the server refused the request ({which} bearer token)"
        return "; ".join(_describe(e) for e in _leaves(failure))

    def _check_contracts(self) -> None:
        drift = []
        for name, spec in self._specs.items():
            remote = self._remote.get(name)
            if remote is None:
                continue  # calling it fails clearly; the server may simply not offer it
            if remote.input_schema != spec.input_schema() or (remote.output_schema or {}) != spec.output_schema():
                drift.append(name)
        if drift:
            raise UsageError(f"the MCP server's schemas differ from the local contracts of {sorted(drift)} "
                             "(client and server run different outerloop versions?)")

    # --- introspection (the parts of ToolRegistry an agent or tool reads) ----------------------

    def names(self) -> list[str]:
        """Tools that are both on the server and typed by a local contract."""
        return [n for n in self._specs if n in self._remote]

    def __contains__(self, name: object) -> bool:
        return name in self._specs and name in self._remote

    def __iter__(self) -> Iterator[ToolSpec]:
        return (self._specs[n] for n in self.names())

    def __len__(self) -> int:
        return len(self.names())

    def get(self, name: str) -> ToolSpec:
        if name not in self._specs:
            raise UsageError(f"no local contract for tool {name!r}; pass its ToolSpec in contracts=")
        if self._client is not None and name not in self._remote:
            raise UsageError(f"the MCP server has no tool {name!r}; it offers {sorted(self._remote)}")
        return self._specs[name]

    def remote_tools(self) -> list[Tool]:
        """The server's listing as MCP ``Tool`` objects (names, descriptions, schemas)."""
        return list(self._remote.values())

    # --- calling ------------------------------------------------------------------------------

    async def call(
        self,
        name: str,
        args: BaseModel | dict[str, Any],
        deps: ToolDeps | None = None,
        *,
        budget: CallBudget | None = None,
        share_key: str | None = None,
    ) -> BaseModel:
        """Validate, charge, maybe serve from cache, call over MCP under a time limit, validate
        the output. Raises like ``ToolRegistry.call`` (``UsageError``, ``ToolTimeout``,
        ``ToolOutputInvalid``, ``RunFailed``), plus ``UserInputError`` when the server refuses
        the request itself (e.g. an unknown user)."""
        if self._client is None:
            raise UsageError("McpToolClient is not connected: use it as `async with McpToolClient(...)`")
        spec = self.get(name)
        try:
            parsed = spec.input_model.model_validate(args.model_dump() if isinstance(args, BaseModel) else args)
        except ValidationError as exc:
            raise UsageError(f"tool {name!r}: invalid input: {explain_validation(exc)}") from exc
        if budget is not None:
            budget.count_tool_call()

        key = spec.cache_key(parsed, share_key)
        now = float(deps.clock_ms()) if deps is not None else time.time() * 1000.0
        if key is not None and (cached := self.cache.get(name, key, now)) is not None:
            return cached

        limit_ms = spec.timeout_ms + self.rpc_allowance_ms
        if budget is not None:
            limit_ms = min(limit_ms, max(budget.remaining_ms(), 0.0))
        started = time.perf_counter()
        self.calls_sent += 1
        try:
            with anyio.fail_after(limit_ms / 1000.0):
                result = await self._client.call_tool(name, parsed.model_dump(mode="json"))
        except TimeoutError:
            took = (time.perf_counter() - started) * 1000
            raise ToolTimeout(f"tool {name!r} over MCP timed out after {took:.1f} ms "
                              f"(limit {limit_ms:.1f} ms)") from None
        except _TRANSPORT_ERRORS as exc:
            raise RunFailed(f"tool {name!r}: MCP call failed: {_describe(exc)}") from exc
        out = _output(spec, result)
        if key is not None:
            self.cache.put(name, key, out, now + spec.cache_ttl_ms)
        return out


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _output(spec: ToolSpec, result: CallToolResult) -> BaseModel:
    """The result as the spec's output model, or the server's error as the matching exception."""
    text = "\n".join(getattr(c, "text", "") for c in result.content).strip()
    if result.is_error:
        kind = (result.meta or {}).get(ERROR_META_KEY)
        message = text or f"tool {spec.name!r} failed on the MCP server"
        if kind == "timeout":
            raise ToolTimeout(message)
        if kind == "invalid_arguments":
            raise UsageError(message)
        if kind == "invalid_input":
            raise UserInputError(message)
        raise RunFailed(message)
    data = result.structured_content
    try:
        if data is None:
            data = json.loads(text)
        return spec.output_model.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise ToolOutputInvalid(f"tool {spec.name!r} returned an invalid output over MCP: {exc}") from exc
