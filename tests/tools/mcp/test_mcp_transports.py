"""The server over its real transports: ``outerloop mcp`` as a stdio subprocess, and streamable
HTTP on a free loopback port with the bearer token (works), without it or with a wrong one
(401 before any tool runs), and no HTTP server at all without a token."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters

from outerloop.errors import RunFailed, UserInputError
from outerloop.storage.clients import RedisTarget
from outerloop.tools.mcp.cli import load_specs, read_token
from outerloop.tools.mcp.client import McpToolClient
from outerloop.tools.mcp.server import build_server, http_app, open_service
from outerloop.ports import free_port
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    SERVER_URL_ENV,
    delete_namespace,
    namespaced_keys,
    pytest_generate_tests,
    redis_keys,
    redis_target,
    url_for_children,
)
from tests.tools.mcp.test_mcp_support import (  # noqa: F401  (fixtures)
    CALLS,
    TOKEN,
    artifacts,
    echo,
    seed_user,
    tiny_dir,
    trained_artifacts,
    uvicorn_on,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def one_redis(tmp_path: Path) -> Iterator[tuple[RedisTarget, Any]]:
    """One backend only (the machine's server when configured, else an embedded one): starting
    ``outerloop mcp`` is seconds of imports, so this test runs once, not once per backend."""
    url = os.environ.get(SERVER_URL_ENV)
    target = RedisTarget(url=url) if url else RedisTarget(embedded_dir=tmp_path / "redis")
    prefix = f"oltest-{uuid.uuid4().hex[:12]}"
    yield target, namespaced_keys(prefix)
    delete_namespace(target, prefix)


async def test_stdio_subprocess(trained_artifacts: Path, one_redis: tuple[RedisTarget, Any]) -> None:
    import redis.asyncio as aioredis

    target, keys = one_redis
    redis = aioredis.Redis.from_url(url_for_children(target))
    try:
        await seed_user(redis, keys, "u-stdio", [2, 4, 6], type_="finish")
    finally:
        await redis.aclose()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "outerloop.cli", "mcp", "--artifacts", str(trained_artifacts), "--key-prefix", keys.prefix,
              "--tools", "tests.tools.mcp.test_mcp_support:echo"],
        env={"OUTERLOOP_REDIS_URL": url_for_children(target), "PYTHONPATH": str(REPO)}, cwd=str(REPO),
    )
    async with Client(params, read_timeout_seconds=60) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"recommend", "explain_recommendation", "refresh_user", "vector_search", "echo"} <= names
        echoed = await client.call_tool("echo", {"text": "from a --tools spec"})
        assert echoed.structured_content == {"text": "from a --tools spec"}
        rec = await client.call_tool("recommend", {"user_id": "u-stdio", "k": 3})
        assert not rec.is_error, rec.content
        assert rec.structured_content["rows"][0]["items"] and rec.structured_content["history_version"] == 1
        missing = await client.call_tool("get_user_history", {"user_id": "u-nobody"})
        assert missing.is_error and "unknown user_id" in missing.content[0].text
        hist = await client.call_tool("get_user_history", {"user_id": "u-stdio"})  # still serving
        assert [e["item_id"] for e in hist.structured_content["items"]] == [6, 4, 2]


async def test_http_needs_the_token(artifacts: Any, redis_target: Any, redis_keys: Any) -> None:
    async with open_service(artifacts, redis=redis_target, keys=redis_keys, tools=[echo]) as svc:
        port = free_port()
        server = build_server(svc.registry, svc.deps, read_only=svc.read_only, token=TOKEN,
                              base_url=f"http://127.0.0.1:{port}")
        async with uvicorn_on(http_app(server), port) as base:
            url = f"{base}/mcp"
            before = CALLS["echo"]
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "hi"}}}
            headers = {"Accept": "application/json, text/event-stream"}
            async with httpx.AsyncClient() as http:
                for auth in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}):
                    r = await http.post(url, json=call, headers={**headers, **auth})
                    assert r.status_code == 401, (auth, r.status_code)
                    assert r.headers["www-authenticate"].startswith("Bearer")
            assert CALLS["echo"] == before  # refused before any tool ran

            for token in (None, "wrong-token-wrong-token"):
                with pytest.raises(RunFailed, match="401"):
                    async with McpToolClient.http(url, token=token or ""):
                        pass

            async with McpToolClient.http(url, token=TOKEN, contracts=svc.registry) as tools:
                out = await tools.call("echo", {"text": "over http"})
                assert out.model_dump() == {"text": "over http"}
                got = await tools.call("get_item", {"item_id": 3})
                assert got.title == artifacts.catalog.get(3).title  # type: ignore[attr-defined]
            assert CALLS["echo"] == before + 1


def test_http_refuses_to_start_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from outerloop.cli import main

    monkeypatch.chdir(tmp_path)  # no .env file to read a token from
    monkeypatch.delenv("OUTERLOOP_MCP_TOKEN", raising=False)
    http = ["mcp", "--artifacts", str(tmp_path), "--transport", "http"]
    for env_token, extra in ((None, []), ("short", []), (None, ["--token-file", str(tmp_path / "missing")])):
        if env_token is not None:
            monkeypatch.setenv("OUTERLOOP_MCP_TOKEN", env_token)
        assert main(http + extra) == 2
        err = capsys.readouterr().err
        assert "token" in err and "Traceback" not in err
        monkeypatch.delenv("OUTERLOOP_MCP_TOKEN", raising=False)
    with pytest.raises(UserInputError, match="bearer token"):
        from mcp.server import MCPServer

        http_app(MCPServer("no-token"))


def test_read_token(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(f"{TOKEN}\n")
    assert read_token(f, "from-env") == TOKEN  # the file wins, whitespace stripped
    assert read_token(None, f" {TOKEN} ") == TOKEN
    f.write_text("\n")
    for path, env in ((f, None), (None, None), (None, "  ")):
        with pytest.raises(UserInputError):
            read_token(path, env)


def test_cli_row_and_spec_references() -> None:
    from outerloop.cli import COMMANDS
    from outerloop.tools.contracts import ToolSpec

    assert COMMANDS["mcp"][1] == "outerloop.tools.mcp.cli"
    assert load_specs(["tests.tools.mcp.test_mcp_support:echo"], "tools", ToolSpec) == [echo]
    for ref, problem in (("no_colon", "MODULE:NAME"), ("no.such.module:x", "cannot import"),
                         ("tests.tools.mcp.test_mcp_support:missing", "no attribute"),
                         ("tests.tools.mcp.test_mcp_support:TOKEN", "expected ToolSpec")):
        with pytest.raises(UserInputError, match=problem):
            load_specs([ref], "tools", ToolSpec)
