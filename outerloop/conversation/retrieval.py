"""Collaborative retrieval for a conversation: a query vector from the user's history and the
anchors, candidates from the FAISS index, and the hard filter.

Why the history stays in the query even when anchors are given: "something like Toy Story" from
a horror fan and from a parent should not return the same list (CRAG's point: the
collaborative signal personalises what the conversation narrows).

The index is searched first; when the constraints are narrow and too few of its top results
survive the filter, the eligible items are scored exactly (``item_vectors @ q``), which for a
filtered set is both cheap and complete. The response says which path ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from outerloop.data.schema import Catalog

ANCHOR_WEIGHT = 0.6  # share of the query that points at the anchors when the user has a history
ANN_POOL = 500  # how deep the index is searched before filtering


class SearchableArtifacts(Protocol):
    """What conversation needs from :class:`outerloop.inner_loop.model.artifacts.Artifacts`: the
    ranker's ``ArtifactsLike`` plus the ANN ``index`` it searches (declared here, not imported,
    so that conversation loads without torch)."""

    catalog: Catalog
    item_vectors: np.ndarray  # (N+1, d)
    popularity: np.ndarray  # (N+1,)
    index: Any  # .search(vecs (B, d), k) -> (ids (B, k), scores (B, k))

    @property
    def model_version(self) -> str: ...

    def encode(self, histories: Any, actions: Any = None, ts: Any = None) -> np.ndarray: ...


@dataclass
class UserHistory:
    """A user's recent interactions, oldest first (what the inner loop's user state holds)."""

    items: list[int] = field(default_factory=list)
    ts: list[int] | None = None  # ms since the epoch, one per item
    actions: list[int] | None = None  # ACTION_ID values, one per item

    @classmethod
    def from_state(cls, state: Any) -> "UserHistory":
        """From an ``outerloop.inner_loop.serving.user_state.UserState`` (items, actions, ts arrays)."""
        items = [int(i) for i in np.asarray(state.items).tolist()]
        ts = [int(t) for t in np.asarray(state.ts).tolist()]
        actions = [int(a) for a in np.asarray(state.actions).tolist()]
        return cls(items=items, ts=ts if len(ts) == len(items) else None,
                   actions=actions if len(actions) == len(items) else None)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Candidates:
    """Filtered candidates, best collaborative score first."""

    ids: np.ndarray  # (M,) dense item ids
    scores: np.ndarray  # (M,) user/anchor query . item vector
    how: str  # "ann", "exact" or "none"
    eligible: int  # items passing the filter
    query: np.ndarray  # (d,)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def query_vector(artifacts: SearchableArtifacts, history: UserHistory, anchor_ids: Sequence[int]) -> np.ndarray:
    """(d,) query: the user's embedding, pulled towards the anchors' item vectors."""
    n_items = len(artifacts.catalog)
    items = [i for i in history.items if 1 <= i <= n_items]
    keep = [k for k, i in enumerate(history.items) if 1 <= i <= n_items]  # ids of an older catalog drop out
    actions = [[history.actions[k] for k in keep]] if history.actions is not None else None
    ts = [[history.ts[k] for k in keep]] if history.ts is not None else None
    user = artifacts.encode([items], actions, ts)[0]  # (d,) cold-start vector when empty
    anchors = [a for a in anchor_ids if 1 <= a <= n_items]
    if not anchors:
        return user.astype(np.float32)
    pull = _unit(_unit(artifacts.item_vectors[anchors]).mean(axis=0))  # (d,)
    if not items:
        return pull.astype(np.float32)
    return ((1.0 - ANCHOR_WEIGHT) * _unit(user) + ANCHOR_WEIGHT * pull).astype(np.float32)


def retrieve(artifacts: SearchableArtifacts, query: np.ndarray, mask: np.ndarray, pool: int) -> Candidates:
    """Up to ``pool`` eligible items (``mask``) by score with ``query``."""
    eligible = int(mask.sum())
    if eligible == 0:
        return Candidates(np.zeros(0, np.int64), np.zeros(0, np.float32), "none", 0, query)
    want = min(pool, eligible)
    depth = min(len(artifacts.catalog), max(ANN_POOL, pool))
    ids, scores = artifacts.index.search(query[None, :], depth)  # (1, depth)
    ids, scores = ids[0], scores[0]
    ok = (ids > 0) & mask[np.clip(ids, 0, None)]
    if int(ok.sum()) >= want:
        return Candidates(ids[ok][:want].astype(np.int64), scores[ok][:want], "ann", eligible, query)
    elig = np.flatnonzero(mask)
    exact = artifacts.item_vectors[elig] @ query  # (E,)
    top = np.argpartition(-exact, want - 1)[:want] if want < elig.shape[0] else np.arange(elig.shape[0])
    top = top[np.argsort(-exact[top], kind="stable")]
    return Candidates(elig[top].astype(np.int64), exact[top].astype(np.float32), "exact", eligible, query)
