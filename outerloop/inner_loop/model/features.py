"""Turn catalog metadata and event context into the integer feature tensors the model embeds.

Everything here is plain numpy and deterministic, so the same catalog always gives the same
features. The vocabularies that must stay stable across retrains (genre names) are passed in
explicitly and stored in the model config; everything else uses fixed buckets (years, runtimes,
time gaps, hour of day) or a fixed hash (tags), so a grown catalog maps onto the same rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np

from outerloop.data.schema import Catalog

# Fixed buckets. Index 0 of every vocabulary means "unknown / padding".
YEAR_MIN, YEAR_MAX, YEAR_STEP = 1900, 2039, 5
N_YEAR_BUCKETS = 1 + (YEAR_MAX - YEAR_MIN) // YEAR_STEP + 1
RUNTIME_STEP_MIN, RUNTIME_MAX_MIN = 15, 240
N_RUNTIME_BUCKETS = 1 + RUNTIME_MAX_MIN // RUNTIME_STEP_MIN + 1
KINDS: tuple[str, ...] = ("film", "episode")
N_KINDS = 1 + len(KINDS)
N_GAP_BUCKETS = 1 + 24  # 0 = unknown/first event; then log2 buckets of the gap in seconds
N_HOURS = 1 + 24  # 0 = unknown; then hour of day (UTC) + 1


@dataclass(slots=True)
class ItemFeatures:
    """Per-item metadata as padded integer arrays, row 0 = the padding item (all zeros).

    ``genres`` and ``tags`` are padded bags (0 = empty slot); the model averages their
    embeddings, which is the same as a linear map of the multi-hot vector.
    """

    genres: np.ndarray  # (N+1, Gmax) int64, genre vocabulary index + 1
    year: np.ndarray  # (N+1,) int64 bucket
    runtime: np.ndarray  # (N+1,) int64 bucket
    kind: np.ndarray  # (N+1,) int64
    tags: np.ndarray  # (N+1, Tmax) int64 hashed bucket + 1

    @property
    def n_items(self) -> int:
        return int(self.year.shape[0]) - 1


def year_bucket(year: int | None) -> int:
    if year is None:
        return 0
    year = min(max(year, YEAR_MIN), YEAR_MAX)
    return 1 + (year - YEAR_MIN) // YEAR_STEP


def runtime_bucket(minutes: int | None) -> int:
    if minutes is None or minutes <= 0:
        return 0
    return 1 + min(minutes, RUNTIME_MAX_MIN) // RUNTIME_STEP_MIN


def tag_bucket(tag: str, n_buckets: int) -> int:
    """A stable hash (crc32, not Python's salted ``hash``) so buckets survive restarts."""
    return 1 + zlib.crc32(tag.strip().lower().encode()) % n_buckets


def build_item_features(catalog: Catalog, genre_vocab: Sequence[str], n_tag_buckets: int) -> ItemFeatures:
    """Features for every catalog item. Genres not in ``genre_vocab`` are ignored (a warm start
    keeps its parent's vocabulary so that genre embeddings keep their meaning)."""
    gidx = {g: i + 1 for i, g in enumerate(genre_vocab)}
    n = len(catalog)
    gmax = max([1] + [len(it.genres) for it in catalog.items])
    tmax = max([1] + [len(it.tags) for it in catalog.items])
    genres = np.zeros((n + 1, gmax), dtype=np.int64)
    tags = np.zeros((n + 1, tmax), dtype=np.int64)
    year = np.zeros(n + 1, dtype=np.int64)
    runtime = np.zeros(n + 1, dtype=np.int64)
    kind = np.zeros(n + 1, dtype=np.int64)
    for it in catalog.items:
        ids = [gidx[g] for g in it.genres if g in gidx]
        genres[it.item_id, : len(ids)] = ids
        tids = [tag_bucket(t, n_tag_buckets) for t in it.tags] if n_tag_buckets else []
        tags[it.item_id, : len(tids)] = tids
        year[it.item_id] = year_bucket(it.year)
        runtime[it.item_id] = runtime_bucket(it.runtime_min)
        kind[it.item_id] = 1 + KINDS.index(it.kind) if it.kind in KINDS else 0
    return ItemFeatures(genres=genres, year=year, runtime=runtime, kind=kind, tags=tags)


def gap_buckets(ts_ms: np.ndarray) -> np.ndarray:
    """Bucket of log2(seconds since the previous event); 0 for the first event.

    Gaps say "same session" vs "came back next week", which changes what comes next.
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    out = np.zeros(ts_ms.shape, dtype=np.int64)
    if ts_ms.shape[-1] > 1:
        gap_s = np.maximum(np.diff(ts_ms, axis=-1), 0) / 1000.0
        out[..., 1:] = 1 + np.minimum(np.log2(1.0 + gap_s).astype(np.int64), N_GAP_BUCKETS - 2)
    return out


def hour_of_day(ts_ms: np.ndarray) -> np.ndarray:
    """Hour of day (UTC) + 1, so 0 stays "unknown"."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    return 1 + (ts_ms // 3_600_000) % 24
