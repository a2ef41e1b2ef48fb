"""Your agents and tools by reference: the one loader behind ``--agents`` and ``--tools``.

    outerloop daemon --artifacts DIR --agents mypkg.agents:new_this_week,mypkg.agents:wind_down \\
                     --tools mypkg.tools:new_releases
    outerloop mcp    --artifacts DIR --agents mypkg.agents:new_this_week --tools mypkg.tools:new_releases

A reference is ``MODULE:NAME`` (``NAME`` may be dotted, and may name a list or tuple of specs);
a flag takes several separated by commas and may be repeated. The current directory is
importable, as it is for ``python -m``, so a module next to where you run the command is found.
Every problem is a :class:`~outerloop.errors.UserInputError` that names the flag and the
reference (the CLI prints it; no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from outerloop.errors import UserInputError


def split_refs(values: Iterable[str]) -> list[str]:
    """Flag values (repeatable, comma-separated) as one list of references, in order, once each."""
    out: list[str] = []
    for value in values:
        out += [part.strip() for part in value.split(",") if part.strip()]
    return list(dict.fromkeys(out))


def _importable_cwd() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_specs(refs: Iterable[str], what: str, kind: type) -> list[Any]:
    """``MODULE:NAME`` references (comma-separated allowed) -> the ``kind`` specs they name."""
    _importable_cwd()
    out: list[Any] = []
    for ref in split_refs(refs):
        module, _, name = ref.partition(":")
        if not module or not name:
            raise UserInputError(f"--{what} {ref!r}: expected MODULE:NAME")
        try:
            obj: Any = importlib.import_module(module)
        except ImportError as exc:
            raise UserInputError(f"--{what} {ref!r}: cannot import {module!r}: {exc}") from None
        except Exception as exc:  # the module itself failed: say where, not a traceback
            raise UserInputError(f"--{what} {ref!r}: importing {module!r} failed: "
                                 f"{type(exc).__name__}: {exc}") from None
        for part in name.split("."):
            if not hasattr(obj, part):
                raise UserInputError(f"--{what} {ref!r}: {module!r} has no attribute {name!r}")
            obj = getattr(obj, part)
        specs = list(obj) if isinstance(obj, list | tuple) else [obj]
        wrong = [s for s in specs if not isinstance(s, kind)]
        if not specs:
            raise UserInputError(f"--{what} {ref!r}: an empty list; expected {kind.__name__} objects")
        if wrong:
            raise UserInputError(f"--{what} {ref!r}: expected {kind.__name__} objects (decorate with "
                                 f"@{what.rstrip('s')}), got {type(wrong[0]).__name__}")
        out.extend(s for s in specs if all(s is not o for o in out))
    return out


@dataclass(frozen=True, slots=True)
class Plugins:
    """The user's agents and tools, loaded."""

    agents: list[Any] = field(default_factory=list)
    tools: list[Any] = field(default_factory=list)

    @property
    def agent_names(self) -> list[str]:
        return [a.name for a in self.agents]


def load_plugins(agents: Iterable[str] = (), tools: Iterable[str] = ()) -> Plugins:
    """Both flags at once; also checks that two references do not name one agent twice."""
    from outerloop.agents.sdk import AgentSpec
    from outerloop.tools.contracts import ToolSpec

    loaded = Plugins(agents=load_specs(agents, "agents", AgentSpec), tools=load_specs(tools, "tools", ToolSpec))
    for what, specs in (("agents", loaded.agents), ("tools", loaded.tools)):
        names = [s.name for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserInputError(f"--{what}: two specs named {twice[0]!r}")
    return loaded


def add_plugin_flags(parser: argparse.ArgumentParser | Any, *, agents_help: str, tools_help: str) -> None:
    """``--agents`` and ``--tools`` (repeatable, comma-separated ``MODULE:NAME`` references)."""
    parser.add_argument("--agents", action="append", default=[], metavar="MODULE:NAME[,MODULE:NAME...]",
                        help=agents_help)
    parser.add_argument("--tools", action="append", default=[], metavar="MODULE:NAME[,MODULE:NAME...]",
                        help=tools_help)
