"""The planner: what to recompute for a user, why, with which agents, in what order.

Planning is two steps. :class:`PlanningView` reduces the user's triggers, memory and rows to
the few features any policy should look at (and that is all a policy sees, so its JSON is both
the LLM's input and the plan cache's key). A policy then maps the view to a :class:`Plan`:

- :class:`RulePolicy` (default): deterministic rules, one per situation, each firing only on
  its own evidence:

  ======================================  ============================================
  evidence in the view                    step
  ======================================  ============================================
  finished an episode of a series         tool agent -> ``continue_watching``
  episode released of a followed series   tool agent -> ``continue_watching``
  late-night session ending on dark       tool agent -> ``wind_down``
  genres (the sessionizer's
  ``late_night_session``)
  drift flag on a row                     the row's owner, exploring (``explore=1``)
  session closed                          tool agent -> ``top_picks``
  a genre just backed off (memory agent's tool agent -> its other rows the user has
  ``backoff`` trigger, a replan)          (``continue_watching``, ``wind_down``)
  sweep: rows expired / expiring soon     each stale row's owner
  engagement events                       memory agent (first, so rows see new facts)
  feedback joined to a request            evaluator (before everything)
  custom agent's trigger kinds            that agent
  ======================================  ============================================

- :class:`LLMPolicy` (optional): any langchain-core chat model, asked for the same ``Plan`` by
  structured output (or JSON text when the model has no structured-output support), under its
  own budget. When it is killed, fails, or returns something that does not validate against the
  registered agents, the rule policy decides.

Plans are cached by the view's signature (:class:`~outerloop.agents.caches.PlanCache`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import ValidationError

from outerloop.agents.caches import PlanCache, signature
from outerloop.budgets.context import RunContext
from outerloop.contracts.run_record import RunRecord
from outerloop.contracts.budget import Budget
from outerloop.contracts.plans import Plan, PlanStep, StepBudget
from outerloop.contracts.triggers import MANUAL, Trigger, kinds_of, local_hour
from outerloop.errors import RunFailed
from outerloop.memory.facts import ContinueWatching, GenreBackoff
from outerloop.tools.builtin import CatalogIndex

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from outerloop.agents.runtime import CycleScope, LoopConfig
    from outerloop.agents.sdk import AgentRegistry
    from outerloop.budgets.enforce import Enforcer

# Names of the built-in agents and rows (the planner's rules refer to them).
MEMORY_AGENT = "memory"
TOOL_AGENT = "tools"
EVALUATOR = "evaluator"
ROW_CONTINUE = "continue_watching"
ROW_WIND_DOWN = "wind_down"
ROW_TOP_PICKS = "top_picks"
ENGAGEMENT_TYPES = frozenset({"play", "finish", "skip", "add_to_list", "rate", "click", "pause"})
FEEDBACK_TYPES = frozenset({"impression", "click", "play", "finish", "skip", "add_to_list", "rate"})


class InvalidPlan(RunFailed):
    """A policy returned a plan that names unknown agents or rows an agent does not own."""


@dataclass(frozen=True, slots=True)
class PlanningView:
    """The features of a user's situation that planning depends on (no user id, no clock:
    two users in the same situation have the same view, hence the same cached plan)."""

    trigger_kinds: tuple[str, ...] = ()  # the kinds fired (what custom agents subscribe to)
    finished_episodes: tuple[tuple[str, int], ...] = ()  # (series_id, item_id) just finished
    releases_followed: tuple[tuple[str, int], ...] = ()  # (series_id, released item_id)
    late_night_dark: bool = False  # a late-night session ended on thriller/horror
    session_end_local_hour: int | None = None
    session_closed: bool = False
    drift_rows: tuple[str, ...] = ()
    sweep: bool = False
    stale_rows: tuple[str, ...] = ()  # rows expired or expiring within the horizon
    missing_rows: tuple[str, ...] = ()  # rows of sweep-triggered agents never produced
    engagement_events: int = 0
    feedback_events: int = 0
    event_types: tuple[str, ...] = ()
    manual_agents: tuple[str, ...] = ()
    backoff_genres: tuple[str, ...] = ()
    new_backoffs: tuple[str, ...] = ()  # genres backed off in this cycle (a "backoff" trigger)
    rows_built_before: tuple[str, ...] = ()  # with new_backoffs: the user's rows that predate them

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def signature(self) -> str:
        return signature(self.to_json())

    @classmethod
    def build(cls, scope: "CycleScope", triggers: Sequence[Trigger], agents: "AgentRegistry",
              catalog: CatalogIndex, config: "LoopConfig") -> "PlanningView":
        followed = {f.series_id for f in scope.memory.of_kind(ContinueWatching)}
        for i in scope.history.items.tolist()[-50:]:  # series the user has been watching recently
            it = catalog.item(int(i))
            if it is not None and it.series_id is not None:
                followed.add(it.series_id)
        finished: list[tuple[str, int]] = []
        releases: list[tuple[str, int]] = []
        drift: list[str] = []
        manual: list[str] = []
        backed_off: list[str] = []
        types: set[str] = set()
        engagement = feedback = 0
        session_closed = sweep = late_dark = False
        end_hour: int | None = None
        for t in triggers:
            for e in t.events:
                types.add(e.type)
                engagement += e.type in ENGAGEMENT_TYPES
                feedback += e.request_id is not None and e.type in FEEDBACK_TYPES
                it = catalog.item(e.item_id) if e.item_id is not None else None
                if it is None or it.series_id is None:
                    continue
                if e.type == "finish" and it.kind == "episode":
                    finished.append((it.series_id, it.item_id))
                elif e.type == "episode_release" and it.series_id in followed:
                    releases.append((it.series_id, it.item_id))
            if t.kind == "session_closed":
                session_closed = True
                engaged = [e for e in t.events if e.type in ENGAGEMENT_TYPES and e.item_id is not None]
                if engaged and end_hour is None:
                    end_hour = local_hour(max(e.ts for e in engaged), t.tz_offset_min)
            elif t.kind == "late_night_session":  # classified once, by the sessionizer's rule
                late_dark = True
                hour = t.detail.get("local_hour")
                end_hour = int(hour) if hour is not None else local_hour(t.at_ms, t.tz_offset_min)
            elif t.kind == "drift" and t.row_id:
                drift.append(t.row_id)
            elif t.kind == "sweep":
                sweep = True
            elif t.kind == "manual":
                manual.extend(t.agents)
            elif t.kind == "backoff":
                backed_off.extend(g for g in str(t.detail.get("genres", "")).split(",") if g)
        stale = sorted(r for r, row in scope.rows.items() if row.expires_at <= scope.now_ms + config.stale_horizon_ms)
        missing = sorted(
            r for spec in agents if "sweep" in spec.triggers for r in spec.rows if r not in scope.rows
        ) if sweep else []
        return cls(
            trigger_kinds=tuple(sorted({t.kind for t in triggers})),
            finished_episodes=tuple(dict.fromkeys(finished)),
            releases_followed=tuple(dict.fromkeys(releases)),
            late_night_dark=late_dark,
            session_end_local_hour=end_hour,
            session_closed=session_closed,
            drift_rows=tuple(dict.fromkeys(drift)),
            sweep=sweep,
            stale_rows=tuple(stale) if sweep else (),
            missing_rows=tuple(missing),
            engagement_events=engagement,
            feedback_events=feedback,
            event_types=tuple(sorted(types)),
            manual_agents=tuple(dict.fromkeys(manual)),
            backoff_genres=tuple(sorted(f.genre for f in scope.memory.of_kind(GenreBackoff))),
            new_backoffs=tuple(sorted(set(backed_off))),
            rows_built_before=tuple(sorted(scope.rows)) if backed_off else (),
        )


class _Steps:
    """Collects steps, merging repeats of the same (agent, rows)."""

    def __init__(self) -> None:
        self.steps: list[PlanStep] = []

    def add(self, agent: str, rows: Sequence[str], reason: str, **params: Any) -> None:
        for s in self.steps:
            if s.agent == agent and s.rows == list(rows):
                s.reason = f"{s.reason}; {reason}" if reason not in s.reason else s.reason
                for k, v in params.items():
                    if isinstance(v, list) and isinstance(s.params.get(k), list):
                        s.params[k] = list(dict.fromkeys([*s.params[k], *v]))  # type: ignore[misc]
                    else:
                        s.params.setdefault(k, v)
                return
        self.steps.append(PlanStep(agent=agent, rows=list(rows), reason=reason, params=params))


class RulePolicy:
    """Deterministic rules over the view (see the module docstring for the table)."""

    name = "rules"

    def decide(self, view: PlanningView, agents: "AgentRegistry") -> Plan:
        steps = _Steps()
        has = agents.__contains__
        if view.feedback_events and has(EVALUATOR):
            steps.add(EVALUATOR, [], f"{view.feedback_events} feedback events to join to what was served")
        if (view.engagement_events or view.session_closed) and has(MEMORY_AGENT):
            steps.add(MEMORY_AGENT, [], f"{view.engagement_events} engagement events to learn from")
        if has(TOOL_AGENT):
            for series, item in view.finished_episodes:
                steps.add(TOOL_AGENT, [ROW_CONTINUE], "finished an episode: next episode up",
                          series=[series], after_items=[item])
            for series, item in view.releases_followed:
                steps.add(TOOL_AGENT, [ROW_CONTINUE], "new episode of a followed series",
                          series=[series], released_items=[item])
            if view.late_night_dark:
                steps.add(TOOL_AGENT, [ROW_WIND_DOWN],
                          f"late-night session (ended {view.session_end_local_hour}:00 local) on thriller/horror")
            if view.session_closed:
                steps.add(TOOL_AGENT, [ROW_TOP_PICKS], "session closed: refresh the main row")
            if view.new_backoffs:  # the rows it owns that predate the back-off (top picks comes after memory)
                stale_genre = [r for r in (ROW_CONTINUE, ROW_WIND_DOWN) if r in view.rows_built_before]
                if stale_genre:
                    steps.add(TOOL_AGENT, stale_genre, f"{', '.join(view.new_backoffs)} backed off: "
                              "rebuilt without it")
        for row_id in view.drift_rows:
            owner = agents.owner_of(row_id)
            if owner is not None:
                steps.add(owner.name, [row_id], "evaluator flagged drift: CTR well below baseline", explore=1)
        for row_id in (*view.stale_rows, *view.missing_rows):
            owner = agents.owner_of(row_id)
            if owner is not None:
                steps.add(owner.name, [row_id], "sweep: row stale or missing")
        builtin = {MEMORY_AGENT, TOOL_AGENT, EVALUATOR}
        for spec in agents:
            if spec.name in builtin:
                continue
            fired = [k for k in spec.triggers if _fires(k, view)]
            if "sweep" in fired and not any(r in view.stale_rows or r in view.missing_rows for r in spec.rows):
                fired.remove("sweep")  # sweeps only redo what is stale
            if fired:
                steps.add(spec.name, list(spec.rows), f"custom agent; triggered by {', '.join(fired)}")
        for name in view.manual_agents:
            if has(name):
                spec = agents.get(name)
                steps.add(name, list(spec.rows), "requested manually")
        return Plan(steps=steps.steps, rationale=_rationale(steps.steps), policy=self.name)


def _fires(subscription: str, view: PlanningView) -> bool:
    """Whether a custom agent declaring ``subscription`` (a trigger kind or a group of kinds,
    :func:`~outerloop.contracts.triggers.kinds_of`) is scheduled: one of its kinds was fired.
    ``manual`` never is on its own: a manual request names the agent it is for."""
    return any(k in view.trigger_kinds for k in kinds_of(subscription) if k != MANUAL)


def _rationale(steps: Sequence[PlanStep]) -> str:
    if not steps:
        return "nothing to do: no trigger calls for a refresh"
    return "; ".join(f"{s.agent}{s.rows or ''}: {s.reason}" for s in steps)


def validate_plan(plan: Plan, agents: "AgentRegistry") -> Plan:
    """Reject plans naming unknown agents or rows the agent does not own; cap budgets at the
    agent's own (a policy may tighten a budget, never loosen it)."""
    steps: list[PlanStep] = []
    for s in plan.steps:
        if s.agent not in agents:
            raise InvalidPlan(f"plan names unknown agent {s.agent!r}")
        spec = agents.get(s.agent)
        foreign = [r for r in s.rows if r not in spec.rows]
        if foreign:
            raise InvalidPlan(f"agent {s.agent!r} does not produce rows {foreign}")
        budget = s.budget
        if budget is not None:
            cap = spec.budget
            budget = StepBudget(
                latency_ms=min(budget.latency_ms, cap.latency_ms),
                max_tool_calls=_min_opt(budget.max_tool_calls, cap.max_tool_calls),
                max_llm_tokens=_min_opt(budget.max_llm_tokens, cap.max_llm_tokens),
            )
        steps.append(s.model_copy(update={"budget": budget}))
    return plan.model_copy(update={"steps": steps})


def _min_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


_JSON_OBJ = re.compile(r"\{.*\}", re.DOTALL)


class LLMPolicy:
    """Ask a chat model for a :class:`Plan`. Runs under ``budget`` (kill, no retry); its tokens
    are counted (``usage_metadata`` when the model reports it, else ~4 characters a token)."""

    name = "llm"

    def __init__(self, model: "BaseChatModel", *, budget: Budget | None = None,
                 instructions: str | None = None) -> None:
        self.model = model
        self.budget = budget or Budget(latency_ms=3000, max_tool_calls=0, max_llm_tokens=4000)
        self.instructions = instructions or (
            "You plan background work for a recommender. Given a user's situation (JSON) and the "
            "agents available (each with the rows it produces), return a Plan: ordered steps "
            "naming an agent, the rows it should recompute, a short reason, optional params. "
            "Plan nothing when nothing calls for it. Use only the listed agents and rows."
        )
        try:
            self._structured: Any = model.with_structured_output(Plan, include_raw=True)
        except NotImplementedError:  # e.g. langchain-core's fake models: fall back to JSON text
            self._structured = None

    def messages(self, view: PlanningView, agents: "AgentRegistry") -> list[Any]:
        catalog = [{"agent": s.name, "rows": list(s.rows), "description": s.description[:200]} for s in agents]
        return [
            SystemMessage(self.instructions + "\nAgents: " + json.dumps(catalog)),
            HumanMessage("Situation: " + view.to_json() + "\nReply with the Plan as JSON."),
        ]

    async def decide(self, run: RunContext, view: PlanningView, agents: "AgentRegistry") -> Plan:
        msgs = self.messages(view, agents)
        prompt_chars = sum(len(str(m.content)) for m in msgs)
        if self._structured is not None:
            out = await self._structured.ainvoke(msgs)
            raw, parsed, err = out.get("raw"), out.get("parsed"), out.get("parsing_error")
            run.count_tokens(_tokens(raw, prompt_chars))
            if parsed is None:
                raise RunFailed(f"LLM plan did not parse: {err}")
            plan = parsed if isinstance(parsed, Plan) else Plan.model_validate(parsed)
        else:
            msg = await self.model.ainvoke(msgs)
            run.count_tokens(_tokens(msg, prompt_chars))
            plan = parse_plan_text(str(msg.content))
        return plan.model_copy(update={"policy": self.name})


def parse_plan_text(text: str) -> Plan:
    """The first JSON object in a model's reply, validated as a Plan (``RunFailed`` if none)."""
    m = _JSON_OBJ.search(text)
    if m is None:
        raise RunFailed(f"LLM reply holds no JSON object: {text[:80]!r}")
    try:
        data = json.loads(m.group(0))
        data.pop("policy", None)
        return Plan.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise RunFailed(f"LLM reply is not a valid Plan: {exc}") from exc


def _tokens(msg: Any, prompt_chars: int) -> int:
    usage = getattr(msg, "usage_metadata", None)
    if usage and usage.get("total_tokens"):
        return int(usage["total_tokens"])
    out_chars = len(str(getattr(msg, "content", "") or ""))
    return max(1, (prompt_chars + out_chars) // 4)


@dataclass(slots=True)
class PlanOutcome:
    plan: Plan
    records: list[RunRecord] = field(default_factory=list)
    cache_hit: bool = False
    notes: list[str] = field(default_factory=list)


class Planner:
    """Runs the policies under their budgets, falls back to rules, caches plans by signature."""

    def __init__(self, *, rules: RulePolicy | None = None, llm: LLMPolicy | None = None,
                 cache: PlanCache | None = None, rule_budget: Budget | None = None) -> None:
        self.rules = rules or RulePolicy()
        self.llm = llm
        self.cache = cache if cache is not None else PlanCache()
        self.rule_budget = rule_budget or Budget(latency_ms=50, max_tool_calls=0, max_llm_tokens=0)

    async def plan(self, view: PlanningView, agents: "AgentRegistry", enforcer: "Enforcer") -> PlanOutcome:
        key = view.signature()
        cached = self.cache.get(key)
        if isinstance(cached, Plan):
            # shallow: nothing downstream mutates a plan's steps once it is built
            return PlanOutcome(cached.model_copy(update={"policy": f"cache({cached.policy})"}), cache_hit=True)
        out = PlanOutcome(Plan())
        if self.llm is not None:
            rec = await enforcer.run(_decide_llm, self.llm.budget, self.llm, view, agents, agent="planner.llm")
            out.records.append(rec)
            if rec.outcome == "ok":
                try:
                    out.plan = validate_plan(rec.value, agents)
                    self.cache.put(key, out.plan)
                    return out
                except InvalidPlan as exc:
                    out.notes.append(f"LLM plan rejected ({exc}); rules decide")
            else:
                out.notes.append(f"LLM policy {rec.outcome} ({rec.error}); rules decide")
        rec = await enforcer.run(_decide_rules, self.rule_budget, self.rules, view, agents, agent="planner")
        out.records.append(rec)
        if rec.outcome != "ok":  # the rules themselves failed: plan nothing, keep the last good rows
            out.notes.append(f"rule policy {rec.outcome} ({rec.error}); nothing planned")
            return out
        out.plan = validate_plan(rec.value, agents)
        if self.llm is not None:  # a fallback is not cached: the model gets another chance
            out.plan = out.plan.model_copy(update={"policy": "llm->rules"})
        else:
            self.cache.put(key, out.plan)
        return out


async def _decide_llm(run: RunContext, policy: LLMPolicy, view: PlanningView, agents: "AgentRegistry") -> Plan:
    return await policy.decide(run, view, agents)


async def _decide_rules(run: RunContext, policy: RulePolicy, view: PlanningView, agents: "AgentRegistry") -> Plan:
    return policy.decide(view, agents)


__all__ = [
    "InvalidPlan",
    "LLMPolicy",
    "Planner",
    "PlanningView",
    "RulePolicy",
    "parse_plan_text",
    "validate_plan",
]
