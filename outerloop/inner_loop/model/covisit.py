"""Item-to-item co-visitation: how often item j follows item i within a few steps.

A different signal from the transformer's: counted transitions, not a learned embedding, so
it keeps the sharp "people who just watched X watch Y next" pairs that a 64-dimensional
vector smooths away. The ranker reads it as two features (see ``ranker.py``); on ML-1M they
are most of the ranker's lift over retrieval order.

Built from the same training part of each sequence as the transformer (never the validation
or test items), normalised by ``sqrt(out_count(i) * in_count(j))`` so blockbusters do not
dominate, and kept as the ``top_k`` strongest successors per item in CSR form (row = item).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COVISIT_FILE = "ranker_covisit.npz"


@dataclass(frozen=True, slots=True)
class CoVisitation:
    """CSR rows: successors of item ``i`` are ``indices[indptr[i]:indptr[i+1]]`` (sorted by id)
    with weights ``data[...]``. Items above ``n_rows`` (a grown catalog) have no row."""

    indptr: np.ndarray  # (n_rows + 2,) int64
    indices: np.ndarray  # (nnz,) int64
    data: np.ndarray  # (nnz,) float32

    @property
    def n_rows(self) -> int:
        return int(self.indptr.shape[0]) - 2

    @classmethod
    def build(cls, sequences: Sequence[np.ndarray], n_items: int, *, window: int = 3,
              top_k: int = 200) -> "CoVisitation":
        """Count ``i -> j`` for ``j`` up to ``window`` steps after ``i`` (weight ``1 / gap``)."""
        src, dst, w = [], [], []
        for s in sequences:
            s = np.asarray(s, dtype=np.int64)
            for gap in range(1, window + 1):
                if s.shape[0] > gap:
                    src.append(s[:-gap])
                    dst.append(s[gap:])
                    w.append(np.full(s.shape[0] - gap, 1.0 / gap))
        n = n_items + 1
        if not src:
            return cls(np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        key = np.concatenate(src) * n + np.concatenate(dst)
        uniq, inv = np.unique(key, return_inverse=True)
        weight = np.bincount(inv, weights=np.concatenate(w))
        rows, cols = uniq // n, uniq % n
        out_n = np.bincount(rows, weights=weight, minlength=n)
        in_n = np.bincount(cols, weights=weight, minlength=n)
        weight = weight / np.sqrt(out_n[rows] * in_n[cols])
        # keep the top_k per row: order by (row, -weight), rank within the row
        order = np.lexsort((-weight, rows))
        rows, cols, weight = rows[order], cols[order], weight[order]
        starts = np.searchsorted(rows, rows, side="left")
        keep = (np.arange(rows.shape[0]) - starts) < top_k
        rows, cols, weight = rows[keep], cols[keep], weight[keep]
        order = np.lexsort((cols, rows))  # CSR: by row, then column (for searchsorted)
        rows, cols, weight = rows[order], cols[order], weight[order]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return cls(indptr, cols.astype(np.int64), weight.astype(np.float32))

    def scores(self, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """(R, C) weights of ``hist[r] -> cand[c]`` (0 where there is none)."""
        out = np.zeros((hist.shape[0], cand.shape[0]), dtype=np.float32)
        for r, h in enumerate(hist.tolist()):  # R is a handful of recent items
            if not 1 <= h <= self.n_rows:
                continue
            lo, hi = int(self.indptr[h]), int(self.indptr[h + 1])
            if lo == hi:
                continue
            idx = self.indices[lo:hi]
            pos = np.minimum(np.searchsorted(idx, cand), hi - lo - 1)
            out[r] = np.where(idx[pos] == cand, self.data[lo:hi][pos], 0.0)
        return out

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / COVISIT_FILE
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, indptr=self.indptr, indices=self.indices, data=self.data)
        tmp.replace(path)

    @classmethod
    def load(cls, directory: str | Path) -> "CoVisitation | None":
        path = Path(directory) / COVISIT_FILE
        if not path.is_file():
            return None
        with np.load(path) as z:
            return cls(z["indptr"].astype(np.int64), z["indices"].astype(np.int64), z["data"].astype(np.float32))
