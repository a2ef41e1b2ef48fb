"""Replays: the time split, the metric, and above all leakage: nothing after a served request's
time (or, without timestamps, after its position) is visible to the model or the outer loop.

The inner-vs-outer replay runs the real ``OuterLoop`` (planner, memory, tools, evaluator) on a
real Redis, a real FAISS index and a real (small, untrained) transformer; a spy agent added to
the same cycles records exactly what agents are shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from outerloop.agents.sdk import AgentContext, agent
from outerloop.contracts.budget import Budget
from outerloop.contracts.rows import RowBranches
from outerloop.contracts.run_record import RunRecord
from outerloop.data.schema import Catalog, InteractionData, Item, UserSequence
from outerloop.errors import UserInputError
from outerloop.evals import replay
from outerloop.evals.budget_report import budget_compliance
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401

DAY = replay.DAY_MS
T0 = 1_600_000_000_000 - 1_600_000_000_000 % DAY  # a UTC midnight


def chain_data(n_users: int = 6, n_items: int = 40) -> InteractionData:
    """Users walk items i, i+1, i+2, ... over three days (several events a day)."""
    catalog = Catalog([Item(i, f"m{i}", f"Movie {i}", ("Drama",)) for i in range(1, n_items + 1)])
    users = []
    for u in range(n_users):
        items = np.arange(1 + u, 1 + u + 12, dtype=np.int32)
        ts = np.asarray([T0 + (j // 4) * DAY + (j % 4) * 3_600_000 + u for j in range(12)], dtype=np.int64)
        users.append(UserSequence(f"u{u}", items, ts, np.full(12, 9, dtype=np.int8)))
    return InteractionData("chain", catalog, users)


def next_item_scorer(n_items: int, calls: list[tuple[list[np.ndarray], list[np.ndarray] | None]]) -> Any:
    """Scores the item after the newest history item highest, then higher ids first (so an item
    of the chain the scorer did not point at ranks low); records what it was shown."""

    def score(histories: list[np.ndarray], actions: Any = None, ts: Any = None) -> np.ndarray:
        calls.append((histories, ts))
        out = np.tile(np.arange(n_items + 1) * 1e-3, (len(histories), 1))
        for r, h in enumerate(histories):
            if len(h) and h[-1] < n_items:
                out[r, h[-1] + 1] = 1.0
        return out

    return score


def test_time_split_keeps_the_test_period_out_of_training() -> None:
    data = chain_data()
    cut = replay.time_cut_ms(data, 0.25)
    pre = replay.before(data, cut)
    assert max(int(u.ts.max()) for u in pre.users) < cut
    assert pre.n_interactions + sum(int((u.ts >= cut).sum()) for u in data.users) == data.n_interactions
    with pytest.raises(UserInputError, match="test share"):
        replay.time_cut_ms(data, 1.5)
    no_time = InteractionData("x", data.catalog, [UserSequence("a", np.arange(1, 4, dtype=np.int32))])
    with pytest.raises(UserInputError, match="no timestamps"):
        replay.time_cut_ms(no_time, 0.1)


def test_served_requests_see_only_their_past() -> None:
    data = chain_data()
    cut = replay.time_cut_ms(data, 0.5)
    requests, cold = replay.served_requests(data, cut)
    assert requests and cold == 0
    for r in requests:
        u = data.users[r.user]
        assert r.t_ms >= cut and int(u.items[r.pos]) == r.target
        assert u.ts[:r.fresh_end].max() < r.t_ms and r.fresh_end <= r.pos
        assert r.stale_end <= r.fresh_end
        if r.stale_end:
            assert u.ts[:r.stale_end].max() < replay.day_start_ms(r.t_ms)
        assert (u.ts[r.stale_end:r.fresh_end] >= replay.day_start_ms(r.t_ms)).all()  # same day, after the batch
    sub, _ = replay.served_requests(data, cut, max_requests=5, seed=3)
    assert len(sub) == 5 and [r.t_ms for r in sub] == sorted(r.t_ms for r in sub)


def test_fresh_beats_stale_exactly_when_the_day_had_events() -> None:
    data = chain_data()
    cut = replay.time_cut_ms(data, 0.5)
    requests, _ = replay.served_requests(data, cut)
    calls: list[Any] = []
    out = replay.fresh_vs_stale(data, next_item_scorer(len(data.catalog), calls), requests, k=10)
    # the next-item scorer is perfect on a fresh history; a stale one only helps on the day's first event
    assert out["fresh_ndcg@10"] == 1.0
    first_of_day = [r for r in requests if r.events_since_batch == 0]
    assert 0 < len(first_of_day) < len(requests)
    assert out["stale_ndcg@10"] == pytest.approx(len(first_of_day) / len(requests))
    assert out["fresh_over_stale"] == round(1.0 / out["stale_ndcg@10"], 4)
    assert out["changed_only"]["stale_ndcg@10"] == 0.0
    # what the scorer was shown, in request order: fresh batch then stale batch
    (fresh_h, fresh_ts), (stale_h, stale_ts) = calls
    for r, h, t, sh, st in zip(requests, fresh_h, fresh_ts, stale_h, stale_ts):
        assert r.target not in h.tolist() and t.max() < r.t_ms
        assert len(st) == 0 or st.max() < replay.day_start_ms(r.t_ms)


def test_trained_before_cut_and_the_leakage_guard() -> None:
    data = chain_data(n_users=8)
    cut = replay.time_cut_ms(data, 0.25)
    small = replay.ReplayModel(d_model=8, n_layers=1, max_len=10, epochs=1, patience=1, threads=1)
    arts = replay.train_before_cut(data, cut, small)
    replay.check_trained_before(arts, data, cut)  # its own data: accepted
    assert arts.manifest["replay"]["cut_ms"] == cut
    with pytest.raises(UserInputError, match="may have seen the test period"):
        replay.check_trained_before(arts, data, cut + DAY)  # another cut = other data: refused
    out = replay.run_fresh_vs_stale(data, test_share=0.25, artifacts=arts, k=5)
    assert out["leakage"] == {"max_train_ts_before_cut": True, "every_history_before_its_request": True}
    assert out["n_requests"] > 0 and 0.0 <= out["fresh_ndcg@5"] <= 1.0


def test_paired_lift_interval() -> None:
    inner = np.asarray([0.5, 0.0, 1.0, 0.2] * 10)
    assert replay.paired_lift_ci(inner, inner) == [0.0, 0.0]
    lo, hi = replay.paired_lift_ci(inner, inner * 1.1)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    assert replay.paired_lift_ci(inner[:1], inner[:1]) is None


def test_budget_compliance_from_records_and_dicts() -> None:
    recs = [RunRecord("r1", "tools", 150.0, 90.0, "ok"),
            RunRecord("r2", "tools", 150.0, 161.0, "killed", overrun_ms=11.0),
            RunRecord("r3", "memory", 80.0, 20.0, "ok").to_dict()]
    out = budget_compliance(recs)
    assert (out["runs"], out["killed"], out["retries"], out["kill_rate"]) == (3, 1, 0, round(1 / 3, 4))
    assert out["overrun_p50_ms"] == 11.0 and out["overrun_samples_ms"] == [11.0]
    assert out["by_agent"]["tools"]["elapsed_over_budget_p99"] == pytest.approx(0.6 + 0.99 * (161 / 150 - 0.6), abs=1e-3)
    assert out["by_agent"]["memory"]["budget_ms"] == [80.0]


def untrained_world(n_users: int, seed: int) -> tuple[InteractionData, Any]:
    """A small synthetic world and real artifacts of an untrained tiny transformer over it."""
    from outerloop.data.datasets import load_dataset
    from outerloop.inner_loop.model.evaluate import item_counts, train_sequences
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.model.train import build_model, model_config_for

    data = load_dataset("synthetic", None, n_users=n_users, n_films=60, n_series=3, days=4, seed=seed)
    counts = item_counts(train_sequences(data), len(data.catalog))
    model = build_model(model_config_for(data, d_model=8, n_layers=1, max_len=20), data.catalog, counts)
    return data, Artifacts.from_model(model, data.catalog, counts, {"dataset": "synthetic"})

async def test_outer_loop_sees_only_the_prefix_of_each_served_request(redis_target: Any, redis_keys: Any) -> None:
    data, arts = untrained_world(40, 5)
    seen: dict[str, dict[str, Any]] = {}

    @agent(name="spy", budget=Budget(latency_ms=1000), triggers=("session_closed",), rows=("spy",))
    async def spy(ctx: AgentContext) -> None:
        """Records what an agent of the cycle is shown."""
        seen[ctx.user_id] = {
            "history": ctx.history.items.tolist(),
            "history_ts": ctx.history.ts.tolist(),
            "trigger_items": [e.item_id for t in ctx.triggers for e in t.events],
            "trigger_ts": [e.ts for t in ctx.triggers for e in t.events],
            "now": ctx.now_ms,
        }

    cfg = replay.OuterReplay(n_users=6, seed=2, session_events=5, ingest_events_per_user=5)
    out = await replay.inner_vs_outer(arts, data, config=cfg, redis_target=redis_target, keys=redis_keys,
                                      extra_agents=[spy])
    by_id = {u.user_id: u for u in data.users}
    assert len(seen) == out["users"] == 6
    for user_id, view in seen.items():
        items = by_id[user_id].items.tolist()
        prefix = items[:-1]
        assert view["history"] == prefix[-cfg.history_cap:]  # exactly the prefix, never the served item
        assert view["trigger_items"] == prefix[-cfg.session_events:]
        assert max(view["history_ts"] + view["trigger_ts"]) < view["now"]
    assert out["leakage"]["events_at_or_after_served_item"] == 0
    assert out["leakage"]["events_shown_to_outer_loop"] > 0
    assert out["budget"]["retries"] == 0 and out["budget"]["runs"] >= 6
    assert set(out) >= {"inner_ndcg@10", "outer_ndcg@10", "relative_lift", "what_the_outer_loop_did"}
    plans = out["what_the_outer_loop_did"]["plans"]
    assert sum(n for p, n in plans.items() if "spy" in p.split("+") and "tools" in p.split("+")) == 6


async def test_compiled_rows_come_from_the_validation_prefix_and_match_what_the_funnel_reads(
        redis_target: Any, redis_keys: Any) -> None:
    """The ranker's training rows: one real cycle per user on the validation prefix (all but the
    last two items), returned as the funnel would read them."""
    data, arts = untrained_world(30, 6)
    histories: dict[str, list[int]] = {}

    @agent(name="spy", budget=Budget(latency_ms=1000), triggers=("session_closed",), rows=("spy",))
    async def spy(ctx: AgentContext) -> None:
        """Records the history an agent of the cycle is shown."""
        histories[ctx.user_id] = ctx.history.items.tolist()

    cfg = replay.OuterReplay(n_users=5, seed=3, session_events=5, ingest_events_per_user=5)
    rows = await replay.compile_outer_rows(arts, data, "valid", config=cfg, redis_target=redis_target,
                                           keys=redis_keys, extra_agents=[spy])
    by_id = {u.user_id: u for u in data.users}
    assert set(rows) == set(histories) and len(rows) == 5
    for user_id, per_user in rows.items():
        assert len(per_user) == 1  # one staleness setting: one row set per user
        compiled = per_user[0]
        items = by_id[user_id].items.tolist()
        assert histories[user_id] == items[:-2][-cfg.history_cap:]  # neither validation nor test item
        assert compiled.rows, f"the outer loop compiled no row for {user_id}"
        assert compiled.events_since == 0
        for agent_row in compiled.rows:
            row = agent_row.item_ids
            assert row.dtype == np.int64 and row.size and len(set(row.tolist())) == row.size
            assert np.all((row >= 1) & (row <= len(data.catalog)))
            assert not set(row.tolist()) & set(items[:-2])  # rows hold only unseen items


async def test_stale_rows_are_compiled_from_the_history_k_interactions_back(redis_target: Any, redis_keys: Any) -> None:
    """At staleness k the outer loop (its cycle and the co-watch/trending it reads) sees each
    prefix without its last k items, and the funnel serves from the whole prefix, reading the
    row's staleness from the events since the row's ``history_ts``."""
    data, arts = untrained_world(30, 7)
    seen: dict[str, list[int]] = {}

    @agent(name="spy", budget=Budget(latency_ms=1000), triggers=("session_closed",), rows=("spy",))
    async def spy(ctx: AgentContext) -> None:
        """Records the history and emits a log-prob row, as the ensemble agent does."""
        seen[ctx.user_id] = ctx.history.items.tolist()
        unseen = [i for i in range(1, len(ctx.catalog.items) + 1) if i not in ctx.seen][:5]
        # a branch for every item: whatever the user does next, the funnel serves its branch
        branches = RowBranches.pack([(i, [(unseen[0], -0.5)], None) for i in range(1, len(ctx.catalog.items) + 1)])
        ctx.emit_row("spy", title="spy", reason="test", items=[(i, -1.0 - j) for j, i in enumerate(unseen)],
                     score_kind="log_prob", branches=branches)

    cfg = replay.OuterReplay(n_users=4, seed=1, session_events=5, ingest_events_per_user=5, staleness=(0, 3))
    out = await replay.inner_vs_outer(arts, data, config=cfg, redis_target=redis_target, keys=redis_keys,
                                      extra_agents=[spy])
    assert [r["staleness"] for r in out["by_staleness"]] == [0, 3]
    by_id = {u.user_id: u for u in data.users}
    for user_id, history in seen.items():  # the last cycle of each user ran at k = 3 (keeping one item at least)
        prefix = by_id[user_id].items.tolist()[:-1]
        assert history == prefix[:max(1, len(prefix) - 3)][-cfg.history_cap:]
    assert out["leakage"]["events_at_or_after_served_item"] == 0
    assert out["leakage"]["events_after_the_staleness_cut"] == 0
    served_branch = [r["what_the_outer_loop_did"]["users_served_a_row_branch"] for r in out["by_staleness"]]
    assert served_branch == [0, 4]  # fresh rows are served as they are; three behind, as the branch
    for r in out["by_staleness"]:
        assert "spy" in r["ablation_each_row_removed"]
        assert r["cost"]["cycles_per_interaction"] == round(1 / (r["staleness"] + 1), 4)
        assert r["cost"]["outer_loop_cpu_ms_per_cycle"]["mean"] > 0
        # the lift over every inner arm, the chosen one giving the headline
        each = r["lift_over_each_inner_arm"]
        assert set(each) == set(out["inner_arms"]) and each[out["inner_arm"]]["relative_lift"] == r["relative_lift"]
        assert each[out["inner_arm"]]["relative_lift_ci95"] == r["relative_lift_ci95"]
    # what the funnel reads: the spy's row, three events behind the user's history
    compiled = await replay.compile_outer_rows(arts, data, "valid", config=cfg, redis_target=redis_target,
                                               keys=redis_keys, extra_agents=[spy])
    assert all(len(v) == 1 for v in compiled.values()) and len(compiled) == 4
    assert {c.events_since for v in compiled.values() for c in v} <= {0, 3}
    for v in compiled.values():
        lp = next(r.row for r in v[0].rows if r.row.row_id == "spy")
        assert lp.log_prob and lp.history_ts is not None
    # every user fresh as well: two row sets each, k = 0 first, each compiled from its own cut
    seen.clear()
    both = await replay.compile_outer_rows(arts, data, "valid", config=cfg, redis_target=redis_target,
                                           keys=redis_keys, extra_agents=[spy], every_user_at=(0,))
    assert len(both) == 4
    for user_id, v in both.items():
        prefix = by_id[user_id].items.tolist()[:-2]  # the validation cut
        assert [c.events_since for c in v] == [0, min(3, len(prefix) - 1)]
        ids = [set(next(r for r in c.rows if r.row.row_id == "spy").item_ids.tolist()) for c in v]
        assert not ids[0] & set(prefix) and not ids[1] & set(prefix[:max(1, len(prefix) - 3)])
        assert seen[user_id] == prefix[:max(1, len(prefix) - 3)][-cfg.history_cap:]  # the k = 3 cycle ran last
