"""A custom tool and a custom agent, plugged into the outer loop: a "New this week" row.

The tool lists titles released in a time window (a typed function: pydantic in, pydantic out,
its docstring is its description). The agent asks the tool, orders the new titles by the user's
taste (the model's embedding of their history against the item vectors), leaves out what they
have seen and genres they are backing off from, and emits one row. The planner runs it on every
closed session and on sweeps when the row is stale; its budget is 80 ms and 4 tool calls, and a
run over either commits nothing.

Run it against trained artifacts (``outerloop train --dataset synthetic --out artifacts/demo``)::

    python examples/new_this_week.py --artifacts artifacts/demo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from outerloop import AgentContext, Artifacts, Budget, Event, GenreBackoff, OuterLoop, ToolDeps, Trigger, agent, tool

DAY_MS = 86_400_000


class ReleasesIn(BaseModel):
    since_ms: int = Field(ge=0, description="window start, ms since the epoch (inclusive)")
    until_ms: int = Field(ge=0, description="window end, ms since the epoch (inclusive)")
    limit: int = Field(default=500, ge=1, le=5000)


class Release(BaseModel):
    item_id: int
    release_ts: int
    genres: list[str]


class ReleasesOut(BaseModel):
    items: list[Release] = Field(default_factory=list)


@tool(name="new_releases", timeout_ms=30, share="global", cache_ttl_ms=60_000)
async def new_releases(args: ReleasesIn, deps: ToolDeps) -> ReleasesOut:
    """Titles released between ``since_ms`` and ``until_ms`` (catalog release dates), newest
    first. Titles without a release date are never "new"."""
    found = [
        Release(item_id=it.item_id, release_ts=it.release_ts, genres=list(it.genres))
        for it in deps.catalog.items
        if it.release_ts is not None and args.since_ms <= it.release_ts <= args.until_ms
    ]
    found.sort(key=lambda r: (-r.release_ts, r.item_id))
    return ReleasesOut(items=found[: args.limit])


@agent(
    name="new_this_week",
    budget=Budget(latency_ms=80, max_tool_calls=4),
    tools=["new_releases", "embed_history"],
    memory_scopes=[GenreBackoff],
    triggers=("session_closed", "sweep"),
    row_ttl_ms=DAY_MS,
)
async def new_this_week(ctx: AgentContext) -> int:
    """New this week, in the order of the user's taste, without seen titles or backed-off
    genres."""
    new = await ctx.call_tool("new_releases", {"since_ms": ctx.now_ms - 7 * DAY_MS, "until_ms": ctx.now_ms})
    avoid = {f.genre.lower() for f in ctx.memory(GenreBackoff)}
    fresh = [r for r in new.items if r.item_id not in ctx.seen and not {g.lower() for g in r.genres} & avoid]
    if not fresh:
        return 0  # nothing new: keep whatever row is there
    ids = np.array([r.item_id for r in fresh], dtype=np.int64)  # (R,)
    vec = await ctx.user_vector()
    if vec is None:  # no history yet: newest first
        scores = np.linspace(1.0, 0.5, len(ids))
    else:
        scores = ctx.artifacts.item_vectors[ids] @ vec  # (R,)
    order = np.argsort(-scores, kind="stable")[:30]
    ctx.emit_row("new_this_week", title="New this week", reason=f"{len(fresh)} new titles, ordered by your taste",
                 items=[(int(ids[j]), float(scores[j])) for j in order])
    return len(order)


def build_loop(artifacts: object, **kwargs: object) -> OuterLoop:
    """The built-in agents plus this example's agent and tool."""
    return OuterLoop(artifacts, agents=[new_this_week], tools=[new_releases], **kwargs)  # type: ignore[arg-type]


async def demo(artifacts: object, *, redis: object = None, user_id: str, keys: type | None = None,
               now_ms: int | None = None) -> dict[str, object]:
    """Give ``user_id`` a history, run one cycle after their session closes, report it."""
    catalog = artifacts.catalog  # type: ignore[attr-defined]
    released = [it.release_ts for it in catalog.items if it.release_ts is not None]
    now = now_ms if now_ms is not None else (max(released) if released else 0) + DAY_MS  # something is new
    rng = np.random.default_rng(0)
    history = rng.choice(np.arange(1, len(catalog) + 1), size=12, replace=False).tolist()
    events = [Event(event_id=uuid.uuid4().hex, user_id=user_id, item_id=int(i), type="finish",
                    ts=now - DAY_MS + 60_000 * n) for n, i in enumerate(history)]
    options: dict[str, object] = {"keys": keys} if keys is not None else {}
    async with build_loop(artifacts, redis=redis, clock_ms=lambda: now, **options) as loop:
        await loop.apply_events(events)  # what POST /v1/events does, without the API
        result = await loop.run_cycle(user_id, [Trigger.session_closed(events)], now_ms=now)
    return {
        "now_ms": now,
        "history": history,
        "plan": [f"{s.agent}{s.rows}: {s.reason}" for s in result.plan.steps],
        "runs": [{"agent": r.agent, "outcome": r.outcome, "ms": round(r.elapsed_ms, 2), "tool_calls": r.tool_calls}
                 for r in result.records],
        "rows": {k: {"title": v.title, "items": v.items, "reason": v.reason} for k, v in result.rows_committed.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", required=True, help="trained artifacts directory")
    p.add_argument("--redis-url", help="Redis URL (default: the embedded server)")
    p.add_argument("--user", default="demo-new-this-week")
    args = p.parse_args(argv)
    report = asyncio.run(demo(Artifacts.load(args.artifacts), redis=args.redis_url, user_id=args.user))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
