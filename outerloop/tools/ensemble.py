"""The ``ensemble_rank`` tool: the heavy model's most likely next items for a history.

The model (:class:`outerloop.inner_loop.model.ensemble.Ensemble`: several transformers and EASE) is
loaded once per ``OuterLoop`` and handed to the tool through ``ToolDeps.extra`` under
:data:`ENSEMBLE`; without one the call fails with a message saying how to train it. The scoring
runs in a worker thread so the event loop keeps serving other users' cycles meanwhile.
"""

from __future__ import annotations

import asyncio

import numpy as np
from pydantic import BaseModel, Field

from outerloop.errors import RunFailed
from outerloop.tools.contracts import ScoredItems, ToolDeps, tool

ENSEMBLE = "ensemble"  # ToolDeps.extra key of the loaded Ensemble


class EnsembleRankIn(BaseModel):
    items: list[int] = Field(min_length=1, description="the user's history, oldest first")
    actions: list[int] | None = None
    ts: list[int] | None = None
    exclude: list[int] = Field(default_factory=list, description="items never to return (e.g. seen)")
    k: int = Field(default=300, ge=1, le=5000)
    branches: int = Field(default=0, ge=0, le=1000, description="also answer for the user's next item being "
                          "each of the top this many: one branch per item")
    branch_k: int = Field(default=100, ge=1, le=5000, description="items per branch")


class NextItemBranch(BaseModel):
    """The answer had the user's next interaction been ``after``."""

    after: int
    items: list[int] = Field(description="most likely first")
    log_probs: list[float]
    floor: float | None = Field(description="the log-probability of the k-th item, where a row of the "
                                "unbranched answer's length would have ended")


class EnsembleRanked(ScoredItems):
    branches: list[NextItemBranch] = Field(default_factory=list)


@tool(name="ensemble_rank", timeout_ms=250)
async def ensemble_rank(args: EnsembleRankIn, deps: ToolDeps) -> EnsembleRanked:
    """The heavy ensemble's (several transformers + EASE) most likely next items for a history,
    scored by log-probability over the whole catalog; the history and ``exclude`` are left out.
    With ``branches``: the same for the history continued by each of the top items, the
    answer's staleness insurance (a row stays fresh when the user's next item was guessed)."""
    model = deps.extra.get(ENSEMBLE)
    if model is None:
        raise RunFailed("no ensemble is loaded for these artifacts: train one with `outerloop train-ensemble`")
    history = np.asarray(args.items, dtype=np.int64)
    exclude = np.unique(np.concatenate([history, np.asarray(args.exclude, dtype=np.int64)]))

    def rank() -> EnsembleRanked:
        pairs = model.top(history, args.k, actions=args.actions, ts=args.ts, exclude=exclude)
        out = EnsembleRanked.model_validate({"items": [{"item_id": int(i), "score": float(s)} for i, s in pairs]})
        if args.branches and pairs:
            after = [i for i, _ in pairs[: args.branches]]
            out.branches = [NextItemBranch(after=b.after, items=b.item_ids.tolist(), log_probs=b.log_probs.tolist(),
                                           floor=b.floor)
                            for b in model.branches(history, after, args.branch_k, actions=args.actions, ts=args.ts,
                                                    exclude=exclude, floor_at=args.k)]
        return out

    return await asyncio.to_thread(rank)
