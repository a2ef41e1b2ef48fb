"""The conversation service: message + earlier turns + history -> constrained, explained picks.

One :class:`ConversationService` per loaded model (it precomputes the catalog's facts); the
HTTP route, the MCP tool and the SDK function :func:`converse` all call :meth:`respond`, so the
three answer the same way. Steps:

1. rebuild the state from the earlier turns (rule parser, deterministic);
2. read the new message: with the LLM parser when one is configured (budgeted; on any failure
   the rule parser's reading is used and the response says why), else with the rule parser;
3. refuse what the catalog cannot check, filter, retrieve (user vector + anchors), rerank and
   explain; every pick is re-checked against the applied constraints before it is returned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from outerloop.budgets import Budget
from outerloop.conversation.catalog_facts import CatalogFacts
from outerloop.conversation.constraints import (
    MAX_MESSAGE_CHARS,
    MAX_TURNS,
    Constraints,
    Refusal,
    Turn,
    Unapplied,
)
from outerloop.conversation.filters import applicable, eligible_mask, relax_hints
from outerloop.conversation.llm import DEFAULT_LLM_BUDGET, LLMParser
from outerloop.conversation.rerank import RerankInput, rerank
from outerloop.conversation.response import ConversationResponse, Pick
from outerloop.conversation.retrieval import SearchableArtifacts, UserHistory, query_vector, retrieve
from outerloop.conversation.session import SessionState, next_state, replay
from outerloop.errors import UsageError, UserInputError

MAX_K = 50


@dataclass(frozen=True, slots=True)
class ConverseOptions:
    """Knobs of the service (defaults are what the tests and the bench use)."""

    max_k: int = MAX_K
    pool_min: int = 100  # candidates reranked, at least
    pool_per_k: int = 5  # ... and this many per requested item
    exclude_seen: bool = True  # never recommend what is in the user's history


@dataclass
class Selection:
    """The outcome of the recommendation half (no I/O): what :meth:`ConversationService.respond`
    wraps into a response, and what the bench measures directly."""

    applied: Constraints
    refused: list[Refusal]
    picks: list[Pick]
    eligible: int
    retrieval: str
    notes: list[str]
    timings_ms: dict[str, float]


def _check_inputs(user_id: str, message: str, k: int, max_k: int) -> str:
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 128:
        raise UserInputError("user_id: must be a non-empty string of at most 128 characters")
    if not isinstance(message, str) or not message.strip():
        raise UserInputError("message: must not be empty")
    if len(message) > MAX_MESSAGE_CHARS:
        raise UserInputError(f"message: {len(message)} characters is over the limit of {MAX_MESSAGE_CHARS}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise UserInputError(f"k: must be an integer from 1 to {max_k}, got {k!r}")
    return message.strip()


def coerce_turns(turns: Sequence[Turn | dict[str, Any]]) -> list[Turn]:
    """Turns from objects or plain dicts; a bad one is a :class:`UserInputError` naming it."""
    if len(turns) > MAX_TURNS:
        raise UserInputError(f"turns: {len(turns)} turns is over the limit of {MAX_TURNS}")
    out: list[Turn] = []
    for i, t in enumerate(turns):
        if isinstance(t, Turn):
            out.append(t)
            continue
        try:
            out.append(Turn.model_validate(t))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise UserInputError(f"turns[{i}]{'.' + loc if loc else ''}: {first.get('msg')}") from None
    return out


def describe(c: Constraints) -> str:
    """The constraints in a few words ("Comedy, under 90 min, no Romance, not stupid")."""
    parts: list[str] = []
    if c.include_genres:
        parts.append(" and ".join(c.include_genres))
    if c.any_genres:
        parts.append(" or ".join(c.any_genres))
    if c.kind:
        parts.append("series" if c.kind == "episode" else "films")
    lo, hi = c.min_runtime_min, c.max_runtime_min
    if lo is not None and hi is not None:
        parts.append(f"{lo}-{hi} min")
    elif hi is not None:
        parts.append(f"at most {hi} min")
    elif lo is not None:
        parts.append(f"at least {lo} min")
    ylo, yhi = c.min_year, c.max_year
    if ylo is not None and yhi is not None:
        parts.append(f"from {ylo}" if ylo == yhi else f"{ylo}-{yhi}")
    elif ylo is not None:
        parts.append(f"from {ylo} on")
    elif yhi is not None:
        parts.append(f"up to {yhi}")
    if c.exclude_genres:
        parts.append("no " + " or ".join(c.exclude_genres))
    parts += c.tones
    if c.anchors:
        parts.append("like " + " and ".join(a.title for a in c.anchors))
    return ", ".join(parts) if parts else "no constraints"


class ConversationService:
    """Conversational recommendations over one set of artifacts, optionally with an LLM parser."""

    def __init__(self, artifacts: SearchableArtifacts, *, llm: LLMParser | None = None,
                 options: ConverseOptions | None = None, catalog_name: str | None = None,
                 facts: CatalogFacts | None = None) -> None:
        """``facts``: reuse another service's catalog facts (same catalog) instead of rebuilding them."""
        self.artifacts = artifacts
        self.llm = llm
        self.options = options or ConverseOptions()
        if facts is not None and facts.catalog is not artifacts.catalog:
            raise UsageError("facts were built for another catalog than these artifacts'")
        manifest = getattr(artifacts, "manifest", None) or {}
        name = catalog_name or str(manifest.get("dataset", "this catalog"))
        self.facts = facts or CatalogFacts(artifacts.catalog, name=name, popularity=getattr(artifacts, "popularity", None))
        _ = self.facts.titles  # build the title index now, not on the first "like X"

    # -- understanding ---------------------------------------------------------------------------
    def understand(self, message: str, turns: Sequence[Turn | dict[str, Any]] = ()) -> SessionState:
        """The rule parser's reading of the conversation after ``message`` (no model, no I/O)."""
        prior = replay(coerce_turns(turns), self.facts)
        return next_state(prior, message, self.facts)[0]

    # -- recommending ----------------------------------------------------------------------------
    def plan(self, constraints: Constraints, history: UserHistory, k: int, *, now_ms: int | None = None) -> Selection:
        """Filter, retrieve, rerank and explain for fixed constraints (synchronous, no I/O)."""
        t0 = time.perf_counter()
        applied, refused = applicable(constraints, self.facts)
        anchors = [a.item_id for a in applied.anchors if a.item_id]
        seen = list(history.items) if self.options.exclude_seen else []
        mask = eligible_mask(self.facts, applied, seen + anchors)  # "like Toy Story" is not Toy Story
        query = query_vector(self.artifacts, history, anchors)
        pool = max(self.options.pool_min, self.options.pool_per_k * k)
        cands = retrieve(self.artifacts, query, mask, pool)
        t1 = time.perf_counter()
        suggestions = frozenset(s.item_id for s in applied.suggestions if s.item_id and mask[s.item_id])
        notes = [f"the model's suggestion {s.title!r} does not fit the constraints (or was seen); left out"
                 for s in applied.suggestions if s.item_id and not mask[s.item_id]]
        if suggestions:  # a model's titles join the pool when they pass the filter
            missing = [i for i in suggestions if i not in set(cands.ids.tolist())]
            if missing:
                extra = np.asarray(missing, dtype=np.int64)
                cands.ids = np.concatenate([cands.ids, extra])
                extra_scores = self.artifacts.item_vectors[extra] @ query  # (E,)
                cands.scores = np.concatenate([cands.scores, extra_scores]).astype(np.float32)
        picks, reflected = rerank(RerankInput(cands, applied, mask, history, suggestions, now_ms), self.facts,
                                  self.artifacts, k)
        notes += reflected
        if len(picks) < k:
            if cands.eligible == 0:
                notes.append("nothing in the catalog fits all of that")
            else:
                series = " (the episodes of a series count as one title)" if len(picks) < cands.eligible else ""
                notes.append(f"only {cands.eligible} unseen catalog items fit all of that{series}")
            notes += relax_hints(self.facts, applied, seen + anchors, cands.eligible)
        t2 = time.perf_counter()
        timings = {"retrieve": round((t1 - t0) * 1000, 3), "rerank": round((t2 - t1) * 1000, 3)}
        return Selection(applied, refused, picks, cands.eligible, cands.how, notes, timings)

    async def respond(
        self,
        user_id: str,
        message: str,
        turns: Sequence[Turn | dict[str, Any]] = (),
        history: UserHistory | None = None,
        *,
        k: int = 10,
        now_ms: int | None = None,
        degraded: bool = False,
    ) -> ConversationResponse:
        """Answer one message. ``history`` is the user's (``None``: cold start); ``degraded``
        says it could not be read (the caller's storage was down)."""
        started = time.perf_counter()
        message = _check_inputs(user_id, message, k, self.options.max_k)
        prior_turns = coerce_turns(turns)
        history = history or UserHistory()
        prior = replay(prior_turns, self.facts)
        ruled, _ = next_state(prior, message, self.facts)
        constraints, notes = ruled.constraints, list(ruled.notes)
        unapplied, readings = list(ruled.unapplied), list(ruled.readings)
        parser, fallback, llm_run = "rules", None, None
        if self.llm is not None:
            parsed = await self.llm.parse(message, prior.constraints, prior.shown, self.facts)
            llm_run = parsed.record.to_dict()
            if parsed.constraints is not None:
                constraints, notes, parser = parsed.constraints, parsed.notes, "llm"
                # what the model's answer lost in validation, and what no constraint field can say
                # (the rule parser's "not understood" phrases: an actor, a language) stay named
                readings = []
                unapplied = parsed.unapplied + [u for u in ruled.unapplied if u.reason.startswith("not understood")]
            else:
                fallback = f"{parsed.failure}; used the rule parser"
        t_parse = (time.perf_counter() - started) * 1000
        plan = self.plan(constraints, history, k, now_ms=now_ms if now_ms is not None else int(time.time() * 1000))
        if not history.items:
            notes.append("no history for this user: picks come from the request alone")
        if degraded:
            notes.append("the user's history could not be read; answered without it")
        reply = self._reply(plan, unapplied, readings)
        turn_out = Turn(role="assistant", text=reply[:MAX_MESSAGE_CHARS], item_ids=[p.item_id for p in plan.picks])
        timings = {"parse": round(t_parse, 3), **plan.timings_ms,
                   "total": round((time.perf_counter() - started) * 1000, 3)}
        return ConversationResponse(
            user_id=user_id, message=message, reply=reply, constraints=constraints, applied=plan.applied,
            refused=plan.refused, unapplied=unapplied, readings=readings, notes=notes + plan.notes, parser=parser, parser_fallback=fallback,
            llm_run=llm_run, items=plan.picks, eligible=plan.eligible,
            retrieval=plan.retrieval,  # type: ignore[arg-type]
            cold_start=not history.items, degraded=degraded, model_version=self.artifacts.model_version,
            turns=[*prior_turns, Turn(role="user", text=message), turn_out], timings_ms=timings,
        )

    @staticmethod
    def _reply(plan: Selection, unapplied: Sequence[Unapplied] = (), readings: Sequence[str] = ()) -> str:
        asked = describe(plan.applied)
        said = ""
        if unapplied:
            said += " Not used: " + "; ".join(f"'{u.phrase}' ({u.reason})" for u in unapplied) + "."
        if readings:
            said += " " + " ".join(r[0].upper() + r[1:] + "." for r in readings)
        if plan.refused:
            said += f" Not applied: {', '.join(r.field for r in plan.refused)}."
        if not plan.picks:
            return f"Nothing fits {asked}." + (f" ({plan.notes[-1]})" if plan.notes else "") + said
        head = "; ".join(f"{p.title} ({p.explanation})" for p in plan.picks[:3])
        more = f" and {len(plan.picks) - 3} more" if len(plan.picks) > 3 else ""
        return f"{asked[0].upper() + asked[1:]}: {head}{more}.{said}"


async def converse(
    artifacts: SearchableArtifacts,
    message: str,
    *,
    history: UserHistory | Sequence[int] | None = None,
    turns: Sequence[Turn | dict[str, Any]] = (),
    k: int = 10,
    llm: Any = None,
    llm_budget: Budget | None = None,
    user_id: str = "sdk",
    service: ConversationService | None = None,
) -> ConversationResponse:
    """One conversational request from Python (the SDK form of the HTTP route and MCP tool).

    ``history``: the user's item ids (oldest first) or a :class:`UserHistory`. ``llm``: a
    langchain-core chat model (or an :class:`LLMParser`) to read the message, run under
    ``llm_budget``. Building a service precomputes the catalog's facts; pass ``service`` (or keep
    a :class:`ConversationService`) when making many calls.
    """
    if service is None:
        parser = llm if isinstance(llm, LLMParser) or llm is None else LLMParser(llm, llm_budget or DEFAULT_LLM_BUDGET)
        service = ConversationService(artifacts, llm=parser)
    if history is not None and not isinstance(history, UserHistory):
        history = UserHistory(items=[int(i) for i in history])
    return await service.respond(user_id, message, turns, history, k=k)
