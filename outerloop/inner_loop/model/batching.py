"""Sequences in, model batches out: the one place that truncates, pads and featurises.

Training, evaluation and serving all go through :func:`make_batch`, so the model sees the
same tokens everywhere: the last ``max_len`` events, right-padded, with action and time
features when the model uses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from outerloop.inner_loop.model.features import gap_buckets, hour_of_day
from outerloop.inner_loop.model.transformer import Batch, ModelConfig


def pad_right(seqs: Sequence[np.ndarray], length: int, dtype: type = np.int64) -> np.ndarray:
    """(B, length) array: each sequence's last ``length`` values, then zeros."""
    out = np.zeros((len(seqs), length), dtype=dtype)
    for i, s in enumerate(seqs):
        s = np.asarray(s)[-length:] if length else np.asarray(s)[:0]
        out[i, : s.shape[0]] = s
    return out


def event_features(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gap bucket and hour of each event of one user (computed on the full sequence, before
    any window is cut, so the first event of a window keeps its real gap)."""
    return gap_buckets(ts), hour_of_day(ts)


def make_batch(
    cfg: ModelConfig,
    histories: Sequence[Sequence[int]],
    actions: Sequence[Sequence[int]] | None = None,
    ts: Sequence[Sequence[int]] | None = None,
) -> Batch:
    """A right-padded batch of the last ``cfg.max_len`` events of each history.

    Features the model does not use are dropped here, so callers may always pass them.
    """
    hist = [np.asarray(h, dtype=np.int64) for h in histories]
    T = max(1, min(cfg.max_len, max((h.shape[0] for h in hist), default=1)))
    items = torch.from_numpy(pad_right(hist, T))
    batch = Batch(items=items)
    if cfg.use_actions and actions is not None:
        batch.actions = torch.from_numpy(pad_right([np.asarray(a, dtype=np.int64) for a in actions], T))
    if cfg.use_time and ts is not None:
        feats = [event_features(np.asarray(t, dtype=np.int64)) for t in ts]
        batch.gaps = torch.from_numpy(pad_right([f[0] for f in feats], T))
        batch.hours = torch.from_numpy(pad_right([f[1] for f in feats], T))
    return batch
