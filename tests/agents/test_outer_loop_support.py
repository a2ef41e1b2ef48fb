"""Shared helpers for the outer-loop tests (no tests here).

``TinyArtifacts`` duck-types trained artifacts with a hand-made catalog (films and a series,
with genres and runtimes the planner's rules look at), seeded random item vectors and a real
FAISS inner-product index over them. ``encode`` is the mean of the last item vectors: cheap,
deterministic, and in the same space as the items, which is all the outer loop relies on.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from outerloop.contracts.events import Event
from outerloop.data.schema import Catalog, Item
from outerloop.inner_loop.serving.user_state import UserStore

BASE_TS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
DIM = 16
# (title, genres, runtime) of the films; ids 1..len(FILMS)
FILMS: list[tuple[str, tuple[str, ...], int]] = []
_GENRE_SETS = [("Crime", "Drama"), ("Comedy",), ("Thriller",), ("Horror",), ("Animation", "Family"),
               ("Documentary",), ("Romance", "Comedy"), ("Action", "Sci-Fi"), ("Drama",), ("Thriller", "Crime")]
for _i in range(60):
    _g = _GENRE_SETS[_i % len(_GENRE_SETS)]
    FILMS.append((f"Film {_i + 1}", _g, 80 + (_i * 7) % 80))
SERIES = "s-night-shift"
N_EPISODES = 6


def tiny_catalog() -> Catalog:
    items = [Item(item_id=i + 1, source_id=f"f{i + 1}", title=t, genres=g, runtime_min=r)
             for i, (t, g, r) in enumerate(FILMS)]
    for e in range(N_EPISODES):
        iid = len(items) + 1
        items.append(Item(item_id=iid, source_id=f"e{e + 1}", title=f"Night Shift S1E{e + 1}",
                          genres=("Crime", "Drama"), runtime_min=45, kind="episode", series_id=SERIES,
                          season=1, episode=e + 1, release_ts=BASE_TS - 30 * 86_400_000 + e * 7 * 86_400_000))
    return Catalog(items)


def episode_id(n: int) -> int:
    """Dense id of episode ``n`` (1-based) of the tiny series."""
    return len(FILMS) + n


class FlatIndex:
    """``search(user_vecs (B, d), k) -> (dense item ids (B, k), scores (B, k))`` over a real
    faiss inner-product index (faiss row r holds item r + 1)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, user_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(user_vecs, dtype=np.float32), k)
        return np.where(rows >= 0, rows + 1, -1), scores


class TinyArtifacts:
    def __init__(self, seed: int = 0) -> None:
        self.catalog = tiny_catalog()
        rng = np.random.default_rng(seed)
        n = len(self.catalog)
        vecs = rng.standard_normal((n + 1, DIM)).astype(np.float32)  # (N+1, d)
        vecs[0] = 0.0
        self.item_vectors = vecs
        self.popularity = np.arange(n + 1, dtype=np.float32)
        self.index = FlatIndex(vecs[1:])
        self.model_version = "tiny-1"

    def encode(self, histories: Sequence[Sequence[int]], actions: Any = None, ts: Any = None) -> np.ndarray:
        out = np.zeros((len(histories), DIM), dtype=np.float32)  # (B, d)
        for b, h in enumerate(histories):
            ids = np.asarray(list(h)[-20:], dtype=np.int64)
            if ids.size:
                out[b] = self.item_vectors[ids].mean(axis=0)
        return out


def ev(user: str, type_: str, item: int | None, ts: int, **kw: Any) -> Event:
    return Event(event_id=uuid.uuid4().hex, user_id=user, item_id=item, type=type_, ts=ts, **kw)


async def apply_events(redis: Any, keys: Any, events: Sequence[Event]) -> None:
    """Apply events to the user's real-time state the way the API does."""
    await UserStore(redis, history_cap=200, keys=keys).apply(list(events))


def make_scope(triggers: Sequence[Any] = (), *, user: str = "u1", now_ms: int = BASE_TS,
               history: Sequence[int] = (), facts: Sequence[Any] = (), rows: dict[str, Any] | None = None,
               version: int = 1) -> Any:
    """A ``CycleScope`` assembled by hand (no Redis), for planner and agent unit tests."""
    from outerloop.agents.runtime import CycleScope, History
    from outerloop.memory.store import UserMemory

    items = np.asarray(list(history), dtype=np.int64)
    return CycleScope(
        user_id=user, now_ms=now_ms, triggers=list(triggers),
        history=History(items, np.full(items.shape, 3, dtype=np.int64), np.full(items.shape, now_ms, dtype=np.int64)),
        seen=frozenset(items.tolist()), rows=dict(rows or {}),
        memory=UserMemory(user, version, {f.key: f for f in facts}),
    )
