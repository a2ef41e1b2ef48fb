"""The one loader behind ``--agents`` / ``--tools`` and manual refreshes reaching the named
agents unchanged: a request queued on a real Redis comes back as the agents' ``manual`` trigger
(``PendingTrigger.as_trigger``, what the daemon's runner hands a cycle) with the request's
detail, and the planner runs exactly that agent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from outerloop import AgentContext, Budget, OuterLoop, agent
from outerloop.agents.plugins import load_plugins
from outerloop.errors import UserInputError
from outerloop.contracts.keys import SchedulerKeys
from outerloop.scheduler.refresh import request_refresh
from outerloop.scheduler.triggers import read_triggers
from tests.tools.mcp.test_mcp_support import artifacts, ranker, seed_user, tiny_dir, trained_artifacts  # noqa: F401
from tests.agents.test_outer_loop_support import TinyArtifacts

SEEN: list[dict] = []


@agent(name="asked", budget=Budget(latency_ms=200), rows=["asked"], triggers=("manual",))
async def asked(ctx: AgentContext) -> None:
    """Records the triggers it was given."""
    SEEN.append({"kinds": [t.kind for t in ctx.triggers], "manual": [(t.agents, t.detail) for t in ctx.triggers
                                                                     if t.kind == "manual"]})
    ctx.emit_row("asked", title="Asked", reason="manual", items=[(1, 1.0)])


@agent(name="bystander", budget=Budget(latency_ms=200), rows=["bystander"], triggers=("manual",))
async def bystander(ctx: AgentContext) -> None:
    """Must not run when another agent is asked for."""
    SEEN.append({"bystander": True})


PAIR = [asked, bystander]


def test_loader_takes_comma_separated_and_repeated_references_and_names_bad_ones():
    loaded = load_plugins(["tests.agents.test_plugins:asked,tests.agents.test_plugins:bystander", "tests.agents.test_plugins:PAIR"],
                          ["tests.tools.mcp.test_mcp_support:echo"])
    assert loaded.agent_names == ["asked", "bystander"] and [t.name for t in loaded.tools] == ["echo"]
    for ref, problem in (("tests.agents.test_plugins", "MODULE:NAME"), ("no_such_mod:x", "cannot import"),
                         ("tests.agents.test_plugins:nope", "no attribute"), ("tests.agents.test_plugins:SEEN", "expected AgentSpec"),
                         ("tests.agents.test_plugins:test_daemon_cli_reports_a_bad_reference_without_a_traceback", "expected AgentSpec")):
        with pytest.raises(UserInputError, match=problem) as err:
            load_plugins([ref])
        assert f"--agents {ref!r}" in str(err.value)


def test_daemon_cli_reports_a_bad_reference_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "outerloop.cli", "daemon", "--agents", "tests.agents.test_plugins:nope"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--agents 'tests.agents.test_plugins:nope'" in out.stderr and "Traceback" not in out.stderr


async def test_a_manual_refresh_reaches_the_named_agent_with_its_detail(redis_target, redis_keys, redis_client):
    keys = SchedulerKeys(base=redis_keys)
    detail = {"work_ms": 900, "why": "asked by support", "ratio": 0.5}
    await request_refresh(redis_client, keys, "u-manual", ["asked"], detail)
    queued = await read_triggers(redis_client, keys, "u-manual")
    assert [t.name for t in queued] == ["manual:asked"]
    trigger = queued[0].as_trigger()
    assert trigger.kind == "manual" and trigger.agents == ["asked"] and trigger.detail == detail
    SEEN.clear()
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=PAIR, builtins=False) as loop:
        res = await loop.run_cycle("u-manual", [trigger])
    assert [s.agent for s in res.plan.steps] == ["asked"]
    assert SEEN == [{"kinds": ["manual"], "manual": [(["asked"], detail)]}]
    assert res.rows_committed["asked"].produced_by == "asked"


async def test_mcp_refresh_user_reaches_the_named_agent_with_its_detail(artifacts, ranker, redis_target,  # noqa: F811
                                                                       redis_keys, redis_client):
    from mcp import Client

    from outerloop.tools.mcp.server import build_server, open_service

    await seed_user(redis_client, redis_keys, "u-mcp", [3, 4, 5])
    SEEN.clear()
    async with open_service(artifacts, redis=redis_target, keys=redis_keys, ranker=ranker, agents=PAIR) as svc:
        async with Client(build_server(svc.registry, svc.deps, read_only=svc.read_only)) as client:
            out = await client.call_tool("refresh_user", {"user_id": "u-mcp", "agents": ["asked"],
                                                          "detail": {"why": "support", "n": 2}})
    assert not out.is_error, out.content
    assert [r["agent"] for r in out.structured_content["runs"] if r["agent"] in ("asked", "bystander")] == ["asked"]
    assert SEEN == [{"kinds": ["sweep", "manual"], "manual": [(["asked"], {"why": "support", "n": 2})]}]
