"""Tools: typed contracts (pydantic in/out), one registry, the built-in implementations.

Define a tool with :func:`tool`, register it in a :class:`ToolRegistry` (or hand it to
``OuterLoop(tools=[...])``), and every caller (the tool agent, your agents, the MCP server)
sees the same name, description, schemas and timeout. ``default_registry()`` is a new registry
holding the built-in tools (vector search, history embedding, co-watch, item metadata, next
episodes, trending); there is no global registry.
"""

from __future__ import annotations

from typing import Any

from outerloop.tools.contracts import (
    ScoredItem,
    ScoredItems,
    ToolDeps,
    ToolOutputInvalid,
    ToolSpec,
    ToolTimeout,
    tool,
)
from outerloop.tools.registry import ToolCache, ToolRegistry

__all__ = [
    "ScoredItem",
    "ScoredItems",
    "ToolCache",
    "ToolDeps",
    "ToolOutputInvalid",
    "ToolRegistry",
    "ToolSpec",
    "ToolTimeout",
    "builtin_tools",
    "default_registry",
    "tool",
]


def __getattr__(name: str) -> Any:  # the built-ins pull in numpy and the catalog: load on use
    if name in ("builtin_tools", "default_registry"):
        from outerloop.tools import builtin

        return getattr(builtin, name)
    raise AttributeError(f"module 'outerloop.tools' has no attribute {name!r}")
