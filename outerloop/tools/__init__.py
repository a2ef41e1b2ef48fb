"""Tools: typed contracts (pydantic in/out), one registry, the built-in implementations.

Define a tool with :func:`tool`, register it in a :class:`ToolRegistry` (or hand it to
``OuterLoop(tools=[...])``), and every caller (the tool agent, your agents, the MCP server)
sees the same name, description, schemas and timeout.
"""

from outerloop.tools.contracts import ScoredItem, ScoredItems, ToolDeps, ToolOutputInvalid, ToolSpec, ToolTimeout, tool
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
    "tool",
]
