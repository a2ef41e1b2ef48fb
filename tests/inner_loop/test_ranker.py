"""The multi-task ranker: features, save/load, objective weights, and the trained ranker's
report (it must beat retrieval order on the test cut it never trained or selected on)."""

from __future__ import annotations

import numpy as np
import pytest

from outerloop.inner_loop.model.ranker import FEATURE_NAMES, OBJECTIVES, FeatureTables, Ranker, candidate_features
from outerloop.inner_loop.ranker_train import ranking_metrics, seen_items
from tests.api.test_api_fixtures import tiny_artifacts, tiny_data, tiny_dir, tiny_ranker  # noqa: F401


@pytest.fixture
def tables(tiny_artifacts) -> FeatureTables:  # noqa: F811
    return FeatureTables.build(tiny_artifacts.catalog, tiny_artifacts.item_vectors, tiny_artifacts.popularity)


def test_features_are_computed_for_all_candidates_at_once(tables: FeatureTables) -> None:
    cand = np.asarray([1, 2, 3, 4], np.int64)
    retr = np.asarray([0.5, 2.0, 1.0, -1.0], np.float32)
    row_pos = np.asarray([-1, 0, -1, 3], np.int64)
    hist = np.asarray([5, 6, 2], np.int64)
    f = candidate_features(tables, hist, cand, retr, row_pos)
    assert f.shape == (4, len(FEATURE_NAMES)) and f.dtype == np.float32
    col = {n: f[:, i] for i, n in enumerate(FEATURE_NAMES)}
    assert col["score_gap"].tolist() == [-1.5, 0.0, -1.0, -3.0]
    assert np.argsort(col["retrieval_rank"]).tolist() == [1, 2, 0, 3]
    assert col["in_agent_row"].tolist() == [0, 1, 0, 1]
    assert col["agent_row_position"].tolist() == [0.0, 1.0, 0.0, 0.25]
    assert col["last_similarity"][1] == pytest.approx(1.0, abs=1e-5)  # item 2 is the newest history item
    assert np.all((col["popularity"] >= 0) & (col["popularity"] <= 1))
    empty = candidate_features(tables, np.asarray([], np.int64), cand, retr, row_pos)
    assert np.all(empty[:, FEATURE_NAMES.index("genre_affinity")] == 0)


def test_save_load_and_weights(tiny_ranker, tiny_dir, tables: FeatureTables, tmp_path) -> None:  # noqa: F811
    feats = candidate_features(tables, np.asarray([3, 4]), np.arange(1, 30), np.linspace(1, 0, 29, dtype=np.float32),
                               np.full(29, -1))
    tiny_ranker.save(tmp_path)
    again = Ranker.load(tmp_path)
    assert np.allclose(again.score(feats), tiny_ranker.score(feats))
    z = again.logits(feats)
    assert z.shape == (29, len(OBJECTIVES))
    only_rel = Ranker.load(tmp_path, {"relevance": 1.0})
    assert np.allclose(only_rel.score(feats), z[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="unknown ranker objectives"):
        again.set_weights({"clicks": 1.0})


def test_trained_ranker_beats_retrieval_order_on_test(tiny_ranker) -> None:  # noqa: F811
    rep = tiny_ranker.config.report
    test = rep["test"]
    assert test["ranker"]["ndcg@10"] > test["retrieval_order"]["ndcg@10"]
    assert rep["test_lift_over_retrieval"]["ndcg@10"] > 0
    assert set(tiny_ranker.weights) == set(OBJECTIVES) and tiny_ranker.weights["relevance"] == 1.0
    assert rep["users_val"] > 0 and rep["best_epoch"] >= 1


def test_each_head_reports_its_own_validation_metric(tiny_ranker) -> None:  # noqa: F811
    """The synthetic world skips some of what it starts, so the ``liked`` head is trained on those
    observations and scored by ROC AUC at the held-out targets; relevance by NDCG@10."""
    heads = tiny_ranker.config.report["heads"]
    assert tiny_ranker.config.objectives == OBJECTIVES
    assert heads["relevance"]["metric"] == "ndcg@10" and 0 < heads["relevance"]["val"] <= 1
    liked = heads["liked"]
    assert liked["val_targets"] > 0 and 0 < liked["val_targets_liked_share"] < 1
    # an AUC exists only where the held-out targets hold both liked and disliked items
    assert liked["test"] is not None and liked["val"] is not None


def test_without_negative_engagement_there_is_no_liked_head(tiny_artifacts, tiny_data, tmp_path) -> None:  # noqa: F811
    """Data in which every target is a plain rating (SASRec's ML-1M) gives the liked head nothing
    to learn: the ranker has the relevance head alone and says why, and asking for a liked
    weight is an error naming the objectives it has."""
    import dataclasses

    from outerloop.data.schema import ACTION_ID
    from outerloop.inner_loop.ranker_train import train_ranker

    rated = dataclasses.replace(tiny_data, users=[
        dataclasses.replace(u, actions=np.full(len(u), ACTION_ID["rate"], np.int8)) for u in tiny_data.users])
    r = train_ranker(tiny_artifacts, rated, epochs=2, patience=1, max_history=50, bags=2, out_dir=tmp_path)
    assert r.config.objectives == ("relevance",) and r.weights == {"relevance": 1.0}
    assert r.config.report["heads"]["liked"]["trained"] is False
    assert Ranker.load(tmp_path).logits(np.zeros((3, len(FEATURE_NAMES)), np.float32)).shape == (3, 1)
    with pytest.raises(ValueError, match="unknown ranker objectives.*relevance"):
        r.set_weights({"relevance": 1.0, "liked": 0.5})


def test_bagged_towers_average_and_old_files_load(tiny_ranker, tables: FeatureTables, tmp_path) -> None:  # noqa: F811
    """A bagged ranker's logits are its towers' mean (the held-out users chose how many), and a
    ranker file saved before towers existed (keys ``trunk.*``/``heads.*``) still loads."""
    import torch

    from outerloop.inner_loop.model.ranker import MultiTaskRanker

    m = tiny_ranker.model
    assert m.bags == tiny_ranker.config.bags == tiny_ranker.config.report["bags"]
    assert set(tiny_ranker.config.report["val_ndcg@10_by_bags"]) == {str(n) for n in range(1, 6)}
    x = torch.randn(7, len(FEATURE_NAMES))
    with torch.inference_mode():
        each = torch.stack([t(x) for t in m.towers])
        assert torch.allclose(m(x), each.mean(0), atol=1e-6)
    one = MultiTaskRanker(len(FEATURE_NAMES), tiny_ranker.config.hidden, OBJECTIVES)
    one.towers[0].load_state_dict(m.towers[0].state_dict())
    old_format = {k.removeprefix("towers.0."): v for k, v in one.state_dict().items()}
    again = MultiTaskRanker(len(FEATURE_NAMES), tiny_ranker.config.hidden, OBJECTIVES)
    again.load_state_dict(old_format)
    with torch.inference_mode():
        assert torch.allclose(again(x), m.towers[0](x))


def test_roc_auc_counts_ties_half() -> None:
    from outerloop.inner_loop.ranker_train import roc_auc

    assert roc_auc(np.asarray([0.1, 0.4, 0.35, 0.8]), np.asarray([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.asarray([1.0, 1.0]), np.asarray([0, 1])) == pytest.approx(0.5)
    assert roc_auc(np.asarray([0.3, 0.2]), np.asarray([1, 1])) is None


def test_seen_items_follow_serving() -> None:
    hist = np.asarray([1, 2, 3, 4])
    assert seen_items(hist, None).tolist() == [1, 2, 3, 4]  # MovieLens: every interaction is a rating
    assert seen_items(hist, np.asarray([3, 6, 7, 8])).tolist() == [2, 3]  # play, finish, skip, add_to_list


def test_ranking_metrics_count_misses() -> None:
    from outerloop.inner_loop.ranker_train import Examples

    ex = Examples(feats=np.zeros((2, 3, len(FEATURE_NAMES)), np.float32), mask=np.ones((2, 3), bool),
                  relevance=np.asarray([[0, 1, 0], [0, 0, 0]], np.float32), liked=np.full(2, np.nan, np.float32),
                  retrieval=np.zeros((2, 3), np.float32), user_ids=["a", "b"], items=np.ones((2, 3), np.int64))
    m = ranking_metrics(np.asarray([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), ex, ks=(1, 2))
    assert m["hr@1"] == 0.0 and m["hr@2"] == 0.5 and m["recall@candidates"] == 0.5
    assert m["ndcg@2"] == pytest.approx(0.5 / np.log2(3))


def test_covisitation_counts_what_follows() -> None:
    from outerloop.inner_loop.model.covisit import CoVisitation

    co = CoVisitation.build([np.asarray([1, 2, 3]), np.asarray([1, 2]), np.asarray([4, 1])], n_items=5, window=2, top_k=1)
    s = co.scores(np.asarray([1, 2, 9]), np.asarray([2, 3, 4, 5]))
    assert s.shape == (3, 4)
    assert s[0, 0] > 0 and s[0, 1] == 0  # 1 -> 2 is the top successor of 1; top_k=1 drops 1 -> 3
    assert s[1, 1] > 0 and s[1, 0] == 0  # 2 -> 3 once, nothing else
    assert not s[2].any()  # an item without a row (grown catalog): no signal, no error


def test_a_ranker_trained_on_fewer_features_still_scores(tiny_ranker, tables: FeatureTables) -> None:  # noqa: F811
    from outerloop.inner_loop.model.ranker import MultiTaskRanker, RankerConfig

    names = FEATURE_NAMES[:11]
    cfg = RankerConfig(features=names, hidden=8, mean=[0.0] * 11, std=[1.0] * 11)
    old = Ranker(MultiTaskRanker(11, 8, OBJECTIVES), cfg)
    feats = candidate_features(tables, np.asarray([3]), np.arange(1, 6), np.ones(5, np.float32), np.full(5, -1))
    assert old.score(feats).shape == (5,)
    with pytest.raises(ValueError, match="does not compute"):
        Ranker(MultiTaskRanker(1, 8, OBJECTIVES), RankerConfig(features=("telepathy",), hidden=8, mean=[0.0], std=[1.0]))


def test_training_lists_merge_given_agent_rows_as_serving_does(tiny_artifacts, tiny_data, tables) -> None:  # noqa: F811
    """``build_examples(agent_rows=...)``: a user's rows are merged with the funnel's own merge
    (items outside the ANN candidates added, best position kept); a user without rows gets none."""
    from outerloop.inner_loop.model.evaluate import leave_one_out
    from outerloop.inner_loop.ranker_train import build_examples

    cases = leave_one_out(tiny_data, "valid")
    with_rows, without = cases.user_ids[0], cases.user_ids[1]
    seen = set(cases.histories[0].tolist())
    unseen = [i for i in range(1, len(tiny_artifacts.catalog) + 1) if i not in seen]
    from outerloop.contracts.rows import AgentRow, CompiledRows, Row

    def agent_row(row_id: str, ids: list[int], scores: list[float] | None = None, kind: str = "relative") -> AgentRow:
        row = Row(row_id=row_id, title=row_id, reason="", items=list(zip(ids, scores or [0.0] * len(ids))),
                  produced_by="test", run_id="r", model_version="m", created_at=0, expires_at=1, score_kind=kind)
        served = AgentRow.of(row, len(tiny_artifacts.catalog))
        assert served is not None
        return served

    row_a, row_b = np.asarray(unseen[:6], np.int64), np.asarray([unseen[5], unseen[6]], np.int64)
    lp_ids, lp_scores = [unseen[6], unseen[7]], [-0.5, -2.0]  # a log-prob row, compiled 2 interactions back
    ex = build_examples(tiny_artifacts, tables, tiny_data, "valid", n_candidates=5,
                        agent_rows={with_rows: [CompiledRows([agent_row("a", row_a.tolist()), agent_row("b", row_b.tolist()),
                                                              agent_row("lp", lp_ids, lp_scores, "log_prob")], 2)]})
    col = {n: FEATURE_NAMES.index(n) for n in ("in_agent_row", "agent_row_position", "log_prob", "log_prob_gap",
                                               "has_log_prob_row", "log_prob_row_staleness")}
    first = ex.user_ids.index(with_rows)
    items = ex.items[first][ex.mask[first]].tolist()
    feats = ex.feats[first][ex.mask[first]]
    best_pos = {int(i): p for p, i in enumerate(row_a.tolist())} | {unseen[5]: 0, unseen[6]: 1}  # best of both rows
    assert set(best_pos) <= set(items)  # every row item is a candidate, even beyond the 5 ANN ones
    assert set(lp_ids) <= set(items)  # the log-prob row's items are candidates too ...
    lp = dict(zip(lp_ids, lp_scores))
    for i, f in zip(items, feats):
        assert f[col["in_agent_row"]] == (i in best_pos)  # ... but only relative rows give positions
        assert f[col["agent_row_position"]] == pytest.approx(1 / (1 + best_pos[i]) if i in best_pos else 0.0)
        assert f[col["log_prob"]] == pytest.approx(lp.get(i, -3.0))  # not in the row: its minimum minus one
        assert f[col["log_prob_gap"]] == pytest.approx(lp.get(i, -3.0) + 0.5)
        assert f[col["has_log_prob_row"]] == 1.0
        assert f[col["log_prob_row_staleness"]] == pytest.approx(np.log1p(2))
    other = ex.user_ids.index(without)
    assert not ex.feats[other][ex.mask[other]][:, col["in_agent_row"]].any()
    assert not ex.feats[other][ex.mask[other]][:, col["has_log_prob_row"]].any()
    assert ex.mask[other].sum() <= 5
    # a ranker that reads only the log-prob row learns from lists without the others, as it is served
    only_lp = build_examples(tiny_artifacts, tables, tiny_data, "valid", n_candidates=5, reads_rows=["lp"],
                             agent_rows={with_rows: [CompiledRows([agent_row("a", row_a.tolist()),
                                                                   agent_row("lp", lp_ids, lp_scores, "log_prob")], 2)]})
    f_lp = only_lp.feats[first][only_lp.mask[first]]
    assert not f_lp[:, col["in_agent_row"]].any() and f_lp[:, col["has_log_prob_row"]].all()
    assert set(lp_ids) <= set(only_lp.items[first][only_lp.mask[first]].tolist())
    assert only_lp.mask[first].sum() < ex.mask[first].sum()  # row a's items beyond ANN's five are not candidates
    # rows compiled at two staleness settings: two examples of that user, same ANN candidates, own rows
    fresh = CompiledRows([agent_row("lp", lp_ids, lp_scores, "log_prob")], 0)
    stale = CompiledRows([agent_row("lp", [unseen[8]], [-1.0], "log_prob")], 5)
    two = build_examples(tiny_artifacts, tables, tiny_data, "valid", n_candidates=5,
                         agent_rows={with_rows: [fresh, stale]})
    assert len(two) == len(cases) + 1 and two.user_ids.count(with_rows) == 2
    at = [n for n, u in enumerate(two.user_ids) if u == with_rows]
    f0, f1 = (two.feats[n][two.mask[n]] for n in at)
    assert f0[:, col["log_prob_row_staleness"]] == pytest.approx(0.0)
    assert f1[:, col["log_prob_row_staleness"]] == pytest.approx(np.log1p(5))
    i0, i1 = (set(two.items[n][two.mask[n]].tolist()) for n in at)
    assert set(lp_ids) <= i0 and unseen[8] in i1 and unseen[8] not in i0 - set(lp_ids)
    assert two.relevance[at[0]].sum() == two.relevance[at[1]].sum()  # the same target, labelled in both
    # a row with branches compiled one interaction back: the user's last item picks the branch the
    # ranker learns from (one interaction fresher, its floor filling the items it left out), as served
    from outerloop.contracts.rows import RowBranches

    last = int(cases.histories[0][-1])
    branches = RowBranches.pack([(last, [(unseen[9], -0.25)], -6.0), (unseen[10], [(unseen[11], -0.5)], None)])
    branched = Row(row_id="lp", title="lp", reason="", items=list(zip(lp_ids, lp_scores)), produced_by="test",
                   run_id="r", model_version="m", created_at=0, expires_at=1, score_kind="log_prob", branches=branches)
    h0 = cases.histories[0].tolist()
    other_next = next(k for k in range(2, len(h0) + 1) if h0[-k] != last)  # a next item with no branch
    for since, want_items, want_since in ((1, [unseen[9]], 0), (other_next, lp_ids, other_next)):
        got = build_examples(tiny_artifacts, tables, tiny_data, "valid", n_candidates=5,
                             agent_rows={with_rows: [CompiledRows([AgentRow.of(branched, len(tiny_artifacts.catalog))],
                                                                  since)]})
        f = got.feats[first][got.mask[first]]
        its = got.items[first][got.mask[first]].tolist()
        assert set(want_items) <= set(its) and f[:, col["log_prob_row_staleness"]] == pytest.approx(np.log1p(want_since))
        lp_of = dict(zip(its, f[:, col["log_prob"]].tolist()))
        if since == 1:
            assert lp_of[unseen[9]] == pytest.approx(-0.25)
            others = [v for i, v in lp_of.items() if i != unseen[9]]
            assert others and others == pytest.approx([-7.0] * len(others))  # not in the branch: its floor - 1


def test_a_correction_reads_only_its_rows_and_is_scored_on_users_nobody_fitted(
        tiny_artifacts, tiny_data, tmp_path) -> None:  # noqa: F811
    """``train_ranker(reads_rows=..., select_share=...)``: the rows read are saved and reloaded, and
    the selection users are neither trained on nor among the users that stop training."""
    from outerloop.contracts.rows import AgentRow, CompiledRows, Row
    from outerloop.inner_loop.ranker_train import train_ranker

    n_items = len(tiny_artifacts.catalog)

    def row(row_id: str, kind: str) -> AgentRow:
        r = AgentRow.of(Row(row_id=row_id, title=row_id, reason="", items=[(i, -float(i)) for i in range(1, 9)],
                            produced_by="t", run_id="r", model_version="m", created_at=0, expires_at=1,
                            score_kind=kind), n_items)
        assert r is not None
        return r

    rows = {u.user_id: [CompiledRows([row("a", "relative"), row("lp", "log_prob")]),
                        CompiledRows([row("lp", "log_prob")], 2)] for u in tiny_data.users}
    base = train_ranker(tiny_artifacts, tiny_data, epochs=2, patience=1, max_history=50, bags=1,
                        out_dir=tmp_path / "ranker-inner", agent_rows={})
    r = train_ranker(tiny_artifacts, tiny_data, epochs=2, patience=1, max_history=50, bags=1, out_dir=tmp_path,
                     agent_rows=rows, rows_share=1.0, residual_of=base, residual_dir="ranker-inner",
                     reads_rows=["lp"], select_share=0.3)
    rep = r.config.report
    sel = rep["selection"]
    assert sel["users"] > 0 and 0.0 <= sel["ndcg@10"] <= 1.0 and sel["base_alone_ndcg@10"] is not None
    from outerloop.inner_loop.model.evaluate import leave_one_out

    assert rep["users_train"] + rep["users_val"] + sel["users"] == len(leave_one_out(tiny_data, "valid"))
    # two row sets per user: two examples each, every user's on one side of each split
    assert rep["examples_train"] == 2 * rep["users_train"] and sel["examples"] == 2 * sel["users"]
    assert rep["reads_rows"] == ["lp"] and Ranker.load(tmp_path).config.reads_rows == ["lp"]
    plain = train_ranker(tiny_artifacts, tiny_data, epochs=1, patience=1, max_history=50, bags=1,
                         out_dir=tmp_path / "p", agent_rows={})
    assert plain.config.report["selection"] is None and plain.config.reads_rows is None


def test_the_correction_chooses_between_every_row_and_log_prob_rows_only() -> None:
    """``row_sets``: a choice only where the rows hold both kinds."""
    from outerloop.contracts.rows import AgentRow, CompiledRows, Row
    from outerloop.evals.prepare import EVERY_ROW, LOG_PROB_ROWS, row_sets

    def row(row_id: str, kind: str) -> AgentRow:
        r = AgentRow.of(Row(row_id=row_id, title=row_id, reason="", items=[(1, -1.0)], produced_by="t", run_id="r",
                            model_version="m", created_at=0, expires_at=1, score_kind=kind), 5)
        assert r is not None
        return r

    both = {"u1": [CompiledRows([row("top_picks", "relative")])],
            "u2": [CompiledRows([row("ens", "log_prob")]), CompiledRows([row("wind", "relative")], 2)]}
    assert row_sets(both) == {EVERY_ROW: None, LOG_PROB_ROWS: ["ens"]}
    assert row_sets({"u": [CompiledRows([row("ens", "log_prob")])]}) == {EVERY_ROW: None}
    assert row_sets({"u": [CompiledRows([row("top_picks", "relative")])]}) == {EVERY_ROW: None}
    assert row_sets({}) == {EVERY_ROW: None}


def test_a_residual_ranker_serves_its_base_plus_a_correction(tiny_ranker, tiny_artifacts, tiny_data, tables,
                                                               tmp_path) -> None:  # noqa: F811
    """The served ranker of the outer loop corrects a frozen base: its score is the base's score
    plus its own relevance logit, every tower starts as a zero correction (epoch 0 = the base
    alone, as the held-out users scored it), it saves the base's place rather than a copy, and
    the objective weights it is given are the base's."""
    import shutil

    from outerloop.errors import UserInputError
    from outerloop.inner_loop.ranker_train import train_ranker

    base_dir = tmp_path / "ranker-inner"
    # the base learned without rows (as the inner-only ranker does); the correction trains on lists with a row
    base = train_ranker(tiny_artifacts, tiny_data, epochs=3, patience=2, max_history=50, bags=2, out_dir=base_dir,
                        agent_rows={})
    r = train_ranker(tiny_artifacts, tiny_data, epochs=3, patience=2, max_history=50, bags=2, out_dir=tmp_path,
                     residual_of=base, residual_dir="ranker-inner")
    rep = r.config.report
    assert r.config.residual_of == "ranker-inner" and r.config.objectives == ("relevance",)
    assert rep["objectives"] == ["relevance"]
    start = rep["residual_of"]["val_base_alone_ndcg@10"]
    # the base scores the held-out lists as if there were no row: about as well as on lists without one
    # (read with the row's columns, a base that never saw them vary scores nonsense)
    assert start >= 0.8 * base.config.report["val_no_rows"]["ndcg@10"]
    assert rep["history"][0] == {"epoch": 0, "loss": None, "val_ndcg@10": start}
    assert rep["residual_of"]["val_with_correction_ndcg@10"] == rep["val_ndcg@10_by_bags"][str(rep["bags"])]

    feats = candidate_features(tables, np.asarray([3, 4]), np.arange(1, 30), np.linspace(1, 0, 29, dtype=np.float32),
                               np.full(29, -1))
    assert np.allclose(r.score(feats), base.score(feats) + r.logits(feats)[:, 0], atol=1e-5)
    # with an agent row, the base still scores the candidates as if there were none (it never saw a row)
    from outerloop.inner_loop.model.ranker import LogProbRow, without_rows

    row = LogProbRow(np.arange(1, 11, dtype=np.int64), np.linspace(-1, -5, 10, dtype=np.float32), events_since=1)
    with_row = candidate_features(tables, np.asarray([3, 4]), np.arange(1, 30), np.linspace(1, 0, 29, dtype=np.float32),
                                  np.r_[np.arange(5), np.full(24, -1)], row)
    assert np.allclose(without_rows(with_row), feats)
    assert np.allclose(r.score(with_row), base.score(feats) + r.logits(with_row)[:, 0], atol=1e-5)
    again = Ranker.load(tmp_path)
    assert again.base is not None and np.allclose(again.score(feats), r.score(feats), atol=1e-5)
    # the weights are the base's objectives; the correction always adds with weight 1
    rel_only = Ranker.load(tmp_path, {"relevance": 1.0, "liked": 0.0})
    assert rel_only.weights == rel_only.base.weights == {"relevance": 1.0, "liked": 0.0}
    assert np.allclose(rel_only.score(feats), rel_only.base.score(feats) + rel_only.logits(feats)[:, 0], atol=1e-5)
    # a correction at zero serves exactly its base
    for p in again.model.parameters():
        p.data.zero_()
    again.model.train(False)
    assert np.allclose(again.score(feats), base.score(feats), atol=1e-6)
    shutil.rmtree(base_dir)
    with pytest.raises(UserInputError, match="ranker-inner"):
        Ranker.load(tmp_path)
