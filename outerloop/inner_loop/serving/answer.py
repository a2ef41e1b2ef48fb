"""One answer to "what is this user recommended now?", whoever asks.

``GET /v1/users/{id}/recommendations`` and the MCP tool ``recommend`` both read the user's state
with the inner loop's reader, run the same :class:`~outerloop.inner_loop.serving.funnel.Funnel`, and
write the result with :func:`recommendation_doc`, so they give the same rows with the same
flags: a user with no history gets the cold-start rows (``cold_start: true``), a storage failure
the popular items (``degraded: true``), never an error. :class:`Recommendations` is that
document's contract (the MCP tool's output schema); the API adds what belongs to one HTTP
request (:class:`ServedRecommendations`: ``request_id`` for joining feedback, timings, the
encoder cache outcome).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from outerloop.inner_loop.serving.funnel import Funnel, Recommendation

# what a read of user state can fail with: the answer is then degraded, never an error
STORAGE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


class RecommendedItem(BaseModel):
    item_id: int
    title: str
    score: float
    origin: str = Field(description="where the item came from: ann, agent, ann+agent, popular, explore, ...")


class RecommendedRow(BaseModel):
    row_id: str
    title: str
    reason: str
    produced_by: str = Field(description="the agent (or inner_loop.funnel) that produced the row")
    source: str = Field(description="funnel | agent | cold_start | degraded | precomputed")
    run_id: str | None = None
    model_version: str | None = None
    expires_at: int | None = Field(default=None, description="ms since the epoch")
    items: list[RecommendedItem]


class Recommendations(BaseModel):
    """A user's rows, as the inner loop serves them now."""

    user_id: str
    model_version: str
    history_version: int = Field(description="0: no history yet (a new user)")
    degraded: bool = Field(description="storage was unavailable: popular items, not personalised")
    cold_start: bool = Field(description="no history the model can read: popular and explore rows")
    ranker: str = Field(description="model | retrieval_order | none")
    fallbacks: list[str]
    rows: list[RecommendedRow]


class ServedRecommendations(Recommendations):
    """:class:`Recommendations` as one HTTP request served it."""

    request_id: str = Field(description="send it back with feedback events to attribute them")
    encoder_cache: str = Field(description="hit | redis | miss | none")
    timings_ms: dict[str, float]


def recommendation_doc(funnel: "Funnel", rec: "Recommendation", user_id: str, *,
                       rows: Iterable[str] | None = None) -> dict[str, Any]:
    """The :class:`Recommendations` document of ``rec`` (a plain dict, written without
    validation: it is on the request path), keeping only the rows named in ``rows`` if given."""
    wanted = set(rows) if rows else None
    out = []
    for r in rec.rows:
        if wanted is not None and r.row_id not in wanted:
            continue
        ids = r.item_ids.tolist()
        scores = np.round(r.scores.astype(np.float64), 5).tolist()
        out.append({
            "row_id": r.row_id, "title": r.title, "reason": r.reason, "produced_by": r.produced_by,
            "source": r.source, "run_id": r.run_id, "model_version": r.model_version, "expires_at": r.expires_at,
            "items": [{"item_id": i, "title": funnel.title(i), "score": s, "origin": o}
                      for i, s, o in zip(ids, scores, r.origins)],
        })
    return {
        "user_id": user_id, "model_version": rec.model_version, "history_version": rec.history_version,
        "degraded": rec.degraded, "cold_start": rec.cold_start, "ranker": rec.ranker,
        "fallbacks": list(rec.fallbacks), "rows": out,
    }
