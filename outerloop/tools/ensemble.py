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


@tool(name="ensemble_rank", timeout_ms=250)
async def ensemble_rank(args: EnsembleRankIn, deps: ToolDeps) -> ScoredItems:
    """The heavy ensemble's (several transformers + EASE) most likely next items for a history,
    scored by log-probability over the whole catalog; the history and ``exclude`` are left out."""
    model = deps.extra.get(ENSEMBLE)
    if model is None:
        raise RunFailed("no ensemble is loaded for these artifacts: train one with `outerloop train-ensemble`")
    history = np.asarray(args.items, dtype=np.int64)
    exclude = np.unique(np.concatenate([history, np.asarray(args.exclude, dtype=np.int64)]))
    pairs = await asyncio.to_thread(model.top, history, args.k, actions=args.actions, ts=args.ts, exclude=exclude)
    return ScoredItems.from_pairs(pairs)
