"""The outer loop's heavy model and its agent: EASE in closed form, an ensemble trained by the
project's own training code and chosen on validation, saved and reloaded, run by the built-in
ensemble agent under its budget, and read by the funnel as a log-prob row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from outerloop.errors import UserInputError
from outerloop.inner_loop.model.ensemble import EaseModel, Ensemble, EnsembleConfig, _simplex, train_ensemble
from tests.redis_fixtures import pytest_generate_tests, redis_keys, redis_target  # noqa: F401
from tests.api.test_api_fixtures import tiny_artifacts, tiny_data, tiny_dir  # noqa: F401

TINY = EnsembleConfig(extra_transformers=1, max_minutes=0.01, ease_lambdas=(10.0, 100.0), half_lives=(0.0, 5.0),
                      weight_step=0.25)


def test_ease_learns_which_item_goes_with_which() -> None:
    # items 1..4 always together, 5..8 always together: a history of 1 and 2 points at 3 and 4
    seqs = [np.asarray([1, 2, 3, 4])] * 20 + [np.asarray([5, 6, 7, 8])] * 20
    model = EaseModel.fit(EaseModel.gram(seqs, 8), lam=1.0)
    assert np.allclose(np.diag(model.weights), 0.0)  # an item never explains itself
    s = model.scores([np.asarray([1, 2])])[0]
    assert set(np.argsort(-s)[:2].tolist()) == {3, 4}
    assert s[3] > s[6] and s[4] > s[7]
    recent = EaseModel(model.weights, half_life=1.0)
    assert recent.user_weights(np.asarray([1, 2, 3])).tolist() == pytest.approx([0.25, 0.5, 1.0])


def test_weight_grid_covers_the_simplex() -> None:
    grid = _simplex(3, 0.5)
    assert len(grid) == 6 and all(abs(sum(w) - 1.0) < 1e-9 for w in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.5, 0.0, 0.5) in grid


def test_seeds_share_one_weight_unless_asked_otherwise() -> None:
    """Transformers that differ only by seed are exchangeable: by default they share one weight
    and only EASE's share is fitted; ``tie_transformers=False`` searches the whole simplex."""
    from outerloop.inner_loop.model.ensemble import _weight_grid

    names = ["base", "member-1", "member-2", "ease"]
    tied = _weight_grid(names, EnsembleConfig(weight_step=0.25))
    assert [w[3] for w in tied] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(w[0] == w[1] == w[2] and abs(sum(w) - 1.0) < 1e-9 for w in tied)
    assert _weight_grid(["base", "member-1"], EnsembleConfig()) == [(0.5, 0.5)]
    free = _weight_grid(names, EnsembleConfig(weight_step=0.25, tie_transformers=False))
    assert len(free) == len(_simplex(4, 0.25)) and (0.0, 1.0, 0.0, 0.0) in free


@pytest.fixture(scope="module")
def ensemble_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A copy of the tiny artifacts with an ensemble trained next to them (the shared fixture's
    directory stays without one, so other tests' loops do not pick it up)."""
    from outerloop.data.datasets import load_dataset
    from outerloop.inner_loop.model.artifacts import Artifacts
    from tests.api.test_api_fixtures import SYNTHETIC

    out = tmp_path_factory.mktemp("ens") / "arts"
    shutil.copytree(tiny_dir, out)
    data = load_dataset("synthetic", None, **{k: int(v) for k, v in (kv.split("=") for kv in SYNTHETIC)})
    train_ensemble(Artifacts.load(out), data, TINY, progress=False)
    return out


def test_ensemble_is_chosen_on_validation_saved_and_reloaded(ensemble_dir: Path, tiny_data: Any) -> None:  # noqa: F811
    from outerloop.inner_loop.model.evaluate import leave_one_out
    from outerloop.inner_loop.model.artifacts import Artifacts

    base = Artifacts.load(ensemble_dir)
    ens = Ensemble.load(base)
    assert ens.names == ["base", "member-1", "ease"]
    assert sum(ens.weights.values()) == pytest.approx(1.0)
    assert ens.temperature in TINY.temperatures
    rep = ens.report
    assert set(rep["valid"]) >= {"base_ndcg@10", "member-1_ndcg@10", "ease_ndcg@10", "ensemble_ndcg@10"}
    # the mix is the best of the grid on validation, so never below its best single member there
    assert rep["valid"]["ensemble_ndcg@10"] >= max(rep["valid"][f"{n}_ndcg@10"] for n in ens.names) - 1e-9
    assert (ensemble_dir / "ensemble" / "member-1" / "manifest.json").is_file()
    member = Artifacts.load(ensemble_dir / "ensemble" / "member-1")
    assert member.model_version != base.model_version and member.config.to_dict() == base.config.to_dict()

    cases = leave_one_out(tiny_data, "test")
    hist = cases.histories[:4]
    lp = ens.log_probs(hist)
    assert np.allclose(np.exp(lp).sum(1), 1.0, atol=1e-4)  # a distribution over the unseen catalog
    for r, h in enumerate(hist):
        assert np.all(np.isneginf(lp[r, h])) and np.isneginf(lp[r, 0])
    top = ens.top(hist[0], 5)
    assert len(top) == 5 and [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert not {i for i, _ in top} & set(hist[0].tolist())
    # reloading gives the same numbers; another base model is refused
    again = Ensemble.load(Artifacts.load(ensemble_dir))
    assert np.allclose(again.log_probs(hist), lp, atol=1e-5)
    other = Artifacts.load(ensemble_dir / "ensemble" / "member-1")
    other.dir = ensemble_dir
    with pytest.raises(UserInputError, match="trained for model"):
        Ensemble.load(other)


def test_branches_are_the_top_items_of_each_continued_history(ensemble_dir: Path, tiny_data: Any) -> None:  # noqa: F811
    """``branches`` (history encoded once, one token per continuation, EASE updated linearly)
    gives what ``top`` gives on each continued history, x taken at the newest event's time."""
    from outerloop.data.schema import ACTION_ID
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.model.evaluate import leave_one_out

    ens = Ensemble.load(Artifacts.load(ensemble_dir))
    cases = leave_one_out(tiny_data, "test")
    rows = [r for r in range(len(cases)) if len(cases.histories[r]) >= 3]
    ends_skipped = [r for r in rows if cases.actions is not None and cases.actions[r][-1] == ACTION_ID["skip"]]
    checked = 0
    for r in rows[:2] + ends_skipped[:1] + rows[2:]:  # one whose newest event is a skip, when there is one
        h = np.asarray(cases.histories[r], dtype=np.int64)
        a = None if cases.actions is None else np.asarray(cases.actions[r], dtype=np.int64)
        t = None if cases.ts is None else np.asarray(cases.ts[r], dtype=np.int64)
        after = [i for i, _ in ens.top(h, 4, actions=a, ts=t)]
        got = ens.branches(h, after, 7, actions=a, ts=t, floor_at=12)
        assert [b.after for b in got] == after
        taken = None if a is None else next((int(x) for x in a[::-1] if x != ACTION_ID["skip"]), int(a[-1]))
        for b in got:
            want = ens.top(np.r_[h, b.after], 12, actions=None if a is None else np.r_[a, taken],
                           ts=None if t is None else np.r_[t, t[-1]], exclude=np.r_[h, b.after])
            assert b.item_ids.tolist() == [i for i, _ in want[:7]]
            assert np.allclose(b.log_probs, [s for _, s in want[:7]], atol=1e-4)
            assert b.floor == pytest.approx(want[11][1], abs=1e-4)
            assert b.after not in b.item_ids and not set(b.item_ids.tolist()) & set(h.tolist())
        assert got[0].item_ids.tolist() != got[1].item_ids.tolist()  # the continuation matters
        checked += 1
        if checked == 3:
            break
    assert checked == 3
    assert ens.branches(np.zeros(0, np.int64), [1, 2], 5) == []


def test_existing_members_are_reused_not_retrained(ensemble_dir: Path, tiny_data: Any) -> None:  # noqa: F811
    from outerloop.inner_loop.model.artifacts import Artifacts

    ens = train_ensemble(Artifacts.load(ensemble_dir), tiny_data, TINY, progress=False)
    assert ens.report["trained_now"] == []


async def test_ensemble_agent_commits_a_log_prob_row_the_funnel_reads(
        ensemble_dir: Path, tiny_data: Any, redis_target: Any, redis_keys: Any) -> None:  # noqa: F811
    from outerloop.contracts.triggers import Trigger
    from outerloop.agents.loop import OuterLoop
    from outerloop.contracts.budget import Budget
    from outerloop.contracts.events import Event
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.serving.funnel import Funnel, log_prob_row
    from outerloop.contracts.rows import live_rows
    from outerloop.inner_loop.serving.user_state import UserStore, seed_history

    arts = Artifacts.load(ensemble_dir)
    user = tiny_data.users[0]
    items = user.items[:-1].astype(np.int64)
    ts = [1_700_000_000_000 + 60_000 * i for i in range(items.shape[0])]
    sync = redis_target.sync_client()
    client = redis_target.async_client()
    try:
        seed_history(sync, "u1", items.tolist()[:-2], history_cap=200, ts_ms=ts[:-2], keys=redis_keys)
        # a generous budget: this test is about the row, not the deadline (a loaded machine is slow)
        budget = Budget(latency_ms=5000, max_tool_calls=2, max_llm_tokens=0)
        async with OuterLoop(arts, redis=client, keys=redis_keys, clock_ms=lambda: ts[-1] + 1,
                             budgets={"ensemble": budget}) as loop:
            assert "ensemble" in loop.agents and loop.ensemble is not None
            events = [Event(event_id=f"e{i}", user_id="u1", item_id=int(items[i]), type="rate", ts=ts[i])
                      for i in range(items.shape[0] - 2)]
            res = await loop.run_cycle("u1", [Trigger.session_closed(events[-5:])], now_ms=ts[-1] + 1)
        rec = next(r for r in res.records if r.agent == "ensemble")
        assert rec.outcome == "ok" and rec.elapsed_ms <= rec.budget_ms
        row = res.rows_committed["ensemble_picks"]
        assert row.score_kind == "log_prob" and row.history_ts == ts[-3]
        assert all(s <= 0 for _, s in row.items) and not set(row.item_ids()) & set(items.tolist()[:-2])
        # two more interactions arrive: the funnel reads the row as two events stale
        seed_history(sync, "u1", items.tolist(), history_cap=200, ts_ms=ts, keys=redis_keys)
        state = await UserStore(client, history_cap=200, keys=redis_keys).read("u1", 200)
        rows, _ = live_rows(state.rows, now_ms=ts[-1] + 1, n_items=len(arts.catalog), limit=8)
        lp = log_prob_row(rows, state.ts)
        assert lp is not None and lp.events_since == 2
        rec_out = Funnel(arts, None).recommend(state, 10, now_ms=ts[-1] + 1)
        assert "ensemble_picks" in [r.row_id for r in rec_out.rows]
        # what the row does not set is left out of what is stored: a reader older than a field decodes it
        stored = json.loads(state.rows["ensemble_picks"])
        assert "floor" not in stored and "branches" in stored

        # the row carries branches for its likeliest items; a user whose next item was one of
        # them is served that branch (one interaction stale: fresh), the others the row itself
        assert row.branches is not None and row.branches.after == row.item_ids()[: len(row.branches.after)]
        guessed, branch_items, _ = row.branches.after[1], *row.branches.branch(row.branches.after[1])[:2]
        for nxt, continued in ((guessed, True), (int(items[0]), False)):  # items[0]: seen, never a branch
            hist = items.tolist()[:-2] + [nxt]
            seed_history(sync, "u1", hist, history_cap=200, ts_ms=ts[:-1], keys=redis_keys)
            state = await UserStore(client, history_cap=200, keys=redis_keys).read("u1", 200)
            funnel = Funnel(arts, None)
            served = next(r for r in funnel.recommend(state, 300, now_ms=ts[-1] + 1).rows if r.row_id == "ensemble_picks")
            assert funnel.stats["rows_continued"] == int(continued)
            want = branch_items if continued else np.asarray(row.item_ids())
            assert set(served.item_ids.tolist()) == set(want.tolist()) - set(hist)
    finally:
        await client.aclose()
        sync.close()
