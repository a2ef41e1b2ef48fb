"""The FAISS index over item vectors: exact inner product for small catalogs, HNSW above.

Item ``i`` (dense id, 1..N) is FAISS row ``i - 1``; row 0 of the artifacts' item vectors is
padding and is never indexed. Search returns dense ids, with -1 where fewer than ``k`` items
were found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

FLAT_MAX_ITEMS = 100_000  # exact search up to here: ~10 ms for one query at d=64 on one core
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 128

IndexKind = Literal["flat", "hnsw"]


@dataclass
class ItemIndex:
    """A FAISS index of item vectors, searched by user vectors (maximum inner product)."""

    index: "faiss.Index"  # noqa: F821 (faiss is imported lazily)
    kind: IndexKind

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, user_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per user: ``(ids (B, k) int64 dense ids, scores (B, k) float32)``."""
        q = np.ascontiguousarray(np.atleast_2d(user_vecs), dtype=np.float32)  # (B, d)
        if q.shape[1] != self.dim:
            raise ValueError(f"user vectors have dimension {q.shape[1]}, the index has {self.dim}")
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        scores, rows = self.index.search(q, k)
        ids = np.where(rows >= 0, rows + 1, -1).astype(np.int64)
        return ids, scores.astype(np.float32, copy=False)

    def save(self, path: str | Path) -> None:
        import faiss

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "ItemIndex":
        import faiss

        index = faiss.read_index(str(path))
        kind: IndexKind = "hnsw" if isinstance(faiss.downcast_index(index), faiss.IndexHNSW) else "flat"
        return cls(index=index, kind=kind)


def build_item_index(
    vectors: np.ndarray,
    kind: IndexKind | Literal["auto"] = "auto",
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
) -> ItemIndex:
    """Index item vectors ``(N+1, d)`` (row 0 = padding, skipped).

    ``auto`` is exact (flat inner product) up to :data:`FLAT_MAX_ITEMS` items and HNSW above,
    where exact search stops fitting the request budget.
    """
    import faiss

    vecs = np.ascontiguousarray(vectors[1:], dtype=np.float32)  # (N, d)
    if kind == "auto":
        kind = "flat" if vecs.shape[0] <= FLAT_MAX_ITEMS else "hnsw"
    if kind == "flat":
        index = faiss.IndexFlatIP(vecs.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(vecs.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"index kind must be 'auto', 'flat' or 'hnsw', got {kind!r}")
    index.add(vecs)
    return ItemIndex(index=index, kind=kind)
