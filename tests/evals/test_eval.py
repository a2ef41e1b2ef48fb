"""Offline metrics on hand-computed examples, and the leave-one-out split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from outerloop.data.schema import Catalog, InteractionData, Item, UserSequence
from outerloop.inner_loop.model.evaluate import (
    EvalCases,
    evaluate,
    hit_ndcg,
    leave_one_out,
    popularity_scorer,
    random_scorer,
    sample_negatives,
    target_ranks,
    train_sequences,
)


def fixed_scorer(scores: np.ndarray):
    def score(histories, actions=None, ts=None):
        return np.tile(scores, (len(histories), 1))

    return score


def cases(histories: list[list[int]], targets: list[int], interacted: list[list[int]] | None = None) -> EvalCases:
    inter = interacted or [sorted(set(h) | {t}) for h, t in zip(histories, targets)]
    return EvalCases(
        split="test",
        user_ids=[str(i) for i in range(len(targets))],
        histories=[np.asarray(h, dtype=np.int64) for h in histories],
        actions=None,
        ts=None,
        targets=np.asarray(targets, dtype=np.int64),
        interacted=[np.asarray(x, dtype=np.int64) for x in inter],
    )


def test_hit_and_ndcg_by_hand() -> None:
    hit, ndcg = hit_ndcg(np.array([0, 1, 2, 9, 10]), k=10)
    assert hit.tolist() == [1, 1, 1, 1, 0]
    assert ndcg == pytest.approx([1.0, 1 / math.log2(3), 0.5, 1 / math.log2(11), 0.0])


def test_ranks_break_ties_at_random_not_optimistically() -> None:
    rng = np.random.default_rng(0)
    scores = np.zeros((2000, 5))  # everything tied: the target's rank must be uniform on 0..4
    ranks = target_ranks(scores, np.zeros(2000, dtype=np.int64), rng)
    assert set(ranks.tolist()) == {0, 1, 2, 3, 4}
    assert ranks.mean() == pytest.approx(2.0, abs=0.15)
    assert target_ranks(np.array([[3.0, 5.0, 1.0, 4.0]]), np.array([0]), rng).tolist() == [2]


def test_full_ranking_excludes_the_users_earlier_items() -> None:
    scores = np.array([0, 10, 9, 8, 7, 6], dtype=float)  # item 1 best ... item 5 worst
    c = cases([[1, 2]], [3])  # items 1 and 2 were seen: the target is now first
    m = evaluate(fixed_scorer(scores), c, n_items=5, protocol="full", k=1)
    assert m["hr@1"] == 1.0 and m["ndcg@1"] == 1.0
    c = cases([[4]], [3])  # only item 4 seen: 1 and 2 still beat the target -> rank 2
    m = evaluate(fixed_scorer(scores), c, n_items=5, protocol="full", k=10)
    assert m["hr@10"] == 1.0 and m["ndcg@10"] == pytest.approx(0.5)


def test_repeated_target_is_not_excluded() -> None:
    scores = np.array([0, 10, 9, 8], dtype=float)
    c = cases([[1, 2]], [1])  # the user plays item 1 again: it must stay rankable
    m = evaluate(fixed_scorer(scores), c, n_items=3, protocol="full", k=1)
    assert m["hr@1"] == 1.0


def test_item_mask_restricts_the_ranking() -> None:
    scores = np.array([0, 10, 9, 8, 7], dtype=float)
    mask = np.array([False, False, False, True, True])  # only items 3 and 4 compete
    m = evaluate(fixed_scorer(scores), cases([[4]], [3]), n_items=4, protocol="full", k=1, item_mask=mask)
    assert m["hr@1"] == 1.0


def test_sampled_negatives_never_include_interacted_items() -> None:
    rng = np.random.default_rng(1)
    interacted = np.arange(1, 151)  # the user saw items 1..150 of 250
    for _ in range(50):
        neg = sample_negatives(interacted, 250, 100, rng)
        assert neg.shape == (100,) and np.unique(neg).shape == (100,)
        assert neg.min() > 150 and neg.max() <= 250
    with pytest.raises(ValueError):
        sample_negatives(interacted, 250, 101, rng)


def test_sampled_protocol_ranks_against_unseen_items_only() -> None:
    n = 300
    interacted = list(range(1, 151))
    c = cases([list(range(1, 50))], [50], [interacted])
    # scores rise with the id: every unseen item (151..300) outranks the target, seen ones not
    up = evaluate(fixed_scorer(np.arange(n + 1, dtype=float)), c, n_items=n, protocol="sampled100", k=10)
    assert up["hr@10"] == 0.0
    # scores fall with the id: the target beats every unseen item -> rank 0
    down = evaluate(fixed_scorer(-np.arange(n + 1, dtype=float)), c, n_items=n, protocol="sampled100", k=10)
    assert down["ndcg@10"] == 1.0


def toy_data() -> InteractionData:
    catalog = Catalog([Item(item_id=i, source_id=str(i), title=str(i)) for i in range(1, 8)])
    users = [
        UserSequence("a", np.array([1, 2, 3, 4, 5], dtype=np.int32)),
        UserSequence("b", np.array([2, 3], dtype=np.int32)),  # too short to evaluate
        UserSequence("c", np.array([7, 6, 5], dtype=np.int32)),
    ]
    return InteractionData("toy", catalog, users)


def test_leave_one_out_split() -> None:
    data = toy_data()
    valid, test = leave_one_out(data, "valid"), leave_one_out(data, "test")
    assert valid.user_ids == ["a", "c"] and test.user_ids == ["a", "c"]
    assert valid.targets.tolist() == [4, 6] and test.targets.tolist() == [5, 5]
    assert [h.tolist() for h in valid.histories] == [[1, 2, 3], [7]]
    assert [h.tolist() for h in test.histories] == [[1, 2, 3, 4], [7, 6]]
    assert [u.items.tolist() for u in train_sequences(data)] == [[1, 2, 3], [2, 3], [7]]
    with pytest.raises(ValueError):
        leave_one_out(data, "train")  # type: ignore[arg-type]


def test_popularity_beats_random_on_a_popularity_world() -> None:
    rng = np.random.default_rng(0)
    n = 50
    pop = np.r_[0, np.sort(rng.pareto(1.0, n))[::-1] * 100]
    targets = rng.choice(np.arange(1, n + 1), size=400, p=pop[1:] / pop[1:].sum())
    c = cases([[]] * 400, targets.tolist(), [[t] for t in targets])
    p = evaluate(popularity_scorer(pop), c, n_items=n, protocol="full")
    r = evaluate(random_scorer(n), c, n_items=n, protocol="full")
    assert p["ndcg@10"] > r["ndcg@10"] + 0.1
    assert r["hr@10"] == pytest.approx(10 / n, abs=0.06)
