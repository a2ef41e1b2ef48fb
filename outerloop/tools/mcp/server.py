"""The MCP server: a ``ToolRegistry`` served to any MCP client, over stdio or streamable HTTP.

The server is generated from a registry, so a tool exists once: every ``ToolSpec`` (built-ins,
``@tool`` specs added through the SDK, the user tools) becomes an MCP tool with the spec's name,
description, input JSON schema and output JSON schema, and every call goes through
``ToolRegistry.call`` (validation, the tool's own timeout, output validation) exactly as an
agent's call does.

Failures stay inside the protocol: a tool that fails, times out or gets bad arguments answers an
``isError`` result whose text says what went wrong, and the server keeps serving.
``_meta["outerloop/error"]`` carries the kind: ``invalid_arguments`` (the schema),
``invalid_input`` (e.g. an unknown user), ``timeout``, ``unavailable`` (Redis), ``failed`` or
``internal``. Unexpected exceptions are logged on the server with their traceback; the client
only reads "internal error".

HTTP is for remote clients and always needs a bearer token: the SDK's auth middleware asks
:class:`StaticTokenVerifier` (a constant-time comparison) before any MCP message is read, and
answers 401 otherwise. Stdio is for local clients that start the server themselves.

The SDK's ``@server.tool()`` derives schemas from a Python signature; here the schemas already
exist (the specs'), so each tool is built as an SDK ``Tool`` with those schemas given verbatim.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcp.server import MCPServer
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.exceptions import RedisError

from outerloop.errors import OuterloopError, UsageError, UserInputError
from outerloop.tools.contracts import ToolDeps, ToolSpec, ToolTimeout
from outerloop.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from outerloop.agents.loop import OuterLoop
    from outerloop.storage.clients import RedisTarget
    from outerloop.contracts.keys import Keys

log = logging.getLogger(__name__)

SERVER_NAME = "outerloop"
ERROR_META_KEY = "outerloop/error"
MIN_TOKEN_CHARS = 16
INSTRUCTIONS = (
    "Tools of an outerloop recommender. Users and items are ids: call get_user_history or "
    "recommend for a user id, get_item for an item id, search_similar_items with a title when you "
    "only know a name. explain_recommendation says why an item is in a user's rows; refresh_user "
    "re-runs the user's agents (it writes rows, use it sparingly). converse answers a request in "
    "plain words ('something funny under 90 minutes, no romance') with explained catalog picks; "
    "pass its turns back to refine it ('shorter')."
)


# --- one MCP tool per ToolSpec ----------------------------------------------------------------


def _error(kind: str, message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True,
                          _meta={ERROR_META_KEY: kind})


class _Arguments(ArgModelBase):
    """Hands the raw arguments through: the spec's input model validates them in :func:`to_mcp_tool`
    (one validation, one error format), while the listing still shows the spec's schema."""

    model_config = ConfigDict(extra="allow")

    def model_dump_one_level(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def explain_validation(exc: ValidationError) -> str:
    """``field: problem; other.field: problem`` (no input values, no documentation links)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _unstringify(model: type[BaseModel], arguments: dict[str, Any]) -> dict[str, Any]:
    """Some clients send lists and objects as JSON text: decode those for non-string fields."""
    out = dict(arguments)
    for key, value in arguments.items():
        f = model.model_fields.get(key)
        if f is None or not isinstance(value, str) or f.annotation is str or not value.lstrip().startswith(("[", "{")):
            continue
        try:
            out[key] = json.loads(value)
        except ValueError:
            continue
    return out


def to_mcp_tool(spec: ToolSpec, registry: ToolRegistry, deps: ToolDeps, *,
                annotations: ToolAnnotations | None = None) -> Tool:
    """An MCP tool that calls ``spec`` through ``registry`` with ``deps``.

    The listing shows ``spec.input_schema()`` and ``spec.output_schema()`` verbatim; results carry
    the output both as structured content and as JSON text (for clients that read only text).
    """
    name = spec.name

    async def call(**arguments: Any) -> CallToolResult:
        try:
            parsed = spec.input_model.model_validate(_unstringify(spec.input_model, arguments))
        except ValidationError as exc:
            return _error("invalid_arguments", f"tool {name!r}: invalid arguments: {explain_validation(exc)}")
        try:
            out = await registry.call(name, parsed, deps)
        except ToolTimeout as exc:
            return _error("timeout", str(exc))
        except UsageError as exc:
            return _error("invalid_arguments", str(exc))
        except (UserInputError, ValidationError) as exc:  # e.g. an unknown user: the request, not the tool
            text = explain_validation(exc) if isinstance(exc, ValidationError) else str(exc)
            return _error("invalid_input", f"tool {name!r}: {text}")
        except RedisError as exc:
            log.warning("tool %s: storage unavailable: %s", name, exc)
            return _error("unavailable", f"tool {name!r}: storage unavailable ({type(exc).__name__}); retry later")
        except OuterloopError as exc:
            return _error("failed", f"tool {name!r} failed: {exc}")
        except Exception:  # noqa: BLE001 - the boundary: log it here, keep serving, tell the client little
            log.exception("tool %s raised an unexpected exception", name)
            return _error("internal", f"tool {name!r}: internal error (the server log has the details)")
        return CallToolResult(content=[TextContent(type="text", text=out.model_dump_json())],
                              structured_content=out.model_dump(mode="json"))

    metadata = FuncMetadata(arg_model=_Arguments, output_schema=spec.output_schema(),
                            output_model=spec.output_model)
    return Tool(fn=call, name=name, title=None, description=spec.description, parameters=spec.input_schema(),
                fn_metadata=metadata, is_async=True, context_kwarg=None, annotations=annotations,
                meta={"outerloop/timeout_ms": spec.timeout_ms, "outerloop/share": spec.share})


class StaticTokenVerifier:
    """Accepts exactly one bearer token, compared in constant time (``hmac.compare_digest``)."""

    def __init__(self, token: str, *, client_id: str = "outerloop-mcp-client") -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise UserInputError(f"the MCP bearer token must have at least {MIN_TOKEN_CHARS} characters")
        self._token = token.encode()
        self._client_id = client_id

    async def verify_token(self, token: str) -> AccessToken | None:
        if not hmac.compare_digest(token.encode(), self._token):
            return None
        return AccessToken(token="<redacted>", client_id=self._client_id, scopes=[])


def build_server(
    registry: ToolRegistry,
    deps: ToolDeps,
    *,
    name: str = SERVER_NAME,
    instructions: str = INSTRUCTIONS,
    read_only: Iterable[str] = (),
    annotations: Mapping[str, ToolAnnotations] | None = None,
    token: str | None = None,
    base_url: str = "http://127.0.0.1",
) -> MCPServer:
    """An ``MCPServer`` serving every tool of ``registry`` with ``deps``.

    ``read_only``: tool names to annotate as read-only (a hint clients show to people).
    ``token``: require this bearer token on HTTP (``base_url`` is where the server is reached;
    the SDK's auth settings need it). Stdio ignores the token: the client started the process.
    """
    hints = dict(annotations or {})
    for tool_name in read_only:
        hints.setdefault(tool_name, ToolAnnotations(read_only_hint=True, open_world_hint=False))
    tools = [to_mcp_tool(spec, registry, deps, annotations=hints.get(spec.name)) for spec in registry]
    auth: dict[str, Any] = {}
    if token is not None:
        auth = {"token_verifier": StaticTokenVerifier(token),
                "auth": AuthSettings(issuer_url=base_url, resource_server_url=None)}
    return MCPServer(name, instructions=instructions, version=_package_version(), tools=tools,
                     log_level="WARNING", **auth)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("outerloop")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def http_app(server: MCPServer, *, host: str = "127.0.0.1", path: str = "/mcp") -> "Starlette":
    """The streamable-HTTP ASGI app of ``server`` (refuses a server built without a token)."""
    if server.settings.auth is None:
        raise UserInputError("refusing to serve MCP over HTTP without a bearer token "
                             "(set OUTERLOOP_MCP_TOKEN or pass --token-file)")
    return server.streamable_http_app(streamable_http_path=path, host=host)


# --- the service behind the server: artifacts, Redis, the outer loop ----------------------------


@dataclass(slots=True)
class ToolService:
    """Everything a running server needs: the registry it serves and the deps its tools get.
    ``loop`` is the outer loop whose registry and Redis client the service shares."""

    registry: ToolRegistry
    deps: ToolDeps
    loop: "OuterLoop"
    read_only: frozenset[str] = field(default_factory=frozenset)


@asynccontextmanager
async def open_service(
    artifacts: Any,
    *,
    redis: "RedisTarget",
    keys: "type[Keys] | None" = None,
    ranker: Any = None,
    tools: Iterable[ToolSpec] = (),
    agents: Iterable[Any] = (),
    funnel_config: Any = None,
    budgets: dict[str, Any] | None = None,
) -> AsyncIterator[ToolService]:
    """Start an outer loop on ``artifacts`` and ``redis`` and expose its tools (built-ins and
    ``tools``) plus the user tools. Must be entered on the event loop that will serve.
    ``funnel_config`` (a ``FunnelConfig``) is ``recommend``'s funnel, as ``outerloop serve``'s is
    the API's; the default is the API's default (the model's context as history). ``budgets``:
    per-agent budget overrides, as ``OuterLoop(budgets=...)``."""
    from outerloop.agents.loop import OuterLoop
    from outerloop.conversation import ConversationService, converse_tool
    from outerloop.inner_loop.serving.funnel import Funnel, FunnelConfig
    from outerloop.contracts.keys import Keys as DefaultKeys
    from outerloop.tools.builtin import builtin_tools
    from outerloop.tools.mcp.user_tools import READ_ONLY_TOOLS, UserToolsContext, user_tools

    keys = keys or DefaultKeys
    loop = OuterLoop(artifacts, redis=redis, keys=keys, agents=agents, tools=tools, budgets=budgets)
    await loop.start()  # the embedded redis-server (if any) starts here, once
    try:
        assert loop.deps is not None
        max_len = int(getattr(getattr(getattr(artifacts, "model", None), "cfg", None), "max_len", 200))
        funnel = Funnel(artifacts, ranker, funnel_config or FunnelConfig(max_history=max_len))
        _warm_up(funnel)
        registry = loop.tools.copy()
        for spec in user_tools(UserToolsContext(funnel=funnel, keys=keys, evidence=loop.tools, loop=loop)):
            registry.add(spec)
        registry.add(converse_tool(ConversationService(artifacts), keys=keys, max_history=max_len))
        builtin_read_only = {s.name for s in builtin_tools()}  # SDK tools may write: no hint for them
        yield ToolService(registry=registry, deps=loop.deps.tool_deps, loop=loop,
                          read_only=frozenset(READ_ONLY_TOOLS | builtin_read_only | {"converse"}))
    finally:
        await loop.aclose()


def _warm_up(funnel: Any) -> None:
    """One recommendation for a made-up history, so the first real call does not pay for torch's
    first inference (tools have timeouts of tens of milliseconds)."""
    import numpy as np

    from outerloop.data.schema import ACTION_ID
    from outerloop.inner_loop.serving.user_state import UserState

    one = np.ones(1, dtype=np.int64)
    funnel.recommend(UserState(user_id="_warm_up", items=one, actions=one * ACTION_ID["play"], ts=one), 1)
