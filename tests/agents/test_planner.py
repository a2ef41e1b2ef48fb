"""The planner: each rule fires on its trigger and not otherwise; the LLM policy's plan is used
when valid, and the rules decide when the model is slow (killed), wrong, or verbose."""

from __future__ import annotations

import json
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage

from outerloop.agents.evaluator import evaluator
from outerloop.agents.memory_agent import memory_agent
from outerloop.agents.planner import (
    LLMPolicy,
    Planner,
    PlanningView,
    RulePolicy,
    parse_plan_text,
    validate_plan,
)
from outerloop.agents.runtime import LoopConfig
from outerloop.agents.sdk import AgentContext, AgentRegistry, agent
from outerloop.agents.tool_agent import tool_agent
from outerloop.budgets import Budget, Enforcer
from outerloop.contracts.plans import Plan
from outerloop.contracts.rows import Row
from outerloop.contracts.triggers import Trigger, session_triggers
from outerloop.errors import RunFailed
from outerloop.memory.facts import ContinueWatching
from outerloop.tools.builtin import CatalogIndex
from tests.agents.test_outer_loop_support import BASE_TS, SERIES, episode_id, ev, make_scope, tiny_catalog

HOUR = 3_600_000
CATALOG = tiny_catalog()
IDX = CatalogIndex.build(CATALOG)
THRILLER, COMEDY, CRIME_DRAMA = 3, 2, 1  # film ids by genre (see FILMS)


@agent(name="new_this_week", budget=Budget(latency_ms=50), triggers=("sweep",))
async def new_this_week(ctx: AgentContext) -> None:
    """A custom agent producing one row on sweeps."""


def registry(*extra) -> AgentRegistry:
    return AgentRegistry([evaluator, memory_agent, tool_agent, *extra])


def plan_for(*triggers: Trigger, agents: AgentRegistry | None = None, **scope_kw) -> Plan:
    scope = make_scope(triggers, **scope_kw)
    agents = agents or registry()
    view = PlanningView.build(scope, list(triggers), agents, IDX, LoopConfig())
    return RulePolicy().decide(view, agents)


def steps(plan: Plan) -> list[tuple[str, tuple[str, ...]]]:
    return [(s.agent, tuple(s.rows)) for s in plan.steps]


def at_local(hour: int, minute: int = 30, tz_offset_min: int = 0) -> int:
    """Epoch ms of day BASE's ``hour:minute`` local time, for a user ``tz_offset_min`` from UTC."""
    day = BASE_TS - BASE_TS % (24 * HOUR)
    return day + hour * HOUR + minute * 60_000 - tz_offset_min * 60_000


# -- rules ---------------------------------------------------------------------------------------
def test_no_trigger_no_plan():
    assert plan_for().steps == []


def test_finishing_an_episode_refreshes_continue_watching_and_a_film_does_not():
    p = plan_for(Trigger.event(ev("u1", "finish", episode_id(2), BASE_TS)))
    assert ("tools", ("continue_watching",)) in steps(p)
    cw = next(s for s in p.steps if s.rows == ["continue_watching"])
    assert cw.params == {"series": [SERIES], "after_items": [episode_id(2)]}
    assert ("memory", ()) in steps(p)  # the finish is also something to learn from

    for t in (Trigger.event(ev("u1", "finish", COMEDY, BASE_TS)),  # a film
              Trigger.event(ev("u1", "play", episode_id(2), BASE_TS))):  # started, not finished
        assert ("tools", ("continue_watching",)) not in steps(plan_for(t))


def test_release_of_a_followed_series_refreshes_its_row_and_others_do_not():
    release = Trigger.event(ev("catalog", "episode_release", episode_id(6), BASE_TS))
    assert steps(plan_for(release)) == []  # not following: nothing
    by_memory = plan_for(release, facts=[ContinueWatching(
        series_id=SERIES, next_item_id=episode_id(3), next_episode=3, evidence="x", confidence=1, source="t")])
    by_history = plan_for(release, history=[episode_id(1), episode_id(2)])
    for p in (by_memory, by_history):
        assert steps(p) == [("tools", ("continue_watching",))]
        assert p.steps[0].params["released_items"] == [episode_id(6)]


@pytest.mark.parametrize("item, hour, tz, fires", [
    (THRILLER, 23, 0, True),
    (THRILLER, 1, 0, True),  # still late night after midnight
    (4, 23, 0, True),  # horror
    (THRILLER, 21, 0, False),  # evening, not late
    (COMEDY, 23, 0, False),  # late, but not dark
    (THRILLER, 23, -120, True),  # 23:30 local for a user two hours behind UTC
])
def test_late_night_dark_session_gets_a_wind_down_row(item, hour, tz, fires):
    """The session's triggers as the sessionizer classifies them (``session_triggers`` applies the
    Lua's rule); the planner reads the ``late_night_session`` kind."""
    end = at_local(hour, tz_offset_min=tz)
    session = [ev("u1", "play", COMEDY, end - HOUR), ev("u1", "play", item, end - 30 * 60_000),
               ev("u1", "finish", item, end)]
    p = plan_for(*session_triggers(session, genres_of=CATALOG.genres_of, tz_offset_min=tz))
    assert (("tools", ("wind_down",)) in steps(p)) is fires
    assert ("tools", ("top_picks",)) in steps(p)  # any closed session refreshes the main row


def test_local_time_is_read_in_the_users_timezone():
    end = at_local(23)  # 23:30 UTC
    session = [ev("u1", "finish", THRILLER, end)]
    assert ("tools", ("wind_down",)) in steps(plan_for(*session_triggers(session, genres_of=CATALOG.genres_of)))
    # the same instant is 20:30 for a user three hours behind: no wind-down
    assert ("tools", ("wind_down",)) not in steps(plan_for(*session_triggers(
        session, genres_of=CATALOG.genres_of, tz_offset_min=-180)))


def test_drift_refreshes_the_rows_owner_with_exploration_and_unknown_rows_are_ignored():
    p = plan_for(Trigger.drift("top_picks", at_ms=BASE_TS, z=-4.2))
    assert steps(p) == [("tools", ("top_picks",))] and p.steps[0].params == {"explore": 1}
    assert plan_for(Trigger.drift("someone_elses_row", at_ms=BASE_TS)).steps == []


def test_sweep_refreshes_stale_and_missing_rows_only():
    def row(row_id: str, expires_at: int) -> Row:
        return Row(row_id=row_id, title=row_id, reason="", items=[(1, 1.0)], produced_by="x", run_id="r",
                   model_version="m", created_at=BASE_TS - HOUR, expires_at=expires_at)

    rows = {"top_picks": row("top_picks", BASE_TS - 1), "wind_down": row("wind_down", BASE_TS + 48 * HOUR),
            "new_this_week": row("new_this_week", BASE_TS + 48 * HOUR)}
    agents = registry(new_this_week)
    p = plan_for(Trigger.sweep(at_ms=BASE_TS), rows=rows, agents=agents)
    assert steps(p) == [("tools", ("top_picks",))]  # stale; the fresh ones are left alone
    del rows["new_this_week"]
    p = plan_for(Trigger.sweep(at_ms=BASE_TS), rows=rows, agents=agents)
    assert ("new_this_week", ("new_this_week",)) in steps(p)  # missing: the custom agent runs
    assert plan_for(Trigger.event(ev("u1", "play", 1, BASE_TS)), rows=rows, agents=agents).steps[0].agent == "memory"


@agent(name="on_events", budget=Budget(latency_ms=50), triggers=("event",), rows=("on_events",))
async def on_events(ctx: AgentContext) -> None:
    """A custom agent on the ``event`` group: every kind that carries the user's events."""


@agent(name="on_finish", budget=Budget(latency_ms=50), triggers=("title_finished",), rows=("on_finish",))
async def on_finish(ctx: AgentContext) -> None:
    """A custom agent on one per-event kind."""


def test_custom_agents_run_on_the_kinds_they_subscribe_to():
    """The kinds the scheduler fires are the kinds agents subscribe to; ``event`` stands for the
    kinds that carry the user's events, as it did when those were one kind."""
    agents = registry(on_events, on_finish)

    def custom(*triggers: Trigger) -> set[str]:
        return {a for a, _ in steps(plan_for(*triggers, agents=agents))} & {"on_events", "on_finish"}

    finish, play = ev("u1", "finish", COMEDY, BASE_TS), ev("u1", "play", COMEDY, BASE_TS)
    assert custom(Trigger.event(finish)) == {"on_events", "on_finish"}
    assert custom(Trigger.event(play)) == {"on_events"}  # activity
    assert custom(Trigger.session_closed([play])) == {"on_events"}
    assert custom(Trigger.sweep(at_ms=BASE_TS), Trigger.drift("top_picks", at_ms=BASE_TS)) == set()
    assert custom(Trigger.manual("tools", at_ms=BASE_TS)) == set()  # a manual request names its agents


def test_feedback_puts_the_evaluator_first():
    p = plan_for(Trigger.session_closed([ev("u1", "click", 5, BASE_TS, request_id="req-1")]))
    assert steps(p)[0] == ("evaluator", ())
    assert steps(plan_for(Trigger.session_closed([ev("u1", "click", 5, BASE_TS)])))[0] != ("evaluator", ())


def test_manual_trigger_runs_the_named_agent():
    p = plan_for(Trigger.manual("new_this_week", at_ms=BASE_TS), agents=registry(new_this_week))
    assert steps(p) == [("new_this_week", ("new_this_week",))]


def test_plans_naming_unknown_agents_or_foreign_rows_are_invalid():
    agents = registry()
    with pytest.raises(RunFailed, match="unknown agent"):
        validate_plan(Plan.model_validate({"steps": [{"agent": "ghost"}]}), agents)
    with pytest.raises(RunFailed, match="does not produce"):
        validate_plan(Plan.model_validate({"steps": [{"agent": "memory", "rows": ["top_picks"]}]}), agents)
    loose = Plan.model_validate({"steps": [{"agent": "tools", "rows": ["top_picks"],
                                            "budget": {"latency_ms": 60_000, "max_tool_calls": 100}}]})
    capped = validate_plan(loose, agents).steps[0].budget
    assert capped.latency_ms == tool_agent.budget.latency_ms and capped.max_tool_calls == tool_agent.budget.max_tool_calls


# -- LLM policy ----------------------------------------------------------------------------------
LLM_PLAN = {"steps": [{"agent": "tools", "rows": ["wind_down"], "reason": "the model's call"}],
            "rationale": "calm things down"}


class ToolCallingFake(GenericFakeChatModel):
    """langchain-core's generic fake, made to accept tools so ``with_structured_output`` binds."""

    def bind_tools(self, tools, **kwargs):  # noqa: ANN001, ANN003, ARG002
        return self


def tool_call_reply(args: dict) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": "Plan", "args": args, "id": "call-1"}],
                     usage_metadata={"input_tokens": 300, "output_tokens": 40, "total_tokens": 340})


async def plan_with(model, budget: Budget | None = None, *, planner: Planner | None = None, view=None):
    planner = planner or Planner(llm=LLMPolicy(model, budget=budget or Budget(latency_ms=500, max_llm_tokens=4000)))
    view = view or PlanningView.build(make_scope(), [Trigger.session_closed([ev("u1", "finish", 1, BASE_TS)])],
                                      registry(), IDX, LoopConfig())
    return planner, await planner.plan(view, registry(), Enforcer())


async def test_llm_structured_output_is_used_when_valid():
    _, out = await plan_with(ToolCallingFake(messages=iter([tool_call_reply(LLM_PLAN)])))
    assert out.plan.policy == "llm"
    assert steps(out.plan) == [("tools", ("wind_down",))]
    (rec,) = out.records
    assert rec.agent == "planner.llm" and rec.outcome == "ok" and rec.llm_tokens == 340


async def test_llm_json_text_is_used_when_the_model_has_no_structured_output():
    model = FakeListChatModel(responses=["Here you go: " + json.dumps(LLM_PLAN)])
    _, out = await plan_with(model)
    assert out.plan.policy == "llm" and steps(out.plan) == [("tools", ("wind_down",))]


async def test_slow_llm_is_killed_and_rules_decide():
    model = FakeListChatModel(responses=[json.dumps(LLM_PLAN)], sleep=1.0)
    _, out = await plan_with(model, Budget(latency_ms=80))
    llm_rec, rules_rec = out.records
    assert llm_rec.outcome == "killed" and llm_rec.retries == 0 and llm_rec.elapsed_ms < 900
    assert rules_rec.agent == "planner" and rules_rec.outcome == "ok"
    assert out.plan.policy == "llm->rules"
    assert ("tools", ("top_picks",)) in steps(out.plan)  # the rule for a closed session


@pytest.mark.parametrize("reply", [
    "I would refresh the top picks row.",  # no JSON at all
    json.dumps({"steps": [{"agent": "ghost", "rows": []}]}),  # an agent that does not exist
    json.dumps({"steps": [{"agent": "memory", "rows": ["top_picks"]}]}),  # a row it does not own
    json.dumps({"steps": "all of them"}),  # not a Plan
])
async def test_garbage_from_the_llm_falls_back_to_rules(reply):
    _, out = await plan_with(FakeListChatModel(responses=[reply]))
    assert out.plan.policy == "llm->rules"
    assert ("tools", ("top_picks",)) in steps(out.plan)


async def test_llm_over_its_token_budget_falls_back_to_rules():
    _, out = await plan_with(ToolCallingFake(messages=iter([tool_call_reply(LLM_PLAN)])),
                             Budget(latency_ms=500, max_llm_tokens=100))
    assert out.records[0].outcome == "over_token_budget"
    assert out.plan.policy == "llm->rules"


async def test_plans_are_cached_by_the_users_situation():
    model = ToolCallingFake(messages=iter([tool_call_reply(LLM_PLAN)]))  # answers once only
    planner, first = await plan_with(model)
    view2 = PlanningView.build(make_scope(user="u2"), [Trigger.session_closed([ev("u2", "finish", 1, BASE_TS + 5)])],
                               registry(), IDX, LoopConfig())
    _, second = await plan_with(model, planner=planner, view=view2)  # another user, same situation
    assert second.cache_hit and second.records == [] and second.plan.policy == "cache(llm)"
    assert steps(second.plan) == steps(first.plan)
    view3 = PlanningView.build(make_scope(), [Trigger.sweep(at_ms=BASE_TS)], registry(), IDX, LoopConfig())
    assert view3.signature() != view2.signature()
    assert planner.cache.hit_rate == pytest.approx(0.5)


def test_parse_plan_text_rejects_non_plans():
    assert parse_plan_text('{"steps": []}').steps == []
    with pytest.raises(RunFailed):
        parse_plan_text("no json")


def test_view_has_no_user_identity_and_is_stable():
    t = [Trigger.session_closed([ev("u1", "finish", 1, BASE_TS)])]
    a = PlanningView.build(make_scope(user="a"), t, registry(), IDX, LoopConfig())
    b = PlanningView.build(make_scope(user="b"), t, registry(), IDX, LoopConfig())
    assert a.signature() == b.signature()
    assert "u1" not in a.to_json()
