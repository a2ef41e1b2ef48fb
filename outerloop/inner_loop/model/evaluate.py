"""Offline evaluation: SASRec's leave-one-out split, full and sampled ranking metrics.

One function, :func:`evaluate`, scores any recommender (a model, popularity, random) on any
split ("valid" or "test") under either protocol:

- ``full``: the target is ranked against every item of the catalog, with the user's own
  earlier items removed (they cannot be recommended again);
- ``sampled100``: the target is ranked against 100 negatives drawn uniformly from the items
  the user never interacted with (SASRec's protocol; optimistic, kept for comparison). In a
  catalog too small for that, every item the user never touched is a negative.

Ties are broken at random (seeded): a scorer that gives everything the same score gets a
random rank, not the best one. Pure numpy: nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from outerloop.data.schema import InteractionData, UserSequence

Split = Literal["valid", "test"]
Protocol = Literal["full", "sampled100"]
# (histories, actions or None, timestamps or None) -> (B, N+1) scores; column 0 is padding
ScoreFn = Callable[[list[np.ndarray], list[np.ndarray] | None, list[np.ndarray] | None], np.ndarray]

MIN_EVAL_LENGTH = 3  # a user needs a train item, a validation item and a test item


@dataclass(slots=True)
class EvalCases:
    """One evaluation case per user: the history the recommender sees and the item to find."""

    split: str
    user_ids: list[str]
    histories: list[np.ndarray]  # items before the target, in time order
    actions: list[np.ndarray] | None
    ts: list[np.ndarray] | None
    targets: np.ndarray  # (U,) int64
    interacted: list[np.ndarray]  # every item of the user (negatives are drawn outside it)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, keep: np.ndarray) -> "EvalCases":
        """The cases where boolean ``keep`` is True (e.g. targets that are cold items)."""
        idx = np.flatnonzero(keep)

        def pick(xs: list[np.ndarray] | None) -> list[np.ndarray] | None:
            return None if xs is None else [xs[i] for i in idx]

        return EvalCases(
            split=self.split,
            user_ids=[self.user_ids[i] for i in idx],
            histories=pick(self.histories) or [],
            actions=pick(self.actions),
            ts=pick(self.ts),
            targets=self.targets[idx],
            interacted=pick(self.interacted) or [],
        )


def train_sequences(data: InteractionData) -> list[UserSequence]:
    """Each user's training part: all but the last two events (fewer-than-3 users: all)."""
    out = []
    for u in data.users:
        cut = len(u) - 2 if len(u) >= MIN_EVAL_LENGTH else len(u)
        out.append(
            UserSequence(
                user_id=u.user_id,
                items=u.items[:cut],
                ts=None if u.ts is None else u.ts[:cut],
                actions=None if u.actions is None else u.actions[:cut],
            )
        )
    return out


def leave_one_out(data: InteractionData, split: Split) -> EvalCases:
    """SASRec's split: per user, last item = test, second to last = validation.

    The validation history is everything before the validation item; the test history also
    includes the validation item. Users with fewer than 3 events are training-only.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    end_from_last = 2 if split == "valid" else 1  # target index counted from the end
    users = [u for u in data.users if len(u) >= MIN_EVAL_LENGTH]
    has_actions = bool(users) and all(u.actions is not None for u in users)
    has_ts = bool(users) and all(u.ts is not None for u in users)
    cut = [len(u) - end_from_last for u in users]
    return EvalCases(
        split=split,
        user_ids=[u.user_id for u in users],
        histories=[u.items[:c].astype(np.int64) for u, c in zip(users, cut)],
        actions=[u.actions[:c] for u, c in zip(users, cut)] if has_actions else None,
        ts=[u.ts[:c] for u, c in zip(users, cut)] if has_ts else None,
        targets=np.asarray([int(u.items[c]) for u, c in zip(users, cut)], dtype=np.int64),
        interacted=[np.unique(u.items).astype(np.int64) for u in users],
    )


def target_ranks(scores: np.ndarray, target_col: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0-based rank of each row's target among that row's finite scores.

    ``rank = #(higher) + uniform share of #(equal)``: ties are broken at random.
    """
    rows = np.arange(scores.shape[0])
    t = scores[rows, target_col][:, None]  # (B, 1)
    higher = (scores > t).sum(1)
    equal = (scores == t).sum(1) - 1  # minus the target itself
    return higher + np.floor(rng.random(scores.shape[0]) * (equal + 1)).astype(np.int64)


def hit_ndcg(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-case HR@k and NDCG@k from 0-based ranks (one relevant item per case)."""
    hit = ranks < k
    return hit.astype(np.float64), np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)


def sample_negatives(interacted: np.ndarray, n_items: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct items from 1..n_items, none of them in ``interacted`` (sorted unique).

    Rejection sampling when the user saw a small part of the catalog (the usual case, and
    O(n) instead of O(catalog)); an explicit complement when few items are left, where
    rejection would take long to find the last ones.
    """
    available = n_items - interacted.shape[0]
    if available < n:
        raise ValueError(f"only {available} items left to sample {n} negatives from")
    if available < 4 * n:
        complement = np.setdiff1d(np.arange(1, n_items + 1), interacted, assume_unique=True)
        return rng.choice(complement, size=n, replace=False)
    out = np.empty(0, dtype=np.int64)
    while out.shape[0] < n:
        draw = rng.integers(1, n_items + 1, size=2 * (n - out.shape[0]) + 8)
        draw = draw[~np.isin(draw, interacted)]
        out = np.concatenate([out, draw])
        _, first = np.unique(out, return_index=True)
        out = out[np.sort(first)]
    return out[:n]


def evaluate(
    score_fn: ScoreFn,
    cases: EvalCases,
    n_items: int,
    protocol: Protocol = "full",
    k: int = 10,
    n_negatives: int = 100,
    seed: int = 0,
    batch_size: int = 512,
    item_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """HR@k and NDCG@k of ``score_fn`` on ``cases`` under ``protocol``.

    ``item_mask`` (N+1,) bool restricts the full ranking to a subset of items (e.g. only cold
    items); the target must be in it.
    """
    if protocol not in ("full", "sampled100"):
        raise ValueError(f"protocol must be 'full' or 'sampled100', got {protocol!r}")
    rng = np.random.default_rng(seed)
    hits, ndcgs = [], []
    for s in range(0, len(cases), batch_size):
        sl = slice(s, s + batch_size)
        hist = cases.histories[sl]
        scores = np.array(  # a writable copy: seen items are masked in place
            score_fn(hist, None if cases.actions is None else cases.actions[sl], None if cases.ts is None else cases.ts[sl]),
            dtype=np.float64,
        )  # (b, N+1)
        targets = cases.targets[sl]
        rows = np.arange(scores.shape[0])
        if protocol == "full":
            scores[:, 0] = -np.inf
            if item_mask is not None:
                scores[:, ~item_mask] = -np.inf
            target_score = scores[rows, targets].copy()
            for r, h in enumerate(hist):  # the user's earlier items cannot be recommended
                scores[r, h] = -np.inf
            scores[rows, targets] = target_score  # ... but a repeated target still counts
            ranks = target_ranks(scores, targets, rng)
        else:
            cand = np.zeros((len(rows), 1 + n_negatives), dtype=np.int64)  # (b, 1 + n_neg); target first
            cand[:, 0] = targets
            for r in rows:  # a catalog too small for n_negatives gives every unseen item instead
                inter = cases.interacted[s + r]
                negs = sample_negatives(inter, n_items, min(n_negatives, n_items - inter.shape[0]), rng)
                cand[r, 1 : 1 + negs.shape[0]] = negs
            cand_scores = np.take_along_axis(scores, cand, 1)
            cand_scores[:, 1:][cand[:, 1:] == 0] = -np.inf  # unused slots
            ranks = target_ranks(cand_scores, np.zeros(len(rows), dtype=np.int64), rng)
        hit, ndcg = hit_ndcg(ranks, k)
        hits.append(hit)
        ndcgs.append(ndcg)
    hit_all = np.concatenate(hits) if hits else np.zeros(0)
    ndcg_all = np.concatenate(ndcgs) if ndcgs else np.zeros(0)
    return {
        f"hr@{k}": float(hit_all.mean()) if hit_all.size else 0.0,
        f"ndcg@{k}": float(ndcg_all.mean()) if ndcg_all.size else 0.0,
        "n": int(hit_all.size),
    }


def evaluate_protocols(
    score_fn: ScoreFn, cases: EvalCases, n_items: int, k: int = 10, seed: int = 0
) -> dict[str, float | dict[str, float]]:
    """Full ranking at the top level, the sampled protocol under ``"sampled100"``."""
    out: dict[str, float | dict[str, float]] = dict(evaluate(score_fn, cases, n_items, "full", k=k, seed=seed))
    out["sampled100"] = evaluate(score_fn, cases, n_items, "sampled100", k=k, seed=seed)
    return out


def evaluate_recommender(
    score_fn: ScoreFn, popularity: np.ndarray, data: InteractionData, split: Split = "test", k: int = 10, seed: int = 0
) -> dict[str, object]:
    """The report of ``outerloop eval``: full and sampled metrics of ``score_fn`` on ``split``,
    and the popularity baseline (from ``popularity``, the training counts) beside them."""
    cases = leave_one_out(data, split)
    n_items = len(data.catalog)
    out: dict[str, object] = {"split": split, "n_users": len(cases)}
    out.update(evaluate_protocols(score_fn, cases, n_items, k=k, seed=seed))
    out["popularity"] = evaluate_protocols(popularity_scorer(popularity), cases, n_items, k=k, seed=seed)
    return out


def popularity_scorer(popularity: np.ndarray) -> ScoreFn:
    """Scores every user with the items' training interaction counts."""
    pop = np.asarray(popularity, dtype=np.float64)

    def score(histories: list[np.ndarray], actions: object = None, ts: object = None) -> np.ndarray:
        return np.broadcast_to(pop, (len(histories), pop.shape[0]))

    return score


def random_scorer(n_items: int, seed: int = 0) -> ScoreFn:
    """Uniform random scores: the floor every recommender must clear."""
    rng = np.random.default_rng(seed)

    def score(histories: list[np.ndarray], actions: object = None, ts: object = None) -> np.ndarray:
        return rng.random((len(histories), n_items + 1))

    return score


def item_counts(sequences: Sequence[UserSequence], n_items: int) -> np.ndarray:
    """(N+1,) interaction counts of each item in ``sequences`` (index 0 unused)."""
    if not sequences:
        return np.zeros(n_items + 1, dtype=np.int64)
    return np.bincount(np.concatenate([u.items for u in sequences]).astype(np.int64), minlength=n_items + 1)[: n_items + 1]
