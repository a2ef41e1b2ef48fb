"""The FAISS item index: flat and HNSW agree, ids are dense item ids, files round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from outerloop.inner_loop.model.index import ItemIndex, build_item_index


def vectors(n: int = 2000, d: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n + 1, d)).astype(np.float32)
    v[0] = 0.0  # padding row
    return v


def test_flat_returns_exact_inner_product_top_k_as_dense_ids() -> None:
    v = vectors()
    q = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    index = build_item_index(v, kind="auto")
    assert index.kind == "flat" and index.n_items == 2000
    ids, scores = index.search(q, 10)
    exact = np.argsort(-(q @ v[1:].T), axis=1)[:, :10] + 1
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, exact)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ v.T, ids, 1), rtol=1e-5)


def test_hnsw_finds_the_same_top_items_as_flat() -> None:
    v = vectors()
    q = np.random.default_rng(2).standard_normal((50, 16)).astype(np.float32)
    flat_ids, _ = build_item_index(v, kind="flat").search(q, 10)
    hnsw = build_item_index(v, kind="hnsw")
    assert hnsw.kind == "hnsw"
    hnsw_ids, _ = hnsw.search(q, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(flat_ids, hnsw_ids)])
    assert overlap >= 0.95
    assert (hnsw_ids[:, 0] == flat_ids[:, 0]).mean() >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    v = vectors(300)
    q = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    index = build_item_index(v, kind=kind)  # type: ignore[arg-type]
    index.save(tmp_path / "index.faiss")
    loaded = ItemIndex.load(tmp_path / "index.faiss")
    assert loaded.kind == kind
    for a, b in zip(index.search(q, 7), loaded.search(q, 7)):
        np.testing.assert_array_equal(a, b)


def test_asking_for_more_than_the_catalog_pads_with_minus_one() -> None:
    ids, _ = build_item_index(vectors(5)).search(np.ones((1, 16), dtype=np.float32), 8)
    assert sorted(ids[0, :5].tolist()) == [1, 2, 3, 4, 5] and ids[0, 5:].tolist() == [-1, -1, -1]


def test_wrong_dimension_is_rejected() -> None:
    with pytest.raises(ValueError, match="dimension"):
        build_item_index(vectors(10)).search(np.ones((1, 8), dtype=np.float32), 3)
