"""``McpToolClient`` keeps ``ToolRegistry.call``'s shape over MCP (validated input, budget,
shared cache, timeouts, typed output), and an outer-loop cycle runs with its tool calls over MCP."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import BaseModel

from outerloop.agents.loop import OuterLoop
from outerloop.budgets import Budget, RunContext, ToolCallBudgetExceeded
from outerloop.contracts.triggers import Trigger
from outerloop.errors import RunFailed, UsageError
from outerloop.tools.contracts import ToolDeps, ToolTimeout, tool
from outerloop.tools.mcp.client import McpToolClient
from outerloop.tools.mcp.server import build_server
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_keys,
    redis_target,
)
from tests.tools.mcp.test_mcp_support import (  # noqa: F401  (fixtures)
    artifacts,
    echo,
    episodes_of,
    seed_user,
    tiny_dir,
    trained_artifacts,
)


def run_context(latency_ms: float, max_tool_calls: int | None = None) -> RunContext:
    return RunContext(run_id="r-test", agent="tester", budget=Budget(latency_ms, max_tool_calls),
                      started_at=time.monotonic())


def loop_for(artifacts: Any, redis_target: Any, redis_keys: Any) -> OuterLoop:
    # a roomy budget for the tool agent: this test is about the transport, not about speed on
    # a loaded CI machine (the budgets' own tests cover kills)
    return OuterLoop(artifacts, redis=redis_target, keys=redis_keys, tools=[echo],
                     budgets={"tools": Budget(latency_ms=10_000, max_tool_calls=12)})


async def test_client_has_the_registry_shape(artifacts: Any, redis_target: Any, redis_keys: Any) -> None:
    async with loop_for(artifacts, redis_target, redis_keys) as loop:
        registry, deps = loop.tools, loop.deps.tool_deps  # type: ignore[union-attr]
        async with McpToolClient(build_server(registry, deps), contracts=registry) as tools:
            assert set(tools.names()) == set(registry.names()) and "echo" in tools
            vec = artifacts.item_vectors[5].tolist()
            for name, args in (("item_metadata", {"item_ids": [1, 2, 3]}), ("vector_search", {"vector": vec, "k": 7}),
                               ("echo", {"text": "same"})):
                local, remote = await registry.call(name, args, deps), await tools.call(name, args, deps)
                assert type(remote) is type(local) and remote == local, name

            sent = tools.calls_sent
            with pytest.raises(UsageError, match="item_ids"):
                await tools.call("item_metadata", {"item_ids": []}, deps)  # refused locally
            with pytest.raises(UsageError, match="no local contract"):
                await tools.call("no_such_tool", {}, deps)
            assert tools.calls_sent == sent

            run = run_context(5_000, max_tool_calls=1)
            await tools.call("echo", {"text": "one"}, deps, budget=run)
            with pytest.raises(ToolCallBudgetExceeded):
                await tools.call("echo", {"text": "two"}, deps, budget=run)
            assert run.tool_calls == 1

            with pytest.raises(ToolTimeout):  # the server's timeout (the tool's 200 ms)
                await tools.call("echo", {"text": "slow", "delay_ms": 1_000}, deps)
            started = time.perf_counter()
            with pytest.raises(ToolTimeout):  # the agent's remaining time cuts the call client-side
                await tools.call("echo", {"text": "slow", "delay_ms": 150}, deps, budget=run_context(60))
            assert time.perf_counter() - started < 0.15
            with pytest.raises(RunFailed, match="internal error"):
                await tools.call("echo", {"text": "x", "fail": True}, deps)

            sent = tools.calls_sent
            first = await tools.call("trending", {"k": 5}, deps)  # shared by everyone: cached
            assert await tools.call("trending", {"k": 5}, deps) == first
            assert tools.calls_sent == sent + 1 and tools.cache.hit_rate("trending") == 0.5


class OtherEchoIn(BaseModel):
    words: list[str]


class OtherEchoOut(BaseModel):
    text: str


@tool(name="echo")
async def other_echo(args: OtherEchoIn, deps: ToolDeps) -> OtherEchoOut:
    """An ``echo`` with another contract (a client on a different version)."""
    return OtherEchoOut(text=" ".join(args.words))


async def test_contract_drift_fails_at_connect(artifacts: Any, redis_target: Any, redis_keys: Any) -> None:
    async with loop_for(artifacts, redis_target, redis_keys) as loop:
        server = build_server(loop.tools, loop.deps.tool_deps)  # type: ignore[union-attr]
        with pytest.raises(UsageError, match="echo"):
            async with McpToolClient(server, contracts=[other_echo]):
                pass


async def test_cycle_with_tool_calls_over_mcp(artifacts: Any, redis_target: Any, redis_keys: Any) -> None:
    """Two loops, as in a deployment with a remote tool server: the server side serves its
    registry; the client side's agents call every tool through ``OuterLoop(tool_caller=...)``."""
    episode = sorted(episodes_of(artifacts.catalog), key=lambda e: (e.series_id, e.season or 0, e.episode or 0))[0]
    async with loop_for(artifacts, redis_target, redis_keys) as server_side:
        served = server_side.deps
        assert served is not None
        await seed_user(served.redis, server_side.keys, "u-mcp", [1, 2, 3, 4, episode.item_id], type_="finish")
        async with McpToolClient(build_server(server_side.tools, served.tool_deps),
                                 contracts=server_side.tools) as tools:
            client_side = OuterLoop(artifacts, redis=redis_target, keys=redis_keys, tools=[echo], tool_caller=tools,
                                    budgets={"tools": Budget(latency_ms=10_000, max_tool_calls=12)})
            async with client_side as loop:
                assert loop.deps is not None and loop.deps.tools is tools
                result = await loop.run_cycle("u-mcp", [Trigger.manual("tools")])
                run = result.record("tools")
                assert run is not None and run.outcome == "ok", run
                assert run.tool_calls >= tools.calls_sent > 0  # every call went through the client (some cached)
                assert set(result.rows_committed) >= {"top_picks"}
                stored = await loop.rows("u-mcp")
                assert stored["top_picks"].run_id == run.run_id and stored["top_picks"].items
