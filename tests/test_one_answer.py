"""One answer, whoever asks: ``GET /v1/users/{id}/recommendations`` and the MCP tool
``recommend`` (through a real MCP client) on the same Redis give the same document, field for
field, in every case below: a user the deployment has never seen (cold start), a user with
history, a user with rows an outer-loop cycle committed, the row filter, the bounds of ``k``, and
Redis unreachable (degraded). Before, the tool refused a new user ("unknown user_id ... no
events, memory or rows") where the API served the cold-start rows."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from mcp import Client

from outerloop.api.app import create_app
from outerloop.api.context import ServeOptions
from outerloop.config import Settings
from outerloop.contracts.keys import Keys
from outerloop.inner_loop.serving.funnel import FunnelConfig
from outerloop.ports import free_port
from outerloop.storage.clients import RedisTarget
from outerloop.tools.mcp.server import build_server, open_service
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from outerloop.contracts.budget import Budget
from tests.api.test_api_fixtures import now_ms
from tests.tools.mcp.test_mcp_support import artifacts, ranker, tiny_dir, trained_artifacts  # noqa: F401

PER_REQUEST = {"request_id", "timings_ms", "encoder_cache"}  # what belongs to one HTTP request


def funnel_config(artifacts: Any) -> FunnelConfig:
    # one config for both, with a budget no busy test machine exceeds: the ranker's budget
    # fallback is a real difference between two processes, not what is compared here
    return FunnelConfig(max_history=int(artifacts.model.cfg.max_len), request_budget_ms=60_000.0)


@asynccontextmanager
async def both(artifacts: Any, ranker: Any, target: RedisTarget, keys: Any) -> AsyncIterator[tuple[Any, Client]]:
    """The API (an httpx client on its ASGI app, lifespan run) and an MCP client of the tools."""
    opts = ServeOptions(api_key=None, funnel=funnel_config(artifacts), redis_read_timeout_ms=10_000.0)
    app = create_app(Settings(), artifacts, ranker=ranker, options=opts, redis_target=target, keys=keys)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
            # generous agent budgets for the same reason: a refresh's rows are compared, not its deadline
            async with open_service(artifacts, redis=target, keys=keys, ranker=ranker,
                                    funnel_config=funnel_config(artifacts),
                                    budgets={a: Budget(latency_ms=10_000, max_tool_calls=50, max_llm_tokens=0)
                                             for a in ("memory", "tools", "evaluator")}) as svc:
                async with Client(build_server(svc.registry, svc.deps, read_only=svc.read_only)) as mcp:
                    yield api, mcp


async def answers(api: httpx.AsyncClient, mcp: Client, user: str, **args: Any) -> tuple[dict, dict]:
    params: dict[str, Any] = {}
    if "k" in args:
        params["k"] = args["k"]
    if "rows" in args:
        params["row"] = args["rows"]
    r = await api.get(f"/v1/users/{user}/recommendations", params=params)
    assert r.status_code == 200, r.text
    from_api = {k: v for k, v in r.json().items() if k not in PER_REQUEST}
    res = await mcp.call_tool("recommend", {"user_id": user, **args})
    assert not res.is_error, res.content
    return from_api, res.structured_content


async def test_the_api_and_the_mcp_tool_give_one_answer(artifacts, ranker, redis_target, redis_keys,  # noqa: F811
                                                        ) -> None:
    async with both(artifacts, ranker, redis_target, redis_keys) as (api, mcp):
        # a user the deployment has never seen: the cold-start rows, flagged, from both
        a, m = await answers(api, mcp, "new-user")
        assert a == m
        assert m["cold_start"] and not m["degraded"] and m["history_version"] == 0
        assert [r["row_id"] for r in m["rows"]] == ["popular", "explore"] and len(m["rows"][0]["items"]) == 20
        why = await mcp.call_tool("explain_recommendation",
                                  {"user_id": "new-user", "item_id": m["rows"][0]["items"][0]["item_id"]})
        assert not why.is_error, why.content  # the rows it was just given can be explained
        assert [(p["row_id"], p["rank"], p["source"]) for p in why.structured_content["placements"]][:1] == [
            ("popular", 1, "cold_start")]

        # the same user with history, posted through the API: personalised, from both
        events = [{"user_id": "new-user", "item_id": i, "type": "finish", "ts": now_ms() - 10_000 + n}
                  for n, i in enumerate([3, 5, 8, 13])]
        posted = await api.post("/v1/events", content=json.dumps(events), headers={"Content-Type": "application/json"})
        assert posted.status_code == 200, posted.text
        a, m = await answers(api, mcp, "new-user")
        assert a == m
        assert not m["cold_start"] and m["history_version"] == 1 and m["rows"][0]["row_id"] == "top-picks"
        assert not {3, 5, 8, 13} & {it["item_id"] for r in m["rows"] for it in r["items"]}

        # rows an outer-loop cycle committed are served by both
        refreshed = await mcp.call_tool("refresh_user", {"user_id": "new-user"})
        assert not refreshed.is_error and refreshed.structured_content["rows_committed"], refreshed.content
        a, m = await answers(api, mcp, "new-user")
        assert a == m and any(r["source"] == "agent" for r in m["rows"])

        # the arguments mean the same: k at its bounds, the row filter, an unknown row
        for args in ({"k": 1}, {"k": 100}, {"rows": ["top-picks"]}, {"rows": ["no-such-row"]},
                     {"k": 3, "rows": ["popular", "explore"]}):
            a, m = await answers(api, mcp, "new-user", **args)
            assert a == m, args
        assert (await answers(api, mcp, "new-user", rows=["no-such-row"]))[1]["rows"] == []
        a, m = await answers(api, mcp, "another-new-user", k=3, rows=["explore"])
        assert a == m and m["cold_start"] and [len(r["items"]) for r in m["rows"]] == [3]

        # arguments both refuse
        bad_api = await api.get("/v1/users/bad id!/recommendations")
        bad_mcp = await mcp.call_tool("recommend", {"user_id": "bad id!"})
        assert bad_api.status_code == 422 and bad_mcp.is_error
        too_many_api = await api.get("/v1/users/u/recommendations", params={"k": 101})
        too_many_mcp = await mcp.call_tool("recommend", {"user_id": "u", "k": 101})
        assert too_many_api.status_code == 422 and too_many_mcp.is_error


async def test_both_answer_popular_items_flagged_degraded_when_redis_is_down(artifacts, ranker,  # noqa: F811
                                                                             ) -> None:
    dead = RedisTarget(url=f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    async with both(artifacts, ranker, dead, Keys) as (api, mcp):
        for user in ("someone", "someone-else"):
            a, m = await answers(api, mcp, user, k=5)
            assert a == m
            assert m["degraded"] and not m["cold_start"] and m["fallbacks"] == ["redis_unavailable"]
            assert [r["row_id"] for r in m["rows"]] == ["popular"] and len(m["rows"][0]["items"]) == 5

