"""The SDK end to end: the example's custom agent and tool ("new this week") in the graph with
the built-ins, on artifacts trained here (``outerloop train --dataset synthetic``: a real
transformer and its real FAISS index) and a real Redis. Plus the public surface."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import outerloop
from outerloop import AgentContext, Budget, OuterLoop, Trigger, agent
from outerloop.agents.sdk import AgentSpec
from tests.redis_fixtures import (  # noqa: F401  (fixtures and the parametrising hook)
    pytest_generate_tests,
    redis_client,
    redis_keys,
    redis_target,
)
from tests.agents.test_outer_loop_support import TinyArtifacts

REPO = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000


def load_example():
    spec = importlib.util.spec_from_file_location("example_new_this_week", REPO / "examples" / "new_this_week.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # agents pickle by module name; keep it findable
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Small synthetic-world artifacts, trained once for this module (a few seconds)."""
    from outerloop.cli import main as cli
    from outerloop.inner_loop.model.artifacts import Artifacts

    out = tmp_path_factory.mktemp("artifacts")
    rc = cli(["train", "--dataset", "synthetic", "--dataset-opt", "n_users=120", "--dataset-opt", "n_films=100",
              "--dataset-opt", "n_series=4", "--dataset-opt", "days=4", "--epochs", "1", "--d-model", "16",
              "--threads", "1", "--quiet", "--out", str(out)])
    assert rc == 0
    return Artifacts.load(out)


async def test_example_agent_and_tool_run_end_to_end(trained, redis_target, redis_keys):
    ex = load_example()
    report = await ex.demo(trained, redis=redis_target, keys=redis_keys, user_id="u-sdk")
    runs = {r["agent"]: r for r in report["runs"]}
    assert runs["new_this_week"]["outcome"] == "ok" and runs["new_this_week"]["tool_calls"] <= 2
    assert all(r["outcome"] == "ok" for r in report["runs"]), report["runs"]
    assert any(p.startswith("new_this_week['new_this_week']") for p in report["plan"])

    # the row holds exactly the week's releases the user has not seen, in the order of their taste
    now, history = report["now_ms"], report["history"]
    expected = [it.item_id for it in trained.catalog.items
                if it.release_ts is not None and now - 7 * DAY_MS <= it.release_ts <= now and it.item_id not in history]
    assert expected, "the demo's clock should leave something new this week"
    row = report["rows"]["new_this_week"]
    got = [i for i, _ in row["items"]]
    assert len(got) == min(30, len(expected)) and set(got) <= set(expected)
    user_vec = trained.encode([history])[0]
    taste = trained.item_vectors[got] @ user_vec
    assert np.all(np.diff(taste) <= 1e-5)  # best first by the model's own scores
    # the built-ins ran too, against the real index
    assert "top_picks" in report["rows"] and len(report["rows"]["top_picks"]["items"]) > 0


async def test_example_tool_is_described_and_shared(trained, redis_target, redis_keys):
    ex = load_example()
    loop = ex.build_loop(trained, redis=redis_target, keys=redis_keys)
    d = next(t for t in loop.tools.describe() if t["name"] == "new_releases")
    assert d["description"].startswith("Titles released between")
    assert set(d["input_schema"]["properties"]) == {"since_ms", "until_ms", "limit"}
    assert "new_this_week" in loop.agents and loop.agents.get("new_this_week").rows == ("new_this_week",)


async def test_class_based_agent_and_budget_override(redis_target, redis_keys):
    class Greeter:
        """Says hello in a row."""

        name = "greeter"

        async def run(self, ctx: AgentContext) -> str:
            ctx.emit_row("greeter", title="Hello", reason="class-based agent", items=[(1, 1.0)])
            return "hi"

    spec = agent(budget=Budget(latency_ms=100))(Greeter())
    assert isinstance(spec, AgentSpec) and spec.name == "greeter" and spec.description == "Says hello in a row."
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=[spec], builtins=False,
                         budgets={"greeter": Budget(latency_ms=40)}) as loop:
        res = await loop.run_cycle("u1", [Trigger.manual("greeter")])
    rec = res.record("greeter")
    assert rec.outcome == "ok" and rec.budget_ms == 40 and rec.value.value == "hi"
    assert res.rows_committed["greeter"].produced_by == "greeter"


def test_import_outerloop_is_light_and_exports_the_sdk():
    code = ("import sys, outerloop; assert 'langgraph' not in sys.modules and 'torch' not in sys.modules; "
            "print(sorted(outerloop.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "OuterLoop" in out.stdout and "agent" in out.stdout and "tool" in out.stdout
    for name in outerloop.__all__:
        assert getattr(outerloop, name) is not None
    with pytest.raises(AttributeError):
        outerloop.not_a_name  # noqa: B018


def test_an_agent_subscribes_to_trigger_kinds_or_the_event_group():
    from outerloop.errors import UsageError

    async def run(ctx: AgentContext) -> None:
        """Nothing."""

    spec = agent(name="subscriber", budget=Budget(latency_ms=10), triggers=("event", "title_finished", "sweep"))(run)
    assert spec.triggers == ("event", "title_finished", "sweep")
    with pytest.raises(UsageError, match=r"unknown trigger kinds \[.stale_rows.\]"):  # the sweep's old name
        agent(name="typo", budget=Budget(latency_ms=10), triggers=("stale_rows",))(run)
