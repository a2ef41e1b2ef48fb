"""Shared helpers for the MCP tests (no tests here).

``trained_artifacts`` is a tiny real model (and ranker) trained once per session with
``outerloop train --dataset synthetic``, so the server under test loads real artifacts through
the same path ``outerloop mcp`` uses. ``seed_user`` applies events the way the API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from outerloop.contracts.events import Event
from outerloop.tools.contracts import ToolDeps, tool
from tests.api.test_api_fixtures import tiny_dir  # noqa: F401  (the session's trained artifacts)

BASE_TS = 1_700_000_000_000
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def trained_artifacts(tiny_dir: Path) -> Path:
    """Tiny real artifacts with a ranker: the serving tests' session fixture (trained once per
    session through ``outerloop train``, shared so a full run trains one model, not two)."""
    return tiny_dir


@pytest.fixture(scope="session")
def artifacts(trained_artifacts: Path) -> Any:
    from outerloop.inner_loop.model.artifacts import Artifacts

    return Artifacts.load(trained_artifacts)


@pytest.fixture(scope="session")
def ranker(trained_artifacts: Path) -> Any:
    from outerloop.inner_loop.model.ranker import Ranker

    return Ranker.load(trained_artifacts)


def episodes_of(catalog: Any) -> list[Any]:
    return [it for it in catalog.items if it.kind == "episode"]


async def seed_user(redis: Any, keys: Any, user_id: str, items: Sequence[int], *, type_: str = "play") -> None:
    """Apply one event per item (1 s apart) to the user's real-time state, as the API does."""
    from outerloop.inner_loop.serving.user_state import UserStore

    events = [Event(event_id=uuid.uuid4().hex, user_id=user_id, item_id=int(i), type=type_, ts=BASE_TS + n * 1000)
              for n, i in enumerate(items)]
    await UserStore(redis, history_cap=200, keys=keys).apply(events)


@contextlib.asynccontextmanager
async def uvicorn_on(app: Any, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:``port`` in this event loop; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


# --- SDK tools the tests add to the server ------------------------------------------------------


class EchoIn(BaseModel):
    text: str
    delay_ms: float = 0.0
    fail: bool = False


class EchoOut(BaseModel):
    text: str


CALLS: dict[str, int] = {"echo": 0}


@tool(name="echo", timeout_ms=200)
async def echo(args: EchoIn, deps: ToolDeps) -> EchoOut:
    """Say the text back, after an optional delay; fail on request (a test tool)."""
    CALLS["echo"] += 1
    await asyncio.sleep(args.delay_ms / 1000)
    if args.fail:
        raise RuntimeError("secret internal detail that must not reach the client")
    return EchoOut(text=args.text)
