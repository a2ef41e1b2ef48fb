"""Orthogonal Procrustes: a retrained space rotated back onto its parent."""

from __future__ import annotations

import numpy as np
import pytest

from outerloop.data.schema import Catalog, Item
from outerloop.inner_loop.model.align import procrustes, relative_residual, shared_items
from outerloop.inner_loop.model.index import build_item_index


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def test_recovers_a_known_rotation() -> None:
    rng = np.random.default_rng(0)
    old = rng.standard_normal((500, 32)).astype(np.float32)
    rot = random_rotation(32, rng)
    new = old @ rot.T + 0.01 * rng.standard_normal((500, 32)).astype(np.float32)  # retrained: rotated + noise
    r = procrustes(new, old)
    np.testing.assert_allclose(r @ r.T, np.eye(32), atol=1e-4)  # orthogonal
    np.testing.assert_allclose(r, rot, atol=0.01)
    assert relative_residual(new @ r, old) < 0.02 < 1.0 < relative_residual(new, old)


def test_old_user_vectors_work_against_the_aligned_index() -> None:
    rng = np.random.default_rng(1)
    n, d, k = 3000, 32, 100
    items_old = rng.standard_normal((n + 1, d)).astype(np.float32)
    items_old[0] = 0
    users_old = rng.standard_normal((200, d)).astype(np.float32)
    rot = random_rotation(d, rng)
    items_new = items_old @ rot.T + 0.05 * rng.standard_normal((n + 1, d)).astype(np.float32)
    users_new = users_old @ rot.T  # the new model's own vectors for the same users
    items_new[0] = 0

    def recall(queries: np.ndarray, item_vectors: np.ndarray) -> float:
        truth, _ = build_item_index(item_vectors).search(users_new, k)
        got, _ = build_item_index(item_vectors).search(queries, k)
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, got)]))

    before = recall(users_old, items_new)
    r = procrustes(items_new[1:], items_old[1:])
    # aligned space: new items and new users both turned by r; scores unchanged
    items_aligned = items_new @ r
    after_truth, _ = build_item_index(items_aligned).search(users_new @ r, k)
    after_old, _ = build_item_index(items_aligned).search(users_old, k)
    after = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(after_truth, after_old)]))
    assert before < 0.15 and after > 0.7


def test_shared_items_match_by_source_id() -> None:
    old = Catalog([Item(item_id=i + 1, source_id=s, title=s) for i, s in enumerate(["a", "b", "c"])])
    new = Catalog([Item(item_id=i + 1, source_id=s, title=s) for i, s in enumerate(["c", "x", "a", "b"])])
    old_ids, new_ids = shared_items(old, new)
    assert sorted(zip(old_ids.tolist(), new_ids.tolist())) == [(1, 3), (2, 4), (3, 1)]


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        procrustes(np.zeros((3, 4)), np.zeros((3, 5)))
