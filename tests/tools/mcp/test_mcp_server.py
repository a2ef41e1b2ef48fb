"""The MCP server in memory, through the real ``mcp`` client: the listing is the registry, the
user tools answer from real artifacts and a real Redis, and failures are isError results after
which the server keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client

from outerloop.tools.mcp.server import ERROR_META_KEY, ToolService, build_server, open_service
from outerloop.tools.mcp.user_tools import READ_ONLY_TOOLS
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_keys,
    redis_target,
)
from tests.tools.mcp.test_mcp_support import (  # noqa: F401  (fixtures)
    CALLS,
    artifacts,
    echo,
    episodes_of,
    ranker,
    seed_user,
    tiny_dir,
    trained_artifacts,
)

USER_TOOLS = ["recommend", "search_similar_items", "get_item", "get_user_history", "get_user_memory",
              "explain_recommendation", "refresh_user"]


@pytest.fixture
async def service(artifacts: Any, ranker: Any, redis_target: Any,
                  redis_keys: Any) -> AsyncIterator[ToolService]:
    async with open_service(artifacts, redis=redis_target, keys=redis_keys, ranker=ranker,
                            tools=[echo]) as svc:
        yield svc


def connect(service: ToolService) -> Client:
    """A real MCP client on an in-memory server (entered inside each test: anyio scopes must open
    and close in one task, which an async fixture's teardown does not guarantee)."""
    return Client(build_server(service.registry, service.deps, read_only=service.read_only))


def error_of(result: Any) -> tuple[str | None, str]:
    assert result.is_error, result
    return (result.meta or {}).get(ERROR_META_KEY), result.content[0].text


async def test_listing_is_the_registry(service: ToolService) -> None:
    async with connect(service) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == set(service.registry.names())
    assert set(USER_TOOLS) <= set(listed) and "echo" in listed  # the SDK tool appears by itself
    for spec in service.registry:
        t = listed[spec.name]
        assert t.description == spec.description
        assert t.input_schema == spec.input_schema()
        assert t.output_schema == spec.output_schema()
    assert all(listed[n].annotations.read_only_hint for n in READ_ONLY_TOOLS)
    assert listed["refresh_user"].annotations is None and listed["echo"].annotations is None
    assert "Use" in listed["explain_recommendation"].description  # says when to use it


async def test_user_tools_answer(artifacts: Any, ranker: Any, redis_target: Any, redis_keys: Any) -> None:
    # a generous budget for the tools agent: this test is about the MCP tools answering, and the
    # agent's first run in a process (cold caches) can overrun 150 ms on a loaded 2-core machine
    from outerloop.contracts.budget import Budget

    budgets = {"tools": Budget(latency_ms=5000, max_tool_calls=12, max_llm_tokens=0)}
    async with open_service(artifacts, redis=redis_target, keys=redis_keys, ranker=ranker, tools=[echo],
                            budgets=budgets) as service:
        await seed_user(service.deps.redis, service.loop.keys, "u1", [3, 5, 8, 13, 21], type_="finish")
        async with connect(service) as client:
            await check_user_tools(client, artifacts)


async def check_user_tools(client: Client, artifacts: Any) -> None:
    rec = await client.call_tool("recommend", {"user_id": "u1", "k": 5})
    assert not rec.is_error
    top = rec.structured_content["rows"][0]
    assert top["produced_by"] == "inner_loop.funnel" and len(top["items"]) == 5
    assert not {3, 5, 8, 13, 21} & {it["item_id"] for it in top["items"]}  # seen items are filtered

    hist = (await client.call_tool("get_user_history", {"user_id": "u1", "limit": 3})).structured_content
    assert [e["item_id"] for e in hist["items"]] == [21, 13, 8] and hist["items"][0]["action"] == "finish"
    assert hist["seen_count"] == 5

    item = (await client.call_tool("get_item", {"item_id": 8})).structured_content
    assert item["title"] == artifacts.catalog.get(8).title and item["popularity"] >= 0

    by_id = (await client.call_tool("search_similar_items", {"item_id": 8, "k": 4})).structured_content
    assert len(by_id["items"]) == 4 and 8 not in [it["item_id"] for it in by_id["items"]]
    title = artifacts.catalog.get(8).title
    by_title = (await client.call_tool("search_similar_items", {"title": title.upper(), "k": 4})).structured_content
    assert by_title["query"]["item_id"] == 8 and by_title["items"] == by_id["items"]

    refreshed = await client.call_tool("refresh_user", {"user_id": "u1"})
    assert not refreshed.is_error, refreshed.content
    out = refreshed.structured_content
    tools_run = [r for r in out["runs"] if r["agent"] == "tools"]
    assert tools_run and tools_run[0]["outcome"] == "ok" and tools_run[0]["tool_calls"] > 0
    assert out["rows_committed"], out
    row = out["rows_committed"][0]

    why = (await client.call_tool("explain_recommendation",
                                  {"user_id": "u1", "item_id": row["items"][0]["item_id"]})).structured_content
    placed = [p for p in why["placements"] if p["row_id"] == row["row_id"]]
    assert placed and placed[0]["produced_by"] == "tools" and placed[0]["run_id"] == row["run_id"]
    assert {e["tool"] for e in why["tool_evidence"]} >= {"vector_search", "co_watch"}
    assert row["row_id"] in why["summary"] or row["title"] in why["summary"]

    mem = await client.call_tool("get_user_memory", {"user_id": "u1"})
    assert not mem.is_error and mem.structured_content["user_id"] == "u1"


async def test_memory_and_episode_evidence(service: ToolService, artifacts: Any) -> None:
    eps = sorted(episodes_of(artifacts.catalog), key=lambda e: (e.series_id, e.season or 0, e.episode or 0))
    first, second = eps[0], next(e for e in eps[1:] if e.series_id == eps[0].series_id)
    await seed_user(service.deps.redis, service.loop.keys, "u2", [first.item_id], type_="finish")
    from outerloop.contracts.triggers import Trigger
    from outerloop.contracts.events import Event

    finish = Event(event_id="e-fin", user_id="u2", item_id=first.item_id, type="finish", ts=1_700_000_000_000)
    await service.loop.run_cycle("u2", [Trigger.session_closed([finish])])  # the memory agent writes facts

    async with connect(service) as client:
        mem = (await client.call_tool("get_user_memory",
                                      {"user_id": "u2", "kinds": ["continue_watching"]})).structured_content
        why = (await client.call_tool("explain_recommendation",
                                      {"user_id": "u2", "item_id": second.item_id})).structured_content
    assert mem["version"] >= 1 and mem["facts"] and mem["facts"][0]["series_id"] == first.series_id
    assert any(f["kind"] == "continue_watching" for f in why["facts"])
    nxt = [e for e in why["tool_evidence"] if e["tool"] == "next_episodes"]
    assert nxt and nxt[0]["found"] and nxt[0]["rank"] == 1


async def test_failures_are_tool_errors_and_the_server_keeps_serving(service: ToolService) -> None:
    async with connect(service) as client:
        await check_failures(client)


async def check_failures(client: Client) -> None:
    for name in ["get_user_history", "get_user_memory", "refresh_user"]:  # nothing to say about nobody
        kind, text = error_of(await client.call_tool(name, {"user_id": "nobody"}))
        assert kind == "invalid_input" and "unknown user_id 'nobody'" in text, (name, text)
    # recommend answers a new user as the API does (tests/test_one_answer.py), and explains it
    new = await client.call_tool("recommend", {"user_id": "nobody"})
    assert not new.is_error and new.structured_content["cold_start"]
    assert not (await client.call_tool("explain_recommendation", {"user_id": "nobody", "item_id": 1})).is_error

    kind, text = error_of(await client.call_tool("get_item", {"item_id": 0}))
    assert kind == "invalid_arguments" and "item_id" in text and "errors.pydantic.dev" not in text
    kind, text = error_of(await client.call_tool("get_item", {"item_id": 10**6}))
    assert kind == "invalid_input" and "not in the catalog" in text
    kind, text = error_of(await client.call_tool("search_similar_items", {"item_id": 1, "title": "x"}))
    assert kind == "invalid_arguments" and "exactly one" in text
    kind, text = error_of(await client.call_tool("search_similar_items", {"title": "no such title zzz"}))
    assert kind == "invalid_input"
    kind, _ = error_of(await client.call_tool("recommend", {"user_id": "bad id!"}))
    assert kind == "invalid_arguments"

    kind, text = error_of(await client.call_tool("echo", {"text": "x", "fail": True}))
    assert kind == "internal" and "secret" not in text and "Traceback" not in text
    kind, text = error_of(await client.call_tool("echo", {"text": "x", "delay_ms": 2000}))
    assert kind == "timeout" and "timed out" in text

    ok = await client.call_tool("echo", {"text": "still here"})
    assert not ok.is_error and ok.structured_content == {"text": "still here"}
    stringified = await client.call_tool("item_metadata", {"item_ids": "[1, 2]"})  # JSON-as-text clients
    assert not stringified.is_error and len(stringified.structured_content["items"]) == 2
    assert CALLS["echo"] >= 3
