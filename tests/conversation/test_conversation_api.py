"""The conversation route over HTTP and the ``converse`` MCP tool.

The route is tested twice: alone (a FastAPI app holding only the router, a dict of histories)
and wired into the real API (``create_app`` on the tiny artifacts and a real Redis) exactly as
the API owner is asked to wire it, so the history posted as events is the one the route reads.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from outerloop.api.app import create_app
from outerloop.api.context import ServeOptions
from outerloop.config import Settings
from outerloop.conversation import ConversationService, UserHistory, conversation_router, converse_tool
from outerloop.inner_loop.serving.funnel import FunnelConfig
from outerloop.tools.contracts import ToolDeps
from outerloop.tools.registry import ToolRegistry
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.api.test_api_fixtures import event, now_ms, tiny_artifacts, tiny_data, tiny_dir  # noqa: F401

ISSUE = "something funny but not stupid, under 90 minutes, no romance"


@pytest.fixture(scope="module")
def service(tiny_artifacts) -> ConversationService:  # noqa: F811
    return ConversationService(tiny_artifacts)


@pytest.fixture
def bare(service: ConversationService, tiny_data) -> TestClient:  # noqa: F811
    histories = {"fan": UserHistory(items=[int(i) for i in tiny_data.users[0].items[:20]])}

    async def read(user_id: str) -> UserHistory | None:
        if user_id == "down":
            raise RedisConnectionError("redis is down")
        return histories.get(user_id)

    app = FastAPI()
    app.include_router(conversation_router(service, read))
    return TestClient(app, raise_server_exceptions=False)


def test_route_answers_and_refines(bare: TestClient) -> None:
    r = bare.post("/v1/users/fan/conversation", json={"message": ISSUE, "k": 5})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["parser"] == "rules" and not doc["cold_start"] and not doc["degraded"]
    assert doc["applied"]["max_runtime_min"] == 90 and doc["applied"]["exclude_genres"] == ["Romance"]
    assert doc["items"] and all(it["runtime_min"] <= 90 and "Comedy" in it["genres"] for it in doc["items"])
    follow = bare.post("/v1/users/fan/conversation", json={"message": "shorter", "turns": doc["turns"], "k": 5})
    assert follow.status_code == 200 and follow.json()["applied"]["max_runtime_min"] == 75
    assert len(follow.json()["turns"]) == 4


def test_unknown_user_is_a_cold_start_and_storage_failure_is_degraded(bare: TestClient) -> None:
    cold = bare.post("/v1/users/nobody/conversation", json={"message": "a comedy"}).json()
    assert cold["cold_start"] and cold["items"] and not cold["degraded"]
    down = bare.post("/v1/users/down/conversation", json={"message": "a comedy"})
    assert down.status_code == 200 and down.json()["degraded"] and down.json()["items"]


@pytest.mark.parametrize(("body", "field"), [
    ({"message": ""}, "message"),
    ({"message": "a comedy", "k": 0}, "k"),
    ({"message": "a comedy", "turns": [{"role": "user", "text": 5}]}, "turns"),
    ({"message": "a comedy", "turns": [{"role": "assistant", "item_ids": [99999]}]}, "turns[0].item_ids"),
    ({"message": "a comedy", "colour": "blue"}, "colour"),
])
def test_bad_input_is_a_422_naming_the_field(bare: TestClient, body: dict[str, Any], field: str) -> None:
    r = bare.post("/v1/users/fan/conversation", json=body)
    assert r.status_code == 422
    assert field in json.dumps(r.json()["detail"]) and "Traceback" not in r.text


def test_bad_user_id_and_malformed_json(bare: TestClient) -> None:
    assert bare.post("/v1/users/bad%20id/conversation", json={"message": "x"}).status_code == 422
    r = bare.post("/v1/users/fan/conversation", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "Traceback" not in r.text


def test_wired_into_the_real_api(tiny_artifacts, tiny_data, redis_target, redis_keys) -> None:  # noqa: F811
    """The real API serves the route; the history comes from events posted to it."""
    options = ServeOptions(funnel=FunnelConfig(max_history=50))
    app = create_app(Settings(), tiny_artifacts, options=options, redis_target=redis_target, keys=redis_keys)
    history = [int(i) for i in tiny_data.users[1].items[:10]]
    with TestClient(app, raise_server_exceptions=False) as client:
        posted = client.post("/v1/events", json=[event("talker", i, "finish", ts=now_ms() - 8 * 86_400_000 + n)
                                                 for n, i in enumerate(history)])
        assert posted.status_code == 200, posted.text
        doc = client.post("/v1/users/talker/conversation", json={"message": "a film under two hours"}).json()
        assert not doc["cold_start"] and doc["items"]
        assert not {it["item_id"] for it in doc["items"]} & set(history)  # seen items never come back
        assert any("which you finished last week" in it["explanation"] for it in doc["items"])
        assert "/v1/users/{user_id}/conversation" in client.get("/openapi.json").json()["paths"]


async def test_mcp_tool_converse(tiny_artifacts, tiny_data, redis_target, redis_keys) -> None:  # noqa: F811
    from outerloop.inner_loop.serving.user_state import seed_history

    sync = redis_target.sync_client()
    try:
        seed_history(sync, "mcp-user", [int(i) for i in tiny_data.users[2].items[:10]], history_cap=50, keys=redis_keys)
    finally:
        sync.close()
    client = redis_target.async_client()
    try:
        registry = ToolRegistry([converse_tool(keys=redis_keys)])
        spec = registry.get("converse")
        assert "funny but not stupid" in spec.description and spec.input_schema()["properties"]["message"]
        deps = ToolDeps(redis=client, artifacts=tiny_artifacts)
        out = await registry.call("converse", {"user_id": "mcp-user", "message": ISSUE, "k": 5}, deps)
        assert not out.cold_start and out.items and out.applied.max_runtime_min == 90
        again = await registry.call("converse", {"user_id": "mcp-user", "message": "without horror",
                                                 "turns": [t.model_dump() for t in out.turns]}, deps)
        assert again.applied.exclude_genres == ["Horror", "Romance"]
    finally:
        await client.aclose()


async def test_mcp_client_lists_and_calls_converse(tiny_artifacts, redis_target, redis_keys) -> None:  # noqa: F811
    """Through a real MCP client on the in-memory server the MCP module builds from a registry."""
    from mcp import Client

    from outerloop.tools.mcp.server import ERROR_META_KEY, build_server

    redis = redis_target.async_client()
    try:
        server = build_server(ToolRegistry([converse_tool(keys=redis_keys)]),
                              ToolDeps(redis=redis, artifacts=tiny_artifacts), read_only=["converse"])
        async with Client(server) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert listed["converse"].annotations.read_only_hint
            ok = await client.call_tool("converse", {"user_id": "stranger", "message": ISSUE, "k": 3})
            assert not ok.is_error, ok.content
            doc = ok.structured_content
            assert doc["cold_start"] and doc["applied"]["max_runtime_min"] == 90 and len(doc["items"]) <= 3
            bad = await client.call_tool("converse", {"user_id": "stranger", "message": ""})
            assert bad.is_error and (bad.meta or {}).get(ERROR_META_KEY) == "invalid_arguments"
            assert "message" in bad.content[0].text
    finally:
        await redis.aclose()
