"""``RunRecord.retries`` is counted from what actually ran, per cycle and plan step: 0 for every
run of a normal cycle, and 1 when LangGraph re-runs an agent node (here under a retry policy,
after a first attempt failed outside the enforcer), so a retry would show in every report."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from outerloop import AgentContext, Budget, OuterLoop, Trigger, agent
from outerloop.agents.graph import PLANNER_NODE, CycleState, initial_state, make_agent_node, planner_node
from outerloop.agents.runtime import LoopDeps
from outerloop.budgets.fencing import Fence
from tests.agents.test_outer_loop_support import BASE_TS, TinyArtifacts, apply_events, ev


@agent(name="steady", budget=Budget(latency_ms=500), rows=["steady"], triggers=("manual",))
async def steady(ctx: AgentContext) -> str:
    """Writes a row."""
    ctx.emit_row("steady", title="Steady", reason="ran", items=[(1, 1.0)])
    return "done"


class FlakyFence(Fence):
    """The first lease request fails (a dropped connection), outside the enforcer's run."""

    failed = False

    async def acquire(self, user_id, latency_ms):  # noqa: ANN001, ANN201
        if not self.failed:
            self.failed = True
            raise ConnectionError("connection dropped")
        return await super().acquire(user_id, latency_ms)


async def test_a_normal_cycle_counts_no_retries(redis_target, redis_keys, redis_client):
    events = [ev("u-r", "play", 1, BASE_TS), ev("u-r", "finish", 1, BASE_TS + 60_000)]
    await apply_events(redis_client, redis_keys, events)
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=[steady]) as loop:
        res = await loop.run_cycle("u-r", [Trigger.session_closed(events), Trigger.manual("steady")],
                                   now_ms=BASE_TS + 100_000)
        assert len(res.records) >= 4 and all(r.retries == 0 for r in res.records)
        assert loop.stats()["runs"]["retries"] == 0


async def test_a_node_run_twice_for_one_step_shows_a_retry(redis_target, redis_keys):
    async with OuterLoop(TinyArtifacts(), redis=redis_target, keys=redis_keys, agents=[steady],
                         builtins=False) as loop:
        loop.deps.enforcer.fence = FlakyFence(loop.deps.redis, keys=redis_keys)
        builder: StateGraph = StateGraph(CycleState, context_schema=LoopDeps)
        builder.add_node(PLANNER_NODE, planner_node)
        builder.add_node("steady", make_agent_node(steady),
                         retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.01, retry_on=ConnectionError))
        builder.add_edge(START, PLANNER_NODE)
        builder.add_edge(PLANNER_NODE, "steady")
        builder.add_edge("steady", END)
        scope = await loop.read_scope("u-retry", [Trigger.manual("steady")], BASE_TS)
        final = await builder.compile().ainvoke(initial_state(scope), context=loop.deps)
    (rec,) = [r for r in final["records"] if r.agent == "steady"]
    assert rec.outcome == "ok" and rec.retries == 1  # the second execution of that plan step
    assert "steady" in final["committed"]
