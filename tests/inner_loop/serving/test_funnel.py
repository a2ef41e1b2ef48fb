"""The funnel on real tiny artifacts and a real ranker, without Redis: seen filtering, agent
rows (merged, expired, malformed), cold start, the ranker budget fallback, the vector cache."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from outerloop.inner_loop.serving.funnel import Funnel, FunnelConfig
from outerloop.inner_loop.model.ranker import Ranker
from outerloop.contracts.rows import to_epoch_ms
from outerloop.inner_loop.serving.user_state import UserState
from tests.api.test_api_fixtures import tiny_artifacts, tiny_data, tiny_dir, tiny_ranker  # noqa: F401

NOW = 1_750_000_000_000


def state_of(user_id: str, items: list[int], seen: list[int] | None = None, version: int = 1,
             rows: dict[str, bytes] | None = None) -> UserState:
    n = len(items)
    return UserState(user_id=user_id, items=np.asarray(items, np.int64), actions=np.full(n, 3, np.int64),
                     ts=np.arange(n, dtype=np.int64) + NOW - 10_000, version=version,
                     seen=np.asarray(seen if seen is not None else items, np.int64), rows=rows or {})


def row_json(row_id: str, items: list[int], expires_at: int | str | None, **kw: object) -> bytes:
    return json.dumps({"row_id": row_id, "title": kw.get("title", "Because you watched X"), "reason": "agent said so",
                       "items": [[i, 1.0 - 0.01 * n] for n, i in enumerate(items)], "produced_by": "planner",
                       "run_id": "run-1", "model_version": "m", "created_at": NOW - 1000,
                       "expires_at": expires_at, **({"ordered": True} if kw.get("ordered") else {})}).encode()


# Tests of what the funnel ranks, not of how fast: a request budget no loaded CI machine overruns,
# so the ranker is never skipped for time (the budget fallbacks have their own tests, which set
# their own budgets). With the default 50 ms a first request on a busy machine fell back to
# retrieval order and changed the ranking these tests compare.
ORDERING = FunnelConfig(max_history=50, request_budget_ms=60_000.0)


@pytest.fixture
def funnel(tiny_artifacts, tiny_ranker) -> Funnel:  # noqa: F811
    return Funnel(tiny_artifacts, tiny_ranker, ORDERING)


@pytest.fixture
def history(tiny_data) -> list[int]:  # noqa: F811
    return [int(i) for i in max(tiny_data.users, key=len).items[-30:]]


def top(rec, row_id: str = "top-picks") -> list[int]:
    return next(r for r in rec.rows if r.row_id == row_id).item_ids.tolist()


def test_ranked_top_picks_exclude_seen(funnel: Funnel, history: list[int]) -> None:
    rec = funnel.recommend(state_of("u1", history), 20, now_ms=NOW)
    assert rec.ranker == "model" and not rec.cold_start and not rec.degraded
    picks = top(rec)
    assert len(picks) == 20 and not set(picks) & set(history)
    # what was the first pick becomes seen: it is gone, everything else still ranks
    rec2 = funnel.recommend(state_of("u1", history, seen=history + [picks[0]], version=2), 20, now_ms=NOW)
    assert picks[0] not in top(rec2)


def test_history_changes_the_user_vector(funnel: Funnel, history: list[int]) -> None:
    a = funnel.recommend(state_of("u1", history[:10]), 50, now_ms=NOW)
    b = funnel.recommend(state_of("u1", history[:10] + history[20:30], version=2), 50, now_ms=NOW)
    assert a.encoder_cache == "miss" and b.encoder_cache == "miss"
    assert top(a) != top(b)
    again = funnel.recommend(state_of("u1", history[:10] + history[20:30], version=2), 50, now_ms=NOW)
    assert again.encoder_cache == "hit" and top(again) == top(b)


def test_agent_rows_are_merged_and_expired_or_broken_ones_ignored(funnel: Funnel, history: list[int]) -> None:
    n = funnel.n_items
    fresh_items = [i for i in range(n, 0, -1) if i not in history][:6] + [history[0]]  # one of them is seen
    rows = {
        "because-x": row_json("because-x", fresh_items, NOW + 60_000),
        "stale": row_json("stale", [1, 2, 3], NOW - 1),
        "stale-iso": row_json("stale-iso", [1, 2, 3], "2001-01-01T00:00:00Z"),
        "broken": b"{not json",
        "unknown-items": row_json("unknown-items", [n + 10, -4], None),
    }
    rec = funnel.recommend(state_of("u1", history, rows=rows), 20, now_ms=NOW)
    assert [r.row_id for r in rec.rows] == ["top-picks", "because-x"]
    assert rec.rows_skipped == 4
    agent = rec.rows[1]
    assert agent.produced_by == "planner" and agent.reason == "agent said so" and agent.run_id == "run-1"
    assert set(agent.item_ids.tolist()) == set(fresh_items[:6])  # the seen item is filtered out of rows too
    # the agent's items are candidates of the funnel too, with their origin
    origins = dict(zip(top(rec), rec.rows[0].origins))
    assert all(o in ("ann", "agent", "ann+agent") for o in origins.values())
    boosted = funnel.recommend(state_of("u1", history, rows=rows), funnel.n_items, now_ms=NOW)
    assert set(fresh_items[:6]) <= set(top(boosted))


def test_an_ordered_row_keeps_the_agents_order_and_others_are_ranked(funnel: Funnel, history: list[int]) -> None:
    items = [i for i in range(1, funnel.n_items + 1) if i not in history][:8]
    rows = {"next-up": row_json("next-up", items, NOW + 60_000, ordered=True),
            "ranked": row_json("ranked", items, NOW + 60_000)}
    rec = funnel.recommend(state_of("u1", history, rows=rows), 20, now_ms=NOW)
    by_id = {r.row_id: r for r in rec.rows}
    agent_scores = [1.0 - 0.01 * n for n in range(len(items))]
    assert by_id["next-up"].item_ids.tolist() == items  # as the agent ordered them, with its scores
    assert np.allclose(by_id["next-up"].scores, agent_scores)
    ranked = by_id["ranked"]
    assert sorted(ranked.item_ids.tolist()) == sorted(items)
    assert not np.allclose(sorted(ranked.scores), sorted(agent_scores))  # the funnel's scores, in their order
    assert list(ranked.scores) == sorted(ranked.scores, reverse=True)


def test_cold_start_and_degraded(funnel: Funnel) -> None:
    rec = funnel.recommend(state_of("new", [], seen=[]), 10, now_ms=NOW)
    assert rec.cold_start and [r.row_id for r in rec.rows] == ["popular", "explore"]
    pop, explore = rec.rows[0].item_ids.tolist(), rec.rows[1].item_ids.tolist()
    assert len(pop) == 10 and len(explore) == 10
    counts = np.asarray(funnel.artifacts.popularity)[pop]
    assert list(counts) == sorted(counts, reverse=True)
    genres = {g for i in explore for g in funnel.catalog.items[i - 1].genres}
    assert len(genres) >= 5  # breadth, not ten of one kind
    deg = funnel.degraded(5, "redis_unavailable")
    assert deg.degraded and deg.rows[0].item_ids.tolist() == pop[:5]


class SlowRanker(Ranker):
    def score(self, feats: np.ndarray) -> np.ndarray:
        time.sleep(0.03)
        return super().score(feats)


def test_slow_ranker_falls_back_to_retrieval_order(tiny_artifacts, tiny_dir, history: list[int]) -> None:  # noqa: F811
    slow = Ranker.load(tiny_dir)
    slow.__class__ = SlowRanker
    # a 20 ms share of a long budget: only the ranker's own 30 ms can overrun it, even on a busy machine
    funnel = Funnel(tiny_artifacts, slow, FunnelConfig(max_history=50, request_budget_ms=1000, ranker_share=0.02,
                                                       ranker_probe_s=60))
    first = funnel.recommend(state_of("u1", history), 20, now_ms=NOW)
    assert first.ranker == "model" and "ranker_slow" in first.fallbacks  # paid for once: used
    second = funnel.recommend(state_of("u1", history), 20, now_ms=NOW)
    assert second.ranker == "retrieval_order" and "ranker_over_budget" in second.fallbacks
    scores = second.rows[0].scores
    assert np.all(np.diff(scores) <= 0)  # retrieval scores, best first
    no_time = funnel.recommend(state_of("u1", history), 20, started=time.perf_counter() - 2.0, now_ms=NOW)
    assert "ranker_skipped_request_over_budget" in no_time.fallbacks


def test_without_a_ranker_retrieval_order(tiny_artifacts, history: list[int]) -> None:  # noqa: F811
    rec = Funnel(tiny_artifacts, None, FunnelConfig(max_history=50)).recommend(state_of("u", history), 10, now_ms=NOW)
    assert rec.ranker == "retrieval_order" and rec.fallbacks == ["no_ranker"]


def test_precomputed_baseline_filters_seen(funnel: Funnel) -> None:
    rec = funnel.precomputed("u", np.asarray([5, 6, 7, 8]), np.asarray([6]), 2)
    assert rec.rows[0].item_ids.tolist() == [5, 7]


@pytest.mark.parametrize("value,expected", [
    (1_700_000_000_000, 1_700_000_000_000), (1_700_000_000, 1_700_000_000_000),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000), ("2023-11-14T22:13:20", 1_700_000_000_000),
    ("soon", None), (None, None), (True, None),
])
def test_row_times(value: object, expected: int | None) -> None:
    assert to_epoch_ms(value) == expected


def test_serving_over_a_scaled_synthetic_catalog(tiny_artifacts, tiny_ranker, history: list[int], tmp_path) -> None:  # noqa: F811
    from outerloop.inner_loop.serving.scale import scale_catalog

    n0 = len(tiny_artifacts.catalog)
    big = scale_catalog(tiny_artifacts, 5000, seed=1, cache_dir=tmp_path)
    assert len(big.catalog) == 5000 and big.item_vectors.shape == (5001, tiny_artifacts.item_vectors.shape[1])
    assert big.catalog.items[n0 - 1].title == tiny_artifacts.catalog.items[n0 - 1].title  # trained items kept
    assert list(tmp_path.glob("*.faiss"))  # the index is cached for the next start
    funnel = Funnel(big, tiny_ranker, ORDERING)
    # a history may hold catalog items the model never saw: they are not fed to the encoder
    rec = funnel.recommend(state_of("u1", history + [4999]), 100, now_ms=NOW)
    picks = top(rec)
    assert len(picks) == 100 and max(picks) <= 5000 and any(p > n0 for p in picks)
    again = scale_catalog(tiny_artifacts, 5000, seed=1, cache_dir=tmp_path)
    assert again.index.n_items == 5000


def test_users_the_outer_loop_has_not_reached_are_ranked_by_the_ranker_for_them(
        tiny_artifacts, tiny_ranker, history: list[int]) -> None:  # noqa: F811
    """With ``ranker_without_rows``, a user with no log-prob row is served by it; once the outer
    loop has written one, by the ranker trained for users with rows."""
    from outerloop.inner_loop.model.ranker import Ranker

    reversed_ranker = Ranker(tiny_ranker.model, tiny_ranker.config,
                             weights={o: -w for o, w in tiny_ranker.weights.items()}, covisit=tiny_ranker.covisit)
    plain = Funnel(tiny_artifacts, tiny_ranker, ORDERING)
    both = Funnel(tiny_artifacts, tiny_ranker, ORDERING, ranker_without_rows=reversed_ranker)
    alone = Funnel(tiny_artifacts, reversed_ranker, ORDERING)
    state = state_of("u1", history)
    assert top(both.recommend(state, 10, now_ms=NOW)) == top(alone.recommend(state, 10, now_ms=NOW))
    assert top(both.recommend(state, 10, now_ms=NOW)) != top(plain.recommend(state, 10, now_ms=NOW))
    unseen = [i for i in range(1, plain.n_items + 1) if i not in history][:5]
    lp = json.dumps({"row_id": "ensemble_picks", "title": "t", "reason": "r", "produced_by": "ensemble",
                     "run_id": "r1", "model_version": "m", "created_at": NOW - 1000, "expires_at": NOW + 60_000,
                     "score_kind": "log_prob", "items": [[i, -1.0 - j] for j, i in enumerate(unseen)]}).encode()
    with_row = state_of("u1", history, rows={"ensemble_picks": lp})
    assert top(both.recommend(with_row, 10, now_ms=NOW)) == top(plain.recommend(with_row, 10, now_ms=NOW))


def test_rows_a_ranker_does_not_read_are_served_but_not_ranked(tiny_artifacts, tiny_ranker,
                                                               history: list[int]) -> None:  # noqa: F811
    """``RankerConfig.reads_rows``: a row the ranker does not read neither joins the top row's
    candidates nor sets its features, and is still served as a row of its own; a ranker that
    reads every row ranks its items in."""
    import dataclasses

    few = dataclasses.replace(ORDERING, n_candidates=5)  # the row's items are mostly beyond ANN's five
    reads_lp = Ranker(tiny_ranker.model, dataclasses.replace(tiny_ranker.config, reads_rows=["ensemble_picks"]),
                      covisit=tiny_ranker.covisit)
    assert reads_lp.config.reads_rows == ["ensemble_picks"] and tiny_ranker.config.reads_rows is None
    unseen = [i for i in range(1, tiny_artifacts.index.n_items + 1) if i not in history]
    row_items = unseen[-10:]
    plain, with_row = state_of("u1", history), state_of("u1", history, rows={
        "because": row_json("because", row_items, NOW + 60_000)})
    every, only_lp = Funnel(tiny_artifacts, tiny_ranker, few), Funnel(tiny_artifacts, reads_lp, few)
    assert set(top(every.recommend(with_row, 20, now_ms=NOW))) & set(row_items)  # read: ranked in
    rec = only_lp.recommend(with_row, 20, now_ms=NOW)
    assert top(rec) == top(only_lp.recommend(plain, 20, now_ms=NOW))  # not read: the top row ignores it
    assert not set(top(rec)) - set(top(every.recommend(plain, 20, now_ms=NOW)))
    assert top(rec, "because") == row_items  # ... and serves it as its own row, in the agent's order
    # beside a log-prob row it reads, the unread row still changes nothing in the top row
    lp = json.dumps({"row_id": "ensemble_picks", "title": "t", "reason": "r", "produced_by": "ensemble",
                     "run_id": "r1", "model_version": "m", "created_at": NOW - 1000, "expires_at": NOW + 60_000,
                     "score_kind": "log_prob", "items": [[i, -1.0 - j] for j, i in enumerate(unseen[:5])]}).encode()
    lp_only, lp_and_row = (state_of("u1", history, rows={"ensemble_picks": lp}),
                           state_of("u1", history, rows={"ensemble_picks": lp, "because": with_row.rows["because"]}))
    assert top(only_lp.recommend(lp_and_row, 20, now_ms=NOW)) == top(only_lp.recommend(lp_only, 20, now_ms=NOW))
    assert top(every.recommend(lp_and_row, 20, now_ms=NOW)) != top(every.recommend(lp_only, 20, now_ms=NOW))
    # a user without a log-prob row is ranked by the ranker for users without rows, with the rows *it* reads
    both = Funnel(tiny_artifacts, reads_lp, few, ranker_without_rows=tiny_ranker)
    assert set(top(both.recommend(with_row, 20, now_ms=NOW))) & set(row_items)
