"""The tool agent: builds rows from tool calls, one recipe per row.

- ``continue_watching``: the next episode of each series the user is in the middle of (the
  plan's series first: just finished, or just released), from ``next_episodes``; an ordered
  row (the inner loop serves it in this order instead of re-ranking it);
- ``wind_down``: the user's taste, minus thrillers and horror, calmer genres first, shorter
  runtimes (the user's night-time runtime preference when memory has one);
- ``top_picks``: the user's taste (vector search, shared per cluster and re-scored with the
  user's own vector) blended with co-watch neighbours of the last titles and what is trending;
  with ``explore=1`` (after a drift flag) co-watch and trending weigh more and genres are
  spread, so a row that stopped working changes character instead of repeating itself.

Every row leaves out seen items and genres the user is backing off from. Every tool call goes
through the registry, so it counts against this run's ``max_tool_calls`` and has a timeout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from outerloop.agents.planner import ROW_CONTINUE, ROW_TOP_PICKS, ROW_WIND_DOWN, TOOL_AGENT
from outerloop.agents.sdk import AgentContext, agent
from outerloop.contracts.budget import Budget
from outerloop.contracts.triggers import DARK_GENRES
from outerloop.memory.facts import ContinueWatching, GenreBackoff, RuntimePreference

CALM_GENRES = frozenset({"comedy", "animation", "family", "documentary", "romance", "children's", "musical"})
WIND_DOWN_DEFAULT_MAX_MIN = 100


@dataclass(slots=True)
class ScoreBlend:
    """Scores from several sources, blended into one ranking."""

    scores: dict[int, float] = field(default_factory=dict)

    def add(self, pairs: list[tuple[int, float]], weight: float) -> None:
        if not pairs or weight == 0:
            return
        vals = np.array([s for _, s in pairs], dtype=np.float64)
        lo, hi = float(vals.min()), float(vals.max())
        span = (hi - lo) or 1.0
        for (i, s) in pairs:  # min-max to [0, 1]: sources on different scales blend fairly
            self.scores[i] = self.scores.get(i, 0.0) + weight * (s - lo) / span

    def ranked(self) -> list[tuple[int, float]]:
        return sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))


async def taste_pool(ctx: AgentContext, k: int) -> list[tuple[int, float]]:
    """Top-``k`` unseen items for the user's vector: a pool for the user's cluster (shared,
    cached), re-scored with the user's own vector. Empty for a user without history."""
    vec = await ctx.user_vector()
    if vec is None:
        return []
    cluster = ctx.cluster(vec)
    if cluster is None:  # nobody to share with: the user's own search, uncached
        out = await ctx.call_tool("vector_search", {"vector": vec.tolist(), "k": k})
    else:
        key, rep = cluster
        pool_k = max(k, ctx.config.retrieval_pool)
        out = await ctx.call_tool("vector_search", {"vector": rep.tolist(), "k": pool_k}, share_key=key)
    seen = ctx.seen
    ids = np.array([it.item_id for it in out.items if it.item_id not in seen], dtype=np.int64)  # (P,)
    if ids.size == 0:
        return []
    personal = ctx.artifacts.item_vectors[ids] @ vec  # (P,) the user's own scores
    order = np.argsort(-personal, kind="stable")[:k]
    return [(int(ids[j]), float(personal[j])) for j in order]


async def _genres(ctx: AgentContext, ids: list[int]) -> dict[int, tuple[list[str], int | None, str]]:
    if not ids:
        return {}
    meta = await ctx.call_tool("item_metadata", {"item_ids": ids[:1000]})
    return {m.item_id: (m.genres, m.runtime_min, m.kind) for m in meta.items}


def _backoff(ctx: AgentContext) -> set[str]:
    return {f.genre.lower() for f in ctx.memory(GenreBackoff) if f.until.timestamp() * 1000 > ctx.now_ms}


async def continue_watching(ctx: AgentContext) -> list[tuple[int, float]]:
    """For each series (the plan's first: just finished, or just released; then those memory
    says the user is in the middle of), the first released episode the user has not seen after
    the last one they watched. Series of a genre the user is backing off from are left out."""
    p = ctx.params
    avoid = _backoff(ctx)
    facts = {f.series_id: f for f in ctx.memory(ContinueWatching)}
    series = list(dict.fromkeys([*p.get("series", []), *sorted(facts, key=lambda s: -facts[s].version)]))[:8]
    last_watched: dict[str, int] = {}
    for i in ctx.history.items.tolist():  # oldest first: the last one wins
        it = ctx.catalog.get(int(i))
        if it.series_id is not None:
            last_watched[it.series_id] = int(i)
    for i in p.get("after_items", []):
        last_watched[ctx.catalog.get(i).series_id] = i
    out: list[int] = []
    for s in series:
        probe = last_watched.get(s) or (facts[s].next_item_id if s in facts else None)
        if probe is not None and avoid & {g.lower() for g in ctx.catalog.get(probe).genres}:
            continue
        if s not in last_watched:
            if s in facts and facts[s].next_item_id not in ctx.seen:
                out.append(facts[s].next_item_id)
            continue
        nxt = await ctx.call_tool("next_episodes", {"series_id": s, "after_item_id": last_watched[s], "k": 5})
        for m in nxt.items:
            if m.item_id not in ctx.seen and (m.release_ts is None or m.release_ts <= ctx.now_ms):
                out.append(m.item_id)
                break
    out = list(dict.fromkeys(out))
    return [(i, 1.0 - 0.01 * r) for r, i in enumerate(out)]


async def wind_down(ctx: AgentContext) -> list[tuple[int, float]]:
    """The user's taste without thrillers, horror or backed-off genres, no longer than their
    night-time runtime preference (100 min without one), calm genres and short titles first."""
    n = ctx.config.row_len
    pool = await taste_pool(ctx, 4 * n)
    meta = await _genres(ctx, [i for i, _ in pool])
    prefs = [f.minutes for f in ctx.memory(RuntimePreference) if f.daypart.endswith("_night")]
    max_min = max(prefs) if prefs else WIND_DOWN_DEFAULT_MAX_MIN
    avoid = DARK_GENRES | _backoff(ctx)
    cands = ScoreBlend()
    cands.add(pool, 1.0)
    for i in list(cands.scores):
        genres, runtime, _ = meta.get(i, ([], None, "film"))
        g = {x.lower() for x in genres}
        if i in ctx.seen or g & avoid or (runtime is not None and runtime > max_min):
            del cands.scores[i]
            continue
        cands.scores[i] += 0.3 * bool(g & CALM_GENRES) + 0.1 * (1 - min(runtime or max_min, max_min) / max_min)
    return cands.ranked()[:n]


async def top_picks(ctx: AgentContext) -> list[tuple[int, float]]:
    """Taste (shared pool re-scored) + co-watch of the last five titles + trending, unseen and
    without backed-off genres; ``explore`` (after drift) leans on co-watch and trending and
    caps any one genre at an eighth of the row."""
    n = ctx.config.row_len
    explore = bool(ctx.params.get("explore"))
    cands = ScoreBlend()
    pool = await taste_pool(ctx, 2 * n)
    cands.add(pool, 1.0)
    recent = list(dict.fromkeys(reversed(ctx.history.items.tolist())))[:5]
    if recent:
        co = await ctx.call_tool("co_watch", {"items": recent, "k": n})
        cands.add([(it.item_id, it.score) for it in co.items], 0.6 if explore else 0.3)
    trend = await ctx.call_tool("trending", {"k": n})
    cands.add([(it.item_id, it.score) for it in trend.items], 0.4 if explore else 0.1 if pool else 1.0)
    ranked = [(i, s) for i, s in cands.ranked() if i not in ctx.seen][: 2 * n]
    meta = await _genres(ctx, [i for i, _ in ranked])
    avoid = _backoff(ctx)
    out: list[tuple[int, float]] = []
    per_genre: Counter[str] = Counter()
    for i, s in ranked:
        genres = [g.lower() for g in meta.get(i, ([], None, ""))[0]]
        if set(genres) & avoid:
            continue
        if explore and genres and per_genre[genres[0]] >= max(2, n // 8):
            continue  # spread genres when exploring
        per_genre[genres[0] if genres else ""] += 1
        out.append((i, s))
        if len(out) == n:
            break
    return out


Recipe = Callable[[AgentContext], Awaitable[list[tuple[int, float]]]]
RECIPES: dict[str, tuple[str, Recipe]] = {
    ROW_CONTINUE: ("Continue watching", continue_watching),
    ROW_WIND_DOWN: ("Wind down", wind_down),
    ROW_TOP_PICKS: ("Picked from your viewing and what's trending", top_picks),  # not the funnel's "Top picks for you"
}
ORDERED_ROWS = frozenset({ROW_CONTINUE})  # their order means something (the series just finished or released first)


@agent(name=TOOL_AGENT, budget=Budget(latency_ms=150, max_tool_calls=12, max_llm_tokens=0),
       tools=["*"], memory_scopes=["genre_backoff", "continue_watching", "runtime_preference", "genre_affinity"],
       rows=tuple(RECIPES), triggers=())
async def tool_agent(ctx: AgentContext) -> dict[str, int]:
    """Builds the built-in rows (continue watching, wind down, top picks) from tool calls:
    vector search, co-watch neighbours, item metadata, the history embedding, trending."""
    sizes: dict[str, int] = {}
    for row_id in ctx.step.rows:
        title, recipe = RECIPES[row_id]
        items = await recipe(ctx)
        sizes[row_id] = len(items)
        if items:  # an empty recipe keeps the last good row rather than blanking it
            ctx.emit_row(row_id, title=title, reason=ctx.step.reason, items=items, ordered=row_id in ORDERED_ROWS)
    return sizes
