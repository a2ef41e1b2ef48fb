"""The evaluator: joins feedback to what was served, scores each row, flags drift.

Join: a feedback event carries the ``request_id`` of the response that showed the item; the
serving layer stored that response (``served_key(user, request_id)``: rows with their items).
The event is attributed to the first row of that response holding the item. Every slot of a
response that any feedback event names counts as an impression, so clients should post an
``impression`` event for each response they display: a response nobody clicked is the
strongest negative signal there is, and without an event naming it the evaluator cannot see it.

Per row (counted once per (request, item) slot):

- ``ctr`` = engaged slots (click, play, add to list, rate, finish) / impressions (slots served);
- ``skip_rate`` = skipped slots / impressions;
- ``completion_rate`` = finished slots / started slots (play or finish).

Drift: each row has a baseline (its long-run CTR over every user, a global Redis hash) and a
per-user window. A row drifts for a user when the window's CTR is significantly below the
baseline: one-sided z-test of a proportion, ``z = (p - p0) / sqrt(p0 (1 - p0) / n) <= -z_crit``
with enough impressions (and a practically relevant relative drop). Noise (few impressions, a
small dip) does not flag. A flag becomes a ``drift`` trigger for the planner, and the window
restarts so one bad stretch flags once.

Memory: genres the user kept skipping in served rows lose affinity; genres finished gain.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from outerloop.agents.planner import EVALUATOR
from outerloop.agents.sdk import AgentContext, agent
from outerloop.contracts.budget import Budget
from outerloop.contracts.events import Event
from outerloop.contracts.keys import Keys, baseline_key, served_key, window_key
from outerloop.contracts.triggers import Trigger
from outerloop.memory.facts import GenreAffinity
from outerloop.memory.store import MemoryChanges, UserMemory

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from outerloop.agents.sdk import RunStore

ENGAGED = frozenset({"click", "play", "add_to_list", "rate", "finish"})
STARTED = frozenset({"play", "finish"})


@dataclass(slots=True)
class RowStats:
    """Counts for one row; rates derived."""

    impressions: float = 0.0
    engaged: float = 0.0
    skipped: float = 0.0
    started: float = 0.0
    finished: float = 0.0

    @property
    def ctr(self) -> float:
        return self.engaged / self.impressions if self.impressions else 0.0

    @property
    def skip_rate(self) -> float:
        return self.skipped / self.impressions if self.impressions else 0.0

    @property
    def completion_rate(self) -> float:
        return self.finished / self.started if self.started else 0.0

    def add(self, other: "RowStats", weight: float = 1.0) -> None:
        self.impressions += weight * other.impressions
        self.engaged += weight * other.engaged
        self.skipped += weight * other.skipped
        self.started += weight * other.started
        self.finished += weight * other.finished

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> "RowStats":
        if not raw:
            return cls()
        return cls(**{k: float(v) for k, v in json.loads(raw).items() if k in cls.__dataclass_fields__})

    def summary(self) -> dict[str, float]:
        return {"impressions": self.impressions, "ctr": round(self.ctr, 4),
                "skip_rate": round(self.skip_rate, 4), "completion_rate": round(self.completion_rate, 4)}


@dataclass(frozen=True, slots=True)
class Slot:
    request_id: str
    row_id: str
    item_id: int


def join_feedback(served: dict[str, dict[str, Any]], feedback: Iterable[Event]) -> dict[Slot, set[str]]:
    """(request, row, item) -> event types observed; events whose request or item is unknown
    are dropped (feedback on something we cannot attribute)."""
    where: dict[tuple[str, int], str] = {}
    for rid, rec in served.items():
        for row in rec.get("rows", []):
            for entry in row.get("items", []):
                where.setdefault((rid, int(entry[0])), str(row.get("row_id")))
    out: dict[Slot, set[str]] = defaultdict(set)
    for e in feedback:
        if e.request_id is None or e.item_id is None:
            continue
        row_id = where.get((e.request_id, e.item_id))
        if row_id is not None:
            out[Slot(e.request_id, row_id, e.item_id)].add(e.type)
    return out


def row_stats(served: dict[str, dict[str, Any]], joined: dict[Slot, set[str]]) -> dict[str, RowStats]:
    """Per-row counts: every served slot is an impression; each slot counts once per outcome."""
    stats: dict[str, RowStats] = defaultdict(RowStats)
    for rec in served.values():
        for row in rec.get("rows", []):
            stats[str(row.get("row_id"))].impressions += len(row.get("items", []))
    for slot, types in joined.items():
        s = stats[slot.row_id]
        s.engaged += bool(types & ENGAGED)
        s.skipped += "skip" in types
        s.started += bool(types & STARTED)
        s.finished += "finish" in types
    return dict(stats)


@dataclass(frozen=True, slots=True)
class DriftTest:
    flagged: bool
    z: float
    ctr: float
    baseline: float
    n: float


def drift_test(window: RowStats, baseline: RowStats, *, z_crit: float = 3.0, min_impressions: float = 50,
               min_baseline_impressions: float = 200, min_relative_drop: float = 0.25) -> DriftTest:
    """One-sided z-test: is the window's CTR significantly below the baseline CTR?"""
    n, p0, p = window.impressions, baseline.ctr, window.ctr
    if n < min_impressions or baseline.impressions < min_baseline_impressions or not 0 < p0 < 1:
        return DriftTest(False, 0.0, p, p0, n)
    z = (p - p0) / math.sqrt(p0 * (1 - p0) / n)
    flagged = z <= -z_crit and p <= (1 - min_relative_drop) * p0
    return DriftTest(flagged, z, p, p0, n)


@dataclass(slots=True)
class EvaluationReport:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    drift: dict[str, DriftTest] = field(default_factory=dict)
    joined_slots: int = 0
    unattributed_events: int = 0


async def load_served(redis: "Redis | RunStore", user_id: str, request_ids: Sequence[str],
                      keys: type[Keys]) -> dict[str, dict[str, Any]]:
    if not request_ids:
        return {}
    raws = await redis.mget([served_key(user_id, r, keys) for r in request_ids])
    out: dict[str, dict[str, Any]] = {}
    for rid, raw in zip(request_ids, raws):
        if raw:
            try:
                out[rid] = json.loads(raw)
            except ValueError:
                continue
    return out


async def read_baselines(store: "RunStore", keys: type[Keys], row_ids: Sequence[str]) -> dict[str, RowStats]:
    out = {}
    for r, raw in zip(row_ids, await store.hgetall_many([baseline_key(keys, r) for r in row_ids])):
        out[r] = RowStats(**{k.decode(): float(v) for k, v in raw.items() if k.decode() in RowStats.__dataclass_fields__})
    return out


def genre_signal(joined: dict[Slot, set[str]], catalog: Any) -> dict[str, float]:
    """Net signal per genre from attributed feedback: finished +1, skipped -1."""
    sig: dict[str, float] = defaultdict(float)
    for slot, types in joined.items():
        try:
            genres = catalog.get(slot.item_id).genres
        except KeyError:
            continue
        delta = ("finish" in types) - ("skip" in types)
        for g in genres:
            sig[g] += delta
    return {g: v for g, v in sig.items() if v}


@agent(name=EVALUATOR, budget=Budget(latency_ms=80, max_tool_calls=0, max_llm_tokens=0),
       memory_scopes=["genre_affinity"], rows=(), triggers=())
async def evaluator(ctx: AgentContext) -> EvaluationReport:
    """Joins feedback to what was served (by request_id), computes per-row CTR, skip and
    completion rates, nudges genre affinity, and flags rows whose CTR drifted below baseline."""
    feedback = [e for t in ctx.triggers for e in t.events if e.request_id is not None]
    keys, store = ctx.keys, ctx.store
    served = await load_served(store, ctx.user_id, list(dict.fromkeys(e.request_id for e in feedback)), keys)  # type: ignore[misc]
    joined = join_feedback(served, feedback)
    stats = row_stats(served, joined)
    attributed = {(s.request_id, s.item_id) for s in joined}
    report = EvaluationReport(joined_slots=len(joined), unattributed_events=sum(
        1 for e in feedback if (e.request_id, e.item_id) not in attributed))
    if not stats:
        return report
    row_ids = sorted(stats)
    windows_raw = await store.hmget(window_key(ctx.user_id, keys), row_ids)
    baselines = await read_baselines(store, keys, row_ids)
    for row_id in row_ids:
        s = stats[row_id]
        report.rows[row_id] = s.summary()
        window = RowStats.from_json(windows_raw[row_ids.index(row_id)])
        window.add(s)
        test = drift_test(window, baselines[row_id])
        report.drift[row_id] = test
        if test.flagged and ctx.row_owner(row_id) is not None:
            ctx.raise_trigger(Trigger.drift(row_id, at_ms=ctx.now_ms, z=round(test.z, 2),
                                            ctr=round(test.ctr, 4), baseline=round(test.baseline, 4)))
            window = RowStats()  # one bad stretch flags once
        elif window.impressions > 1000:
            window = RowStats()
            window.add(RowStats.from_json(windows_raw[row_ids.index(row_id)]), 0.5)
            window.add(s)
        store.hset(window_key(ctx.user_id, keys), row_id, window.to_json())
        base = baseline_key(keys, row_id)
        for name in RowStats.__dataclass_fields__:
            v = getattr(s, name)
            if v:  # counters over every user, committed with the run's other writes or not at all
                store.hincrbyfloat(base, name, v, shared=True)

    signal = genre_signal(joined, ctx.catalog)
    if signal:
        def nudge(mem: UserMemory) -> MemoryChanges:
            up = []
            for g, v in signal.items():
                old = mem.get(f"genre_affinity:{g.lower()}")
                score = (old.score if isinstance(old, GenreAffinity) else 0.0) + 0.05 * max(-3.0, min(3.0, v))
                up.append(GenreAffinity(genre=g, score=round(score, 3), source=EVALUATOR, confidence=0.5,
                                        evidence=f"served-row feedback: net {v:+.0f}"))
            return MemoryChanges(upsert=tuple(up))

        ctx.update_memory(nudge)
    return report
