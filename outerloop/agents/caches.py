"""The two caches that keep the outer loop cheap, and the clustering the tool cache keys on.

- :class:`PlanCache`: plans keyed by a signature of what the policy reads (triggers reduced to
  their features, the relevant memory, stale rows). Two users in the same situation get the
  same plan without asking the policy again, which matters most when the policy is an LLM.
- clusters of user embeddings (:class:`KMeansClusters`, :class:`SignLSH`, and the default
  :class:`AdaptiveClusters`, which fits k-means on the first user vectors it sees): each has a
  representative vector. The tool agent asks shareable tools (vector search) about the
  representative, caches the answer per cluster, and re-scores the shared pool with each user's
  own vector, so reuse costs little quality. Fit clusters to *user* vectors: user and item
  vectors share a space but not a distribution (norms differ by an order of magnitude for the
  transformer here), and representatives fitted to items retrieve pools users barely touch.

Both are plain objects owned by an ``OuterLoop``: no module-level state.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

import numpy as np

from outerloop.errors import UsageError
from outerloop.telemetry import count_cache
from outerloop.tools.registry import HitStats

V = TypeVar("V")


@dataclass(slots=True)
class LRU(Generic[V]):
    """A bounded least-recently-used map with hit counting (here, and in the cache-lookup
    metric under ``cache_name``, so hit rates show up next to the other caches')."""

    cache_name: ClassVar[str] = "lru"
    max_entries: int = 10_000
    stats: HitStats = field(default_factory=HitStats)
    _data: OrderedDict[str, V] = field(default_factory=OrderedDict)

    def get(self, key: str) -> V | None:
        value = self._data.get(key)
        count_cache(self.cache_name, value is not None)
        if value is None:
            self.stats.misses += 1
            return None
        self._data.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: str, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_rate(self) -> float:
        return self.stats.hit_rate


class PlanCache(LRU["object"]):
    """Plans by signature (see ``PlanningView.signature``)."""

    cache_name: ClassVar[str] = "plan"


def signature(payload: str) -> str:
    """A short stable digest of a canonical JSON payload."""
    return hashlib.blake2b(payload.encode(), digest_size=12).hexdigest()


class SignLSH:
    """Sign random projections: ``bits`` hyperplanes through ``center`` split the embedding space
    into up to ``2**bits`` cones; a user's cluster is the cone their vector falls in.

    The representative of a cluster is ``center + scale * unit(sum_i sign_i * h_i)`` (hyperplane
    normals signed by the cluster's code): it lies inside the cone and depends only on the code,
    not on which user arrived first, so a cached answer is the same whoever filled it.
    Fit ``center``/``scale`` to a sample of user vectors with :meth:`for_vectors`.
    """

    def __init__(self, dim: int, bits: int = 8, *, seed: int = 0, scale: float = 1.0,
                 center: np.ndarray | None = None) -> None:
        if not 1 <= bits <= 62:
            raise UsageError(f"SignLSH bits must be in 1..62, got {bits}")
        rng = np.random.default_rng(seed)
        planes = rng.standard_normal((bits, dim)).astype(np.float32)  # (bits, d)
        self.planes = planes / np.linalg.norm(planes, axis=1, keepdims=True)
        self.bits = bits
        self.scale = scale
        self.center = np.zeros(dim, dtype=np.float32) if center is None else np.asarray(center, np.float32)
        self._weights = (1 << np.arange(bits, dtype=np.int64))  # (bits,)

    def code(self, vec: np.ndarray) -> int:
        signs = (self.planes @ (np.asarray(vec, dtype=np.float32) - self.center)) >= 0  # (bits,)
        return int(self._weights[signs].sum())

    def representative(self, code: int) -> np.ndarray:
        signs = np.where((code >> np.arange(self.bits)) & 1, 1.0, -1.0).astype(np.float32)  # (bits,)
        direction = signs @ self.planes  # (d,)
        n = float(np.linalg.norm(direction))
        return self.center + (direction / n * self.scale if n > 0 else direction)

    def assign(self, vec: np.ndarray) -> tuple[str, np.ndarray]:
        """``(cluster key, representative vector)`` of a user vector."""
        c = self.code(vec)
        return f"lsh{self.bits}:{c}", self.representative(c)

    @classmethod
    def for_vectors(cls, sample: np.ndarray, bits: int = 8, *, seed: int = 0) -> "SignLSH":
        """Hyperplanes through the sample's mean, representatives at its median spread."""
        sample = np.asarray(sample, dtype=np.float32)  # (n, d)
        center = sample.mean(axis=0)
        scale = float(np.median(np.linalg.norm(sample - center, axis=1))) if len(sample) else 1.0
        return cls(sample.shape[1], bits, seed=seed, scale=scale or 1.0, center=center)


class KMeansClusters:
    """Clusters = nearest of ``k`` centroids (faiss k-means on a sample of user vectors); the
    representative is the centroid itself. Tighter than :class:`SignLSH` for the same number of
    clusters, at the price of fitting on a sample first."""

    def __init__(self, centroids: np.ndarray) -> None:
        import faiss  # only this class needs it at import time

        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)  # (k, d)
        self._index = faiss.IndexFlatL2(self.centroids.shape[1])
        self._index.add(self.centroids)

    @classmethod
    def fit(cls, sample: np.ndarray, k: int = 64, *, seed: int = 0, niter: int = 20) -> "KMeansClusters":
        import faiss

        sample = np.ascontiguousarray(sample, dtype=np.float32)
        k = max(1, min(k, len(sample)))
        km = faiss.Kmeans(sample.shape[1], k, niter=niter, seed=seed, verbose=False)
        km.train(sample)
        return cls(km.centroids)

    def assign(self, vec: np.ndarray) -> tuple[str, np.ndarray]:
        _, idx = self._index.search(np.asarray(vec, dtype=np.float32)[None, :], 1)  # (1, 1)
        c = int(idx[0, 0])
        return f"km{len(self.centroids)}:{c}", self.centroids[c]


class AdaptiveClusters:
    """No sharing until ``min_fit`` user vectors were seen, then k-means on them.

    ``assign`` returns None while collecting (the caller searches with the user's own vector,
    uncached). The fit itself (tens of milliseconds) is not done inside ``assign``, which runs
    inside an agent's budget: the loop calls :meth:`maybe_fit` between cycles.
    """

    def __init__(self, k: int = 64, min_fit: int = 1000, *, seed: int = 0) -> None:
        self.k = k
        self.min_fit = min_fit
        self.seed = seed
        self._seen: list[np.ndarray] = []
        self.fitted: KMeansClusters | None = None

    def assign(self, vec: np.ndarray) -> tuple[str, np.ndarray] | None:
        if self.fitted is not None:
            return self.fitted.assign(vec)
        if len(self._seen) < self.min_fit:
            self._seen.append(np.asarray(vec, dtype=np.float32))
        return None

    @property
    def ready_to_fit(self) -> bool:
        return self.fitted is None and len(self._seen) >= self.min_fit

    def maybe_fit(self) -> bool:
        """Fit once enough vectors were collected; True when it fitted now."""
        if self.fitted is not None or len(self._seen) < self.min_fit:
            return False
        self.fitted = KMeansClusters.fit(np.stack(self._seen), self.k, seed=self.seed)
        self._seen.clear()
        return True
