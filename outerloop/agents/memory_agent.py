"""The memory agent: turns a user's recent interactions into typed facts.

Facts derived (each with its evidence and a confidence):

- ``GenreBackoff``: the last three (or more) outcomes among titles of a genre were skips
  ("dropped three crime dramas in a row"); cleared when a title of that genre is finished again
  or the back-off runs out.
- ``GenreAffinity``: net engagement per genre (finishes and plays minus skips), blended with
  the previous value so other writers' adjustments (the evaluator's) fade rather than vanish.
- ``RuntimePreference``: median runtime of titles finished in a daypart (local time).
- ``ContinueWatching``: the next released, unwatched episode after the last one finished.

Derivation is a pure function of (interactions, catalog, memory), so the commit can re-decide:
when another writer committed first, the run's commit finds the version moved and calls
:func:`decide` again on the memory it found. The agent itself is never re-run.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from outerloop.agents.planner import MEMORY_AGENT
from outerloop.agents.runtime import History
from outerloop.agents.sdk import AgentContext, MemoryCommit, agent
from outerloop.contracts.budget import Budget
from outerloop.contracts.events import EVENT_TYPES
from outerloop.contracts.triggers import Trigger
from outerloop.memory.facts import ContinueWatching, GenreAffinity, GenreBackoff, RuntimePreference
from outerloop.memory.store import MemoryChanges, UserMemory
from outerloop.tools.builtin import CatalogIndex

BACKOFF_STREAK = 3
BACKOFF_DAYS = 14
AFFINITY_KEEP = 6  # strongest genres kept (each sign)
MIN_RUNTIME_SAMPLES = 3
_ACTION_NAME = {i + 1: name for i, name in enumerate(EVENT_TYPES)}


@dataclass(frozen=True, slots=True)
class Interaction:
    item_id: int
    type: str
    ts: int
    event_id: str | None = None


def timeline(history: History, triggers: Sequence[Trigger]) -> list[Interaction]:
    """History tokens and trigger events merged, deduplicated, in time order. A trigger event
    already in the history (the API applied it before the daemon saw it) lends the token its
    ``event_id``, so facts can cite the events as evidence."""
    at: dict[tuple[int, str, int], int] = {}  # (item, type, ts) -> index in out
    out: list[Interaction] = []
    for item, action, ts in zip(history.items.tolist(), history.actions.tolist(), history.ts.tolist()):
        kind = _ACTION_NAME.get(int(action), "play")
        at[(int(item), kind, int(ts))] = len(out)
        out.append(Interaction(int(item), kind, int(ts)))
    for t in triggers:
        for e in t.events:
            if e.item_id is None or e.type in ("impression", "search", "episode_release"):
                continue
            k = (e.item_id, e.type, e.ts)
            i = at.get(k)
            if i is None:
                at[k] = len(out)
                out.append(Interaction(e.item_id, e.type, e.ts, e.event_id))
            elif out[i].event_id is None:
                out[i] = Interaction(e.item_id, e.type, e.ts, e.event_id)
    out.sort(key=lambda x: x.ts)
    return out


def daypart(ts_ms: int, tz_offset_min: int) -> str:
    local = datetime.fromtimestamp(ts_ms / 1000, tz=UTC) + timedelta(minutes=tz_offset_min)
    h = local.hour
    part = "morning" if 5 <= h < 12 else "daytime" if 12 <= h < 17 else "evening" if 17 <= h < 22 else "night"
    return f"{'weekend' if local.weekday() >= 5 else 'weekday'}_{part}"


@dataclass(slots=True)
class Derived:
    """What the interactions say, before comparing with memory."""

    upsert: dict[str, Any]
    clear: set[str]


def derive(events: Sequence[Interaction], idx: CatalogIndex, now_ms: int, tz_offset_min: int,
           source: str = MEMORY_AGENT) -> Derived:
    up: dict[str, Any] = {}
    clear: set[str] = set()
    outcomes: dict[str, list[Interaction]] = defaultdict(list)  # genre -> finish/skip in order
    pos: dict[str, float] = defaultdict(float)
    neg: dict[str, float] = defaultdict(float)
    n_g: dict[str, int] = defaultdict(int)
    runtimes: dict[str, list[int]] = defaultdict(list)
    last_finished: dict[str, Interaction] = {}
    finished_items: set[int] = set()
    for ev in events:
        it = idx.item(ev.item_id)
        if it is None:
            continue
        for g in it.genres:
            if ev.type in ("finish", "skip"):
                outcomes[g].append(ev)
            n_g[g] += 1
            if ev.type == "skip":
                neg[g] += 1.0
            elif ev.type == "finish":
                pos[g] += 1.0
            elif ev.type in ("play", "add_to_list", "rate", "click"):
                pos[g] += 0.3
        if ev.type == "finish":
            finished_items.add(ev.item_id)
            if it.runtime_min:
                runtimes[daypart(ev.ts, tz_offset_min)].append(it.runtime_min)
            if it.series_id is not None:
                last_finished[it.series_id] = ev

    until = datetime.fromtimestamp(now_ms / 1000, tz=UTC) + timedelta(days=BACKOFF_DAYS)
    for g, seq in outcomes.items():
        streak = 0
        for ev in reversed(seq):
            if ev.type != "skip":
                break
            streak += 1
        key = f"genre_backoff:{g.lower()}"
        if streak >= BACKOFF_STREAK:
            run = seq[-streak:]
            evidence: Any = [e.event_id for e in run if e.event_id] if all(e.event_id for e in run) else (
                f"skipped {streak} {g} titles in a row: items {', '.join(str(e.item_id) for e in run)}")
            up[key] = GenreBackoff(genre=g, until=until, evidence=evidence, source=source,
                                   confidence=min(1.0, 0.5 + 0.15 * streak))
        elif seq and seq[-1].type == "finish":
            clear.add(key)

    total_pos = sum(pos.values()) or 1.0
    scores = {g: (pos[g] - neg[g]) / total_pos for g in n_g}
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    keep = ranked[:AFFINITY_KEEP] + [kv for kv in ranked[AFFINITY_KEEP:] if kv[1] < 0][-AFFINITY_KEEP:]
    for g, s in keep:
        if abs(s) < 0.02:
            continue
        up[f"genre_affinity:{g.lower()}"] = GenreAffinity(
            genre=g, score=round(s, 3), source=source, confidence=round(min(1.0, n_g[g] / 10), 2),
            evidence=f"{n_g[g]} interactions: +{pos[g]:.1f} / -{neg[g]:.0f}")

    for part, mins in runtimes.items():
        if len(mins) >= MIN_RUNTIME_SAMPLES:
            up[f"runtime_preference:{part}"] = RuntimePreference(
                daypart=part, minutes=int(statistics.median(mins)), source=source,  # type: ignore[arg-type]
                confidence=round(min(1.0, len(mins) / 10), 2), evidence=f"{len(mins)} titles finished")

    for series, ev in last_finished.items():
        key = f"continue_watching:{series}"
        nxt = [i for i in idx.next_episodes(series, ev.item_id, 3) if i not in finished_items]
        item = idx.item(nxt[0]) if nxt else None
        if item is None or (item.release_ts is not None and item.release_ts > now_ms):
            clear.add(key)
            continue
        up[key] = ContinueWatching(
            series_id=series, next_item_id=item.item_id, next_episode=item.episode or 1, source=source,
            confidence=0.9, evidence=[ev.event_id] if ev.event_id else f"finished item {ev.item_id}")
    return Derived(up, clear)


def _content(fact: Any) -> dict[str, Any]:
    return fact.model_dump(exclude={"version", "evidence", "confidence", "source", "until"})


def decide(mem: UserMemory, derived: Derived, now_ms: int) -> MemoryChanges:
    """The delta that brings ``mem`` in line with ``derived`` (pure: re-run on conflicts)."""
    upsert: list[Any] = []
    for key, fact in derived.upsert.items():
        old = mem.get(key)
        if isinstance(fact, GenreAffinity) and isinstance(old, GenreAffinity):
            fact = fact.model_copy(update={"score": round(0.5 * old.score + 0.5 * fact.score, 3)})
        if old is None or _content(old) != _content(fact):
            upsert.append(fact)
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    delete = {k for k in derived.clear if k in mem.facts and k not in derived.upsert}
    delete |= {f.key for f in mem.of_kind(GenreBackoff) if f.until <= now and f.key not in derived.upsert}
    return MemoryChanges(upsert=tuple(upsert), delete=tuple(sorted(delete)))


@dataclass(slots=True)
class MemoryReport:
    """What the memory agent decided; ``version``, ``attempts`` and ``changed`` are filled in
    when the run's commit wrote the decision (they stay at the snapshot's values otherwise)."""

    attempts: int
    version: int
    changed: bool
    upserts: tuple[str, ...]
    deletes: tuple[str, ...]


@agent(name=MEMORY_AGENT, budget=Budget(latency_ms=80, max_tool_calls=0, max_llm_tokens=0),
       memory_scopes=["*"], rows=(), triggers=())
async def memory_agent(ctx: AgentContext) -> MemoryReport:
    """Maintains typed facts about the user (genre affinity and back-off, runtime by daypart,
    continue-watching) from the recent interactions."""
    tz = next((t.tz_offset_min for t in ctx.triggers if t.tz_offset_min), 0)
    derived = derive(timeline(ctx.history, ctx.triggers), ctx.catalog_index(), ctx.now_ms, tz)
    # Decided first on the memory the cycle already read (no extra read); staged, and written
    # with the run's commit compare-and-set on its version: if another writer moved it, the
    # commit decides again on the memory it found.
    before = ctx.scope.memory
    ch = decide(before, derived, ctx.now_ms)
    report = MemoryReport(1, before.version, False, tuple(f.key for f in ch.upsert), ch.delete)
    if not ch:
        return report

    def committed(done: MemoryCommit) -> None:
        report.attempts, report.version, report.changed = done.attempts, done.after.version, True
        report.upserts, report.deletes = tuple(f.key for f in done.changes.upsert), done.changes.delete
        _raise_new_backoffs(ctx, done.before, done.changes)

    ctx.update_memory(lambda mem: decide(mem, derived, ctx.now_ms), on_commit=committed)
    return report


def _raise_new_backoffs(ctx: AgentContext, before: UserMemory, ch: MemoryChanges) -> None:
    """A genre backed off just now: ask the planner (this cycle) to refresh the user's other
    rows, which were built before the back-off and may still hold that genre."""
    new = sorted(f.genre for f in ch.upsert if isinstance(f, GenreBackoff) and before.get(f.key) is None)
    if new:
        ctx.raise_trigger(Trigger(kind="backoff", at_ms=ctx.now_ms, detail={"genres": ",".join(new)}))


def facts_of(events: Iterable[Interaction], idx: CatalogIndex, now_ms: int, tz_offset_min: int = 0) -> dict[str, Any]:
    """Convenience for tests and notebooks: the facts a history implies, by key."""
    return derive(list(events), idx, now_ms, tz_offset_min).upsert
