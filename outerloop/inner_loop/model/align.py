"""Embedding versions: rotate a retrained model's vector space onto its parent's.

Two trainings of the same model learn equally good but differently oriented spaces, so a user
vector cached under version 1 is meaningless against version 2's index. An orthogonal
Procrustes map fixes most of that: the rotation ``R`` minimising ``||X_new R - X_old||`` over
the items both versions know. Applying ``R`` to *both* the new item vectors and the new user
vectors leaves every new score unchanged (``(u R) . (x R) = u . x``), while old user vectors
and old indexes land close to where they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from outerloop.data.schema import Catalog

if TYPE_CHECKING:
    from outerloop.inner_loop.model.artifacts import Artifacts


def procrustes(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The orthogonal ``R`` (d, d) minimising ``||src @ R - dst||_F``; src, dst: (n, d).

    From the SVD of ``src.T @ dst = U S V^T``: ``R = U V^T`` (Schönemann 1966).
    """
    if src.shape != dst.shape:
        raise ValueError(f"src {src.shape} and dst {dst.shape} must have the same shape")
    u, _, vt = np.linalg.svd(src.astype(np.float64).T @ dst.astype(np.float64))
    return (u @ vt).astype(np.float32)


def shared_items(old: Catalog, new: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Dense ids of the items both catalogs hold, matched by source id: (old_ids, new_ids)."""
    old_ids = {it.source_id: it.item_id for it in old.items}
    pairs = [(old_ids[it.source_id], it.item_id) for it in new.items if it.source_id in old_ids]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    arr = np.asarray(pairs, dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def relative_residual(src: np.ndarray, dst: np.ndarray) -> float:
    """``||src - dst|| / ||dst||``: 0 = identical spaces, ~1.4 = unrelated ones."""
    return float(np.linalg.norm(src - dst) / max(np.linalg.norm(dst), 1e-12))


def align_to_parent(new: "Artifacts", parent: "Artifacts", min_shared: int = 16) -> dict[str, Any]:
    """Rotate ``new`` onto ``parent`` in place and record it in ``new``'s manifest.

    The map is fitted on the items both versions know (by source id); a grown catalog's new
    items simply turn with the rest. Returns what was recorded (parent version, items used,
    residual before and after).
    """
    if new.item_vectors.shape[1] != parent.item_vectors.shape[1]:
        raise ValueError(
            f"cannot align dimension {new.item_vectors.shape[1]} to the parent's {parent.item_vectors.shape[1]}"
        )
    old_ids, new_ids = shared_items(parent.catalog, new.catalog)
    if old_ids.shape[0] < min_shared:
        raise ValueError(f"only {old_ids.shape[0]} shared items; need at least {min_shared} to fit a rotation")
    src = new.item_vectors[new_ids]  # (n, d)
    dst = parent.item_vectors[old_ids]  # (n, d)
    r = procrustes(src, dst)
    report = {
        "parent_version": parent.model_version,
        "method": "orthogonal_procrustes",
        "n_shared": int(old_ids.shape[0]),
        "residual_before": relative_residual(src, dst),
        "residual_after": relative_residual(src @ r, dst),
    }
    new.set_rotation(r, report)
    return report
