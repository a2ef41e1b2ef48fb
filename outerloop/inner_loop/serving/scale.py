"""Serve a trained model over a much larger, synthetic catalog, to measure how serving scales.

The trained items keep their ids, vectors, metadata and counts (so real histories still encode
and retrieve as before); items ``N0+1..n_items`` come from the synthetic world's catalog, with
vectors drawn from a Gaussian fitted to the trained item vectors (same mean and covariance, so
the index sees the same geometry) and training counts resampled from the trained ones. The
index is the artifacts' kind of index (:func:`build_item_index`: exact up to 100k items, HNSW
above); it is cached on disk keyed by model version, size and seed, because building a
million-item HNSW takes minutes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from outerloop.data.schema import Catalog
from outerloop.errors import UserInputError
from outerloop.inner_loop.model.index import ItemIndex, build_item_index
from outerloop.inner_loop.model.ranker import ArtifactsLike

log = logging.getLogger(__name__)


@dataclass
class ScaledArtifacts:
    """Duck-types as trained artifacts for the funnel: the base model encodes, the big catalog
    retrieves."""

    base: Any
    catalog: Catalog
    model_version: str
    item_vectors: np.ndarray  # (n+1, d)
    popularity: np.ndarray  # (n+1,)
    index: ItemIndex

    @property
    def model(self) -> Any:
        return getattr(self.base, "model", None)

    @property
    def manifest(self) -> dict[str, Any]:
        return {**getattr(self.base, "manifest", {}), "synthetic_items": len(self.catalog)}

    def encode(self, histories: list[Sequence[int]], actions: Any = None, ts: Any = None) -> np.ndarray:
        return self.base.encode(histories, actions=actions, ts=ts)


def _extend_catalog(base: Catalog, n_items: int, seed: int) -> Catalog:
    from outerloop.data.synthetic import synthetic_catalog  # the data engineer's generator

    n0 = len(base)
    extra = synthetic_catalog(n_items - n0, seed=seed)
    items = list(base.items)
    items.extend(dataclasses.replace(it, item_id=n0 + it.item_id, source_id=f"syn:{it.source_id}")
                 for it in extra.items)
    return Catalog(items)


def scale_catalog(artifacts: ArtifactsLike, n_items: int, *, seed: int = 0,
                  cache_dir: str | Path | None = None) -> ScaledArtifacts:
    """``artifacts`` over a catalog of ``n_items`` (at least the trained catalog's size)."""
    n0 = len(artifacts.catalog)
    if n_items < n0:
        raise UserInputError(f"--synthetic-items {n_items} is smaller than the trained catalog ({n0} items)")
    rng = np.random.default_rng([seed, 11])
    base_vecs = np.asarray(artifacts.item_vectors, dtype=np.float32)
    d = base_vecs.shape[1]
    real = base_vecs[1 : n0 + 1].astype(np.float64)
    mean = real.mean(0)
    cov = np.cov(real, rowvar=False) + 1e-6 * np.eye(d)
    chol = np.linalg.cholesky(cov)
    n_new = n_items - n0
    new = (rng.standard_normal((n_new, d)) @ chol.T + mean).astype(np.float32)
    vectors = np.concatenate([base_vecs[: n0 + 1], new])
    pop0 = np.asarray(artifacts.popularity, dtype=np.float64)
    popularity = np.concatenate([pop0[: n0 + 1], rng.choice(pop0[1 : n0 + 1], size=n_new)])
    t0 = time.perf_counter()
    catalog = _extend_catalog(artifacts.catalog, n_items, seed) if n_new else artifacts.catalog
    log.info("synthetic catalog of %d items in %.1f s", n_items, time.perf_counter() - t0)

    index = None
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{artifacts.model_version}-{n_items}-{seed}.faiss"
        if cache_file.is_file():
            index = ItemIndex.load(cache_file)
    if index is None:
        t0 = time.perf_counter()
        index = build_item_index(vectors)  # flat up to FLAT_MAX_ITEMS, HNSW above (index.py decides)
        log.info("%s index over %d items in %.1f s", index.kind, n_items, time.perf_counter() - t0)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            index.save(cache_file)
    return ScaledArtifacts(base=artifacts, catalog=catalog, model_version=f"{artifacts.model_version}+syn{n_items}",
                           item_vectors=vectors, popularity=popularity, index=index)
