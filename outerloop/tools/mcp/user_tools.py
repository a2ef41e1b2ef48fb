"""User-facing tools: what a person (or a model acting for one) asks of a recommender.

The built-in tools (``outerloop.tools.builtin``) are building blocks for agents: vectors, co-watch
neighbours, trending counts. The tools here answer questions about one user or one item, for MCP
clients (Claude Desktop, an IDE, another agent framework) and for your own code:

- ``recommend``: the user's rows, exactly as the inner loop serves them now;
- ``search_similar_items``: items like a given one (by id or by title);
- ``get_item``: one catalog item;
- ``get_user_history`` / ``get_user_memory``: what the user did, and what the agents concluded;
- ``explain_recommendation``: why an item is in a row (which agent, which facts, which tools);
- ``refresh_user``: run an outer-loop cycle for the user now, under its budgets.

They are ordinary ``@tool`` specs built on the serving, memory and agents modules' public APIs,
bound by :func:`user_tools` to one :class:`UserToolsContext` (the funnel, the key namespace, the
outer loop), so they register in a ``ToolRegistry`` like any other tool. Their inputs and outputs
live in :mod:`outerloop.tools.mcp.user_contracts`.

``recommend`` answers exactly what ``GET /v1/users/{id}/recommendations`` answers (one reader,
one funnel, one writer: :mod:`outerloop.inner_loop.serving.answer`): a user the deployment has never seen
gets the cold-start rows flagged ``cold_start``, a Redis failure the popular items flagged
``degraded``, and ``explain_recommendation`` explains those rows too. The tools that have nothing
to say about a user without any state (history, memory, refresh) refuse the id with
:class:`UnknownUser`, so a mistyped id is not taken for an empty one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from outerloop.contracts.events import EVENT_TYPES
from outerloop.contracts.keys import Keys
from outerloop.data.schema import Item
from outerloop.errors import OuterloopError, UserInputError
from outerloop.inner_loop.serving.answer import STORAGE_ERRORS, RecommendedItem, RecommendedRow, recommendation_doc
from outerloop.tools.builtin import ItemMeta, catalog_index
from outerloop.tools.contracts import ToolDeps, ToolSpec, tool
from outerloop.tools.mcp.user_contracts import (
    ExplainIn,
    ExplainOut,
    HistoryEntry,
    HistoryIn,
    HistoryOut,
    ItemDetails,
    ItemIn,
    MemoryIn,
    MemoryOut,
    Placement,
    PlanStepOut,
    RecommendIn,
    RecommendOut,
    RefreshIn,
    RefreshOut,
    RunOut,
    SimilarIn,
    SimilarItem,
    SimilarOut,
    ToolEvidence,
    UnknownAgent,
    UnknownItem,
    UnknownUser,
    fact_out,
)

if TYPE_CHECKING:
    from outerloop.agents.cycle import CycleResult
    from outerloop.contracts.triggers import Trigger
    from outerloop.inner_loop.serving.funnel import Funnel
    from outerloop.inner_loop.serving.user_state import UserState
    from outerloop.tools.registry import ToolRegistry

log = logging.getLogger(__name__)


class RefreshLoop(Protocol):
    """What ``refresh_user`` needs from ``outerloop.agents.loop.OuterLoop``."""

    @property
    def agents(self) -> Iterable[Any]: ...  # AgentSpec: .name, .rows

    async def run_cycle(self, user_id: str, triggers: Sequence["Trigger"] = ()) -> "CycleResult": ...


@dataclass(slots=True)
class UserToolsContext:
    """What the user tools are bound to. ``evidence`` is the registry whose tools
    ``explain_recommendation`` re-runs (the agents' own registry); ``loop`` runs cycles for
    ``refresh_user`` (the tool reports an error when there is none)."""

    funnel: "Funnel"
    keys: type[Keys] = Keys
    evidence: "ToolRegistry | None" = None
    loop: RefreshLoop | None = None
    explain_depth: int = 200  # how deep explain looks into each tool's ranking


# --- helpers ----------------------------------------------------------------------------------


def _meta(it: Item) -> ItemMeta:
    return ItemMeta(
        item_id=it.item_id, title=it.title, genres=list(it.genres), year=it.year,
        runtime_min=it.runtime_min, kind=it.kind, series_id=it.series_id, season=it.season,
        episode=it.episode, release_ts=it.release_ts,
    )


def _item(deps: ToolDeps, item_id: int) -> Item:
    try:
        return deps.catalog.get(item_id)
    except KeyError:
        raise UnknownItem(f"item_id {item_id} is not in the catalog (1..{len(deps.catalog)})") from None


async def require_user(deps: ToolDeps, keys: type[Keys], user_id: str) -> None:
    """Raise :class:`UnknownUser` unless the user has any state (one round trip, one slot)."""
    found = await deps.redis.exists(keys.history_version(user_id), keys.applied_events(user_id),
                                    keys.memory(user_id), keys.rows(user_id))
    if not found:
        raise UnknownUser(f"unknown user_id {user_id!r}: no events, memory or rows for this user")


async def _read_state(ctx: UserToolsContext, deps: ToolDeps, user_id: str, max_len: int, *,
                      known: bool = True) -> "UserState":
    """The user's state, read as the API reads it; ``known``: refuse a user without any state."""
    from outerloop.inner_loop.serving.user_state import UserStore  # the inner loop's one reader

    if known:
        await require_user(deps, ctx.keys, user_id)
    store = UserStore(deps.redis, history_cap=max_len, keys=ctx.keys)
    return await store.read(user_id, max_len)


def _title(deps: ToolDeps, item_id: int) -> str:
    try:
        return deps.catalog.get(item_id).title
    except KeyError:  # an id from an older catalog, still in someone's history
        return f"(item {item_id}, not in this catalog)"


def _title_match(deps: ToolDeps, title: str) -> Item:
    """Exact (case-insensitive) title first, else the most popular title containing the text."""
    needle = title.strip().lower()
    items = deps.catalog.items
    exact = [it for it in items if it.title.lower() == needle]
    hits = exact or [it for it in items if needle in it.title.lower()]
    if not hits:
        raise UnknownItem(f"no catalog title contains {title!r}")
    pop = np.asarray(deps.artifacts.popularity)
    return max(hits, key=lambda it: (float(pop[it.item_id]), -it.item_id))


def _relevant_facts(facts: Iterable[Any], it: Item) -> list[Any]:
    genres = {g.lower() for g in it.genres}
    out = []
    for f in facts:
        if f.kind in ("genre_affinity", "genre_backoff") and f.genre.lower() in genres:
            out.append(f)
        elif f.kind == "continue_watching" and (f.series_id == it.series_id or f.next_item_id == it.item_id):
            out.append(f)
        elif f.kind == "runtime_preference" and it.runtime_min is not None:
            out.append(f)
    return out


def _short(args: dict[str, Any], keep: int = 5) -> dict[str, Any]:
    return {k: (v[-keep:] + ["..."] if isinstance(v, list) and len(v) > keep else v) for k, v in args.items()}


def _rank_in(items: Sequence[Any], item_id: int) -> tuple[int | None, float | None]:
    for pos, it in enumerate(items, start=1):
        if it.item_id == item_id:
            return pos, float(getattr(it, "score", 0.0))
    return None, None


async def _evidence(ctx: UserToolsContext, deps: ToolDeps, state: "UserState", it: Item) -> list[ToolEvidence]:
    """Re-run the tools the tool agent builds rows from, and report where the item lands."""
    reg = ctx.evidence
    if reg is None:
        return []
    recent = [int(i) for i in state.items.tolist()[-20:]]
    calls: list[tuple[str, dict[str, Any]]] = []
    if recent and "embed_history" in reg and "vector_search" in reg:
        calls.append(("vector_search", {}))  # the vector is filled in below
    if recent and "co_watch" in reg:
        calls.append(("co_watch", {"items": recent, "k": ctx.explain_depth}))
    if "trending" in reg:
        calls.append(("trending", {"k": ctx.explain_depth}))
    if it.series_id is not None and "next_episodes" in reg:
        watched = [i for i in recent if (w := catalog_index(deps).item(i)) is not None and w.series_id == it.series_id]
        calls.append(("next_episodes", {"series_id": it.series_id, "after_item_id": watched[-1] if watched else None,
                                        "k": 1}))
    out: list[ToolEvidence] = []
    for name, args in calls:
        shown = args
        try:
            if name == "vector_search":
                emb = await reg.call("embed_history", {"items": state.items.tolist(),
                                                       "actions": state.actions.tolist() or None,
                                                       "ts": state.ts.tolist() or None}, deps)
                args = {"vector": emb.vector, "k": ctx.explain_depth}  # type: ignore[attr-defined]
                shown = {"vector": f"embedding of the last {len(state.items)} history items", "k": ctx.explain_depth}
            res = await reg.call(name, args, deps)
        except OuterloopError as exc:  # one tool failing (e.g. a timeout) leaves the rest of the evidence
            out.append(ToolEvidence(tool=name, input=_short(shown), found=False, error=str(exc)))
            continue
        rank, score = _rank_in(res.items, it.item_id)  # type: ignore[attr-defined]
        out.append(ToolEvidence(tool=name, input=_short(shown), found=rank is not None, rank=rank, score=score))
    return out


def _stored_placements(state: "UserState", item_id: int, now_ms: int, n_items: int,
                       live_ids: set[str]) -> list[Placement]:
    """Placements in stored agent rows that the funnel did not serve (expired ones)."""
    from outerloop.contracts.rows import AgentRow, RowDecodeError, decode_row

    out = []
    for raw in state.rows.values():
        try:
            row = decode_row(raw)
        except RowDecodeError:  # nothing the funnel could have served either
            continue
        served = AgentRow.of(row, n_items)  # expired ones too: the reason the funnel left them out
        if served is None or row.row_id in live_ids:
            continue
        hits = np.flatnonzero(served.item_ids == item_id)
        if hits.size:
            j = int(hits[0])
            out.append(Placement(row_id=row.row_id, title=row.title, reason=row.reason, produced_by=row.produced_by,
                                 source="agent", run_id=row.run_id, rank=j + 1, score=float(served.scores[j]),
                                 origin="agent", live=row.is_fresh(now_ms)))
    return out


def _summary(it: Item, placements: list[Placement], facts: list[Any], evidence: list[ToolEvidence]) -> str:
    name = f"{it.title!r} (item {it.item_id})"
    if not placements:
        lead = f"{name} is not in any of the user's rows right now"
    else:
        parts = [f"#{p.rank} in {p.title!r} (produced by {p.produced_by}"
                 + (f", run {p.run_id}" if p.run_id else "") + f"; {p.reason})"
                 + ("" if p.live else " [expired]") for p in placements]
        lead = f"{name} is " + "; ".join(parts)
    found = [f"{e.tool} #{e.rank}" for e in evidence if e.found]
    tail = f" Tools that surface it now: {', '.join(found)}." if found else ""
    mem = f" Memory facts involved: {', '.join(sorted({f.key for f in facts}))}." if facts else ""
    return lead + "." + tail + mem


# --- the tools --------------------------------------------------------------------------------


def user_tools(ctx: UserToolsContext) -> list[ToolSpec]:
    """Fresh specs of the user-facing tools, bound to ``ctx``."""
    funnel = ctx.funnel
    max_history = funnel.config.max_history

    @tool(name="recommend", timeout_ms=500)
    async def recommend(args: RecommendIn, deps: ToolDeps) -> RecommendOut:
        """A user's recommendation rows, exactly as the service's API serves them now: the
        model's top picks (transformer + FAISS + ranker, seen items removed) merged with the rows
        the outer-loop agents compiled (continue watching, wind down, ...). A user with no
        history yet gets popular and explore rows with cold_start true; when storage is down the
        answer is popular items with degraded true. Use this to see or show what a user is
        recommended; each row says who produced it and why."""
        try:
            state = await _read_state(ctx, deps, args.user_id, max_history, known=False)
        except STORAGE_ERRORS:
            rec = funnel.degraded(args.k, "redis_unavailable")  # as the API: rows, never an error
        else:
            try:
                rec = funnel.recommend(state, args.k, now_ms=deps.clock_ms())
            except Exception as exc:  # noqa: BLE001 - as the API: a bug answers popular, not an error
                log.error("funnel failed for a recommend call; answering popular items", exc_info=exc)
                rec = funnel.degraded(args.k, "internal_error")
        return RecommendOut.model_validate(recommendation_doc(funnel, rec, args.user_id, rows=args.rows))

    @tool(name="search_similar_items", timeout_ms=200)
    async def search_similar_items(args: SimilarIn, deps: ToolDeps) -> SimilarOut:
        """Items most similar to one item, by the model's item embeddings (the same space the
        recommendations come from). Give an item_id, or a title (or part of one) when you do not
        know the id. Use this for "more like this" questions; it is not personalised."""
        it = _item(deps, args.item_id) if args.item_id is not None else _title_match(deps, args.title or "")
        q = np.asarray(deps.artifacts.item_vectors[it.item_id], dtype=np.float32)[None, :]  # (1, d)
        ids, scores = deps.artifacts.index.search(q, args.k + 1)  # (1, k+1), (1, k+1)
        out = []
        for i, s in zip(ids[0].tolist(), scores[0].tolist()):
            if i <= 0 or i == it.item_id or i > len(deps.catalog):
                continue
            other = deps.catalog.get(int(i))
            out.append(SimilarItem(item_id=int(i), title=other.title, genres=list(other.genres), year=other.year,
                                   score=round(float(s), 5)))
        return SimilarOut(query=_meta(it), items=out[: args.k])

    @tool(name="get_item", timeout_ms=50)
    async def get_item(args: ItemIn, deps: ToolDeps) -> ItemDetails:
        """Catalog facts about one item: title, genres, year, runtime, tags, popularity, and for
        episodes the series, season and episode number. Use it to describe an item id that
        another tool returned."""
        it = _item(deps, args.item_id)
        pop = float(np.asarray(deps.artifacts.popularity)[it.item_id])
        return ItemDetails(**_meta(it).model_dump(), source_id=it.source_id, tags=list(it.tags), popularity=pop)

    @tool(name="get_user_history", timeout_ms=200)
    async def get_user_history(args: HistoryIn, deps: ToolDeps) -> HistoryOut:
        """A user's most recent interactions (plays, finishes, skips, clicks, ...), newest first,
        with titles: the history the model reads to recommend. Use it to understand a user's
        taste before explaining or judging their recommendations."""
        state = await _read_state(ctx, deps, args.user_id, args.limit)
        entries = []
        for i, a, t in zip(state.items.tolist()[::-1], state.actions.tolist()[::-1], state.ts.tolist()[::-1]):
            action = EVENT_TYPES[a - 1] if 1 <= a <= len(EVENT_TYPES) else "unknown"
            entries.append(HistoryEntry(item_id=int(i), title=_title(deps, int(i)), action=action, ts=int(t)))
        return HistoryOut(user_id=args.user_id, history_version=state.version, seen_count=int(state.seen.shape[0]),
                          items=entries)

    @tool(name="get_user_memory", timeout_ms=200)
    async def get_user_memory(args: MemoryIn, deps: ToolDeps) -> MemoryOut:
        """The typed facts the outer-loop agents keep about a user: genre affinities and
        back-offs, preferred runtime by daypart, series in progress; each with its evidence,
        confidence and the agent that wrote it. Use it to see what the system believes about
        the user."""
        from outerloop.memory.store import MemoryStore

        await require_user(deps, ctx.keys, args.user_id)
        mem = await MemoryStore(deps.redis, keys=ctx.keys).load(args.user_id)
        facts = [fact_out(f) for f in mem if args.kinds is None or f.kind in args.kinds]
        return MemoryOut(user_id=args.user_id, version=mem.version, facts=facts)

    @tool(name="explain_recommendation", timeout_ms=1000)
    async def explain_recommendation(args: ExplainIn, deps: ToolDeps) -> ExplainOut:
        """Why an item is (or is not) recommended to a user: the rows it appears in and where,
        which agent and run produced each row and the reason it gave, the memory facts about the
        item's genres, series or runtime, and where the item ranks in the outputs of the tools
        the agents build rows from (vector search on the user's taste, co-watch, trending, next
        episodes), recomputed now. Use it to answer "why am I seeing this?"."""
        it = _item(deps, args.item_id)
        state = await _read_state(ctx, deps, args.user_id, max_history, known=False)  # a new user: cold-start rows
        now = deps.clock_ms()
        rec = funnel.recommend(state, ctx.explain_depth, now_ms=now)
        placements = []
        for r in RecommendOut.model_validate(recommendation_doc(funnel, rec, args.user_id)).rows:
            for pos, ri in enumerate(r.items, start=1):
                if ri.item_id == it.item_id:
                    placements.append(Placement(row_id=r.row_id, title=r.title, reason=r.reason,
                                                produced_by=r.produced_by, source=r.source, run_id=r.run_id,
                                                rank=pos, score=ri.score, origin=ri.origin, live=True))
        placements += _stored_placements(state, it.item_id, now, len(deps.catalog), {r.row_id for r in rec.rows})
        from outerloop.memory.store import MemoryStore

        mem = await MemoryStore(deps.redis, keys=ctx.keys).load(args.user_id)
        facts = _relevant_facts(mem, it)
        evidence = await _evidence(ctx, deps, state, it)
        return ExplainOut(user_id=args.user_id, item=_meta(it), summary=_summary(it, placements, facts, evidence),
                          placements=placements, facts=facts, tool_evidence=evidence)

    @tool(name="refresh_user", timeout_ms=15_000)
    async def refresh_user(args: RefreshIn, deps: ToolDeps) -> RefreshOut:
        """Run an outer-loop cycle for a user now: the planner picks agents, each runs under its
        latency and tool-call budget (an agent that overruns is killed and writes nothing), and
        finished runs commit fresh rows. Returns the plan, every run's outcome and the rows
        committed. Use it after the user's situation changed, or to refresh stale rows; it
        writes to the live service, so do not call it in a loop."""
        if ctx.loop is None:
            raise UserInputError("refresh_user is not available: this server runs without an outer loop")
        from outerloop.contracts.triggers import Trigger

        producers = [a.name for a in ctx.loop.agents if a.rows]
        known = {a.name for a in ctx.loop.agents}
        wanted = producers if args.agents is None else list(dict.fromkeys(args.agents))
        unknown = [a for a in wanted if a not in known]
        if unknown:
            raise UnknownAgent(f"unknown agent(s) {unknown}; this outer loop has {sorted(known)}")
        await require_user(deps, ctx.keys, args.user_id)
        result = await ctx.loop.run_cycle(args.user_id, [Trigger.sweep(at_ms=deps.clock_ms()),
                                                          Trigger.manual(*wanted, at_ms=deps.clock_ms(),
                                                                         **args.detail)])
        return refresh_out(deps, result)

    return [recommend, search_similar_items, get_item, get_user_history, get_user_memory,
            explain_recommendation, refresh_user]


def refresh_out(deps: ToolDeps, result: "CycleResult") -> RefreshOut:
    """A cycle's result as the ``refresh_user`` output."""
    rows = [RecommendedRow(row_id=r.row_id, title=r.title, reason=r.reason, produced_by=r.produced_by, source="agent",
                   run_id=r.run_id, expires_at=r.expires_at,
                   items=[RecommendedItem(item_id=i, title=_title(deps, i), score=s, origin="agent") for i, s in r.items])
            for r in result.rows_committed.values()]
    runs = [RunOut(agent=r.agent, outcome=r.outcome, elapsed_ms=round(r.elapsed_ms, 3), budget_ms=r.budget_ms,
                   overrun_ms=round(r.overrun_ms, 3), tool_calls=r.tool_calls, error=r.error) for r in result.records]
    plan = [PlanStepOut(agent=s.agent, rows=list(s.rows), reason=s.reason) for s in result.plan.steps]
    return RefreshOut(user_id=result.user_id, elapsed_ms=round(result.elapsed_ms, 3), plan=plan, runs=runs,
                      rows_committed=rows, notes=list(result.notes))


READ_ONLY_TOOLS: frozenset[str] = frozenset({
    "recommend", "search_similar_items", "get_item", "get_user_history", "get_user_memory",
    "explain_recommendation",
})
"""User tools that change nothing (``refresh_user`` writes rows and memory)."""

