"""Train the multi-task ranker on the retrieval stage's own candidates, and measure its lift.

Data (SASRec's leave-one-out split, the same one the transformer uses):

- training examples: each user's *validation* cut (history = all but the last two items,
  target = the second to last). The transformer never trained on these targets, so the
  retrieval scores the ranker learns from look like the ones it will see when serving.
  10% of users (by a hash of the id) are held out to choose each tower's epoch, how many
  towers to average and the ``liked`` head's serving weight.
- the lift is reported on the *test* cut (history = all but the last item, target = the last),
  which nothing here trains or selects on.

Each example is built exactly as serving builds it: the transformer encodes the history, the
index returns ``n_candidates`` items, an agent-style row (the 20 nearest items to the newest
history item, a "because you watched" row) is merged in, seen items (``SEEN_TYPES``) are
removed, and the
features of :func:`candidate_features` are computed. Loss: listwise softmax cross-entropy for
``relevance`` (examples whose target survived retrieval) + BCE of the ``liked`` head at the
target against what the data observed of it (:data:`LIKED_BY_ACTION`), when the data observed
any negative engagement at all (see :mod:`outerloop.inner_loop.model.ranker`). Each head is reported
with its own validation metric: NDCG@10 for ``relevance``, ROC AUC over the held-out targets for
``liked``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from outerloop.contracts.rows import CompiledRows, RowsByUser, continue_row
from outerloop.data.schema import ACTION_ID, InteractionData
from outerloop.inner_loop.model.covisit import CoVisitation
from outerloop.inner_loop.model.evaluate import EvalCases, leave_one_out, train_sequences
from outerloop.inner_loop.model.ranker import (
    FEATURE_NAMES,
    OBJECTIVES,
    ArtifactsLike,
    FeatureTables,
    LogProbRow,
    MultiTaskRanker,
    Ranker,
    RankerConfig,
    candidate_features,
    without_rows,
)
from outerloop.inner_loop.serving.funnel import merge_candidates
from outerloop.inner_loop.serving.user_state import SEEN_TYPES

log = logging.getLogger(__name__)

# what the data observed of an item the user took: the ``liked`` head's label
LIKED_BY_ACTION: dict[int, float] = {
    ACTION_ID["finish"]: 1.0, ACTION_ID["rate"]: 1.0,
    ACTION_ID["play"]: 0.6, ACTION_ID["add_to_list"]: 0.6, ACTION_ID["click"]: 0.6,
    ACTION_ID["skip"]: 0.0,
}
ROW_K = 20  # size of the simulated agent row
# towers trained per ranker, of which the held-out users choose how many to average (the report's
# ``val_ndcg@10_by_bags``). On ML-1M's inner-only ranker, 1..5 towers gave validation NDCG@10
# 0.1993 / 0.2001 / 0.1973 / 0.1991 / 0.1980 (604 held-out users: all within noise), so two were
# kept and the test cut moved from 0.1918 (one tower, an earlier run) to 0.1919: bagging is cheap
# insurance here, not a lift
RANKER_BAGS = 5
SIMULATE_ROWS_MAX_ITEMS = 100_000  # above this, no simulated rows (the similarity matrix gets big)


@dataclass(slots=True)
class Examples:
    """Padded candidate lists, one per case (a user with rows compiled at several staleness
    settings gives one per setting): (E, C, F) features and (E, C) labels."""

    feats: np.ndarray  # (E, C, F) float32
    mask: np.ndarray  # (E, C) bool, False at padding
    relevance: np.ndarray  # (E, C) float32, 1 at the target
    liked: np.ndarray  # (E,) float32: what the data observed of the target (NaN: nothing)
    retrieval: np.ndarray  # (E, C) float32 (-inf at padding)
    user_ids: list[str]
    items: np.ndarray  # (E, C) int64 candidate ids (0 at padding)

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def take(self, idx: np.ndarray) -> "Examples":
        return Examples(self.feats[idx], self.mask[idx], self.relevance[idx], self.liked[idx],
                        self.retrieval[idx], [self.user_ids[i] for i in idx], self.items[idx])


_SEEN_ACTIONS = np.asarray([ACTION_ID[t] for t in sorted(SEEN_TYPES)], dtype=np.int64)


def seen_items(history: np.ndarray, actions: np.ndarray | None) -> np.ndarray:
    """What serving would filter for this history: items finished, rated or skipped; without
    actions (MovieLens: every interaction is a rating) every item of the history."""
    if actions is None:
        return history
    return history[np.isin(np.asarray(actions, dtype=np.int64), _SEEN_ACTIONS)]


def _target_actions(data: InteractionData, cases: EvalCases, from_end: int) -> list[int | None]:
    by_id = {u.user_id: u for u in data.users}
    out: list[int | None] = []
    for uid in cases.user_ids:
        u = by_id[uid]
        out.append(None if u.actions is None else int(u.actions[len(u) - from_end]))
    return out


# what the ranker reads of one row set: relative rows, log-prob rows (as candidates) and the
# first log-prob row's scores
_RowsRead = tuple[list[np.ndarray], list[np.ndarray], LogProbRow | None]


def _rows_read(compiled: CompiledRows, reads_rows: Sequence[str] | None, history: np.ndarray,
               actions: np.ndarray | None, n_items: int) -> _RowsRead:
    """The part of one user's compiled rows a ranker reading ``reads_rows`` sees, as serving
    merges it (rows it does not read are left out; a row with branches the user moved past
    serves the branch for their next interaction, one interaction fresher: ``continue_rows``).
    ``history``, ``actions``: the user's, up to the request."""
    since = compiled.events_since
    live = [r for r in compiled.rows if reads_rows is None or r.row.row_id in reads_rows]
    if 1 <= since < history.shape[0]:  # as serving: the row's own newest event is in the history
        nxt, act = int(history[-since]), None if actions is None else int(actions[-since])
        live = [continue_row(r, nxt, act, n_items) or r for r in live]
    first = next((r for r in live if r.row.log_prob), None)
    lp_row = None if first is None else LogProbRow(first.item_ids, first.scores, since - first.continued,
                                                    first.row.floor)
    return ([r.item_ids for r in live if not r.row.log_prob], [r.item_ids for r in live if r.row.log_prob], lp_row)


def build_examples(artifacts: ArtifactsLike, tables: FeatureTables, data: InteractionData, split: str, *,
                   n_candidates: int = 500, max_history: int = 200, batch_size: int = 256,
                   agent_rows: RowsByUser | None = None,
                   reads_rows: Sequence[str] | None = None) -> Examples:
    """Serving's candidate lists for every leave-one-out case of ``split``, with labels.

    ``agent_rows`` (user id -> that user's live rows, e.g. from
    :func:`outerloop.evals.replay.compile_outer_rows`) are merged as serving merges them; a
    user missing from it gets none, and a user with rows compiled at several staleness
    settings gives one example per setting (the same candidates from retrieval, other rows).
    Without it, each user gets the simulated "because you
    watched" row (catalogs up to ``SIMULATE_ROWS_MAX_ITEMS``). ``reads_rows``: the row ids the
    ranker reads (``RankerConfig.reads_rows``; None: every row), the rest left out as serving
    leaves them out."""
    cases = leave_one_out(data, split)  # type: ignore[arg-type]
    target_actions = _target_actions(data, cases, 2 if split == "valid" else 1)
    n_items = len(artifacts.catalog)
    simulate = agent_rows is None and n_items <= SIMULATE_ROWS_MAX_ITEMS
    unit = tables.vectors * tables.inv_norm[:, None]  # (N+1, d) cosine-ready; row 0 is zero
    lists: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    example_users: list[str] = []
    for start in range(0, len(cases), batch_size):
        idx = range(start, min(start + batch_size, len(cases)))
        hists = [cases.histories[i][-max_history:] for i in idx]
        acts = None if cases.actions is None else [np.asarray(cases.actions[i][-max_history:], np.int64) for i in idx]
        tss = None if cases.ts is None else [cases.ts[i][-max_history:] for i in idx]
        vecs = np.asarray(artifacts.encode([h.tolist() for h in hists],
                                           actions=None if acts is None else [a.tolist() for a in acts],
                                           ts=None if tss is None else [t.tolist() for t in tss]), dtype=np.float32)
        ids, scores = artifacts.index.search(vecs, n_candidates)
        if simulate:
            last = np.asarray([h[-1] for h in hists], dtype=np.int64)
            sims = unit[last] @ unit.T  # (B, N+1)
            sims[:, 0] = -np.inf
            sims[np.arange(len(last)), last] = -np.inf
            nn = np.argpartition(-sims, ROW_K, axis=1)[:, :ROW_K]
            nn_order = np.take_along_axis(sims, nn, 1).argsort(1)[:, ::-1]
            rows = np.take_along_axis(nn, nn_order, 1)  # (B, ROW_K) most similar first
        for j, i in enumerate(idx):
            ok = (ids[j] >= 1) & (ids[j] <= n_items)
            ann, ann_s = ids[j][ok].astype(np.int64), scores[j][ok].astype(np.float32)
            seen = seen_items(cases.histories[i], None if cases.actions is None else cases.actions[i])
            target = int(cases.targets[i])
            a = target_actions[i]
            liked = np.nan if a is None else LIKED_BY_ACTION.get(a, np.nan)
            if simulate:
                row_sets: list[_RowsRead] = [([rows[j].astype(np.int64)], [], None)]
            else:
                per_user = (agent_rows or {}).get(cases.user_ids[i], ())
                hist_i = np.asarray(cases.histories[i], dtype=np.int64)
                acts_i = None if cases.actions is None else np.asarray(cases.actions[i], dtype=np.int64)
                row_sets = [_rows_read(c, reads_rows, hist_i, acts_i, n_items) for c in per_user] or [([], [], None)]
            for user_rows, scored, lp_row in row_sets:
                cand, retr, row_pos, _ = merge_candidates(tables.vectors, vecs[j], ann, ann_s, user_rows, extra=scored)
                retr = retr.astype(np.float32)
                keep = ~np.isin(cand, seen)
                cand, retr, row_pos = cand[keep], retr[keep], row_pos[keep]
                feats = candidate_features(tables, hists[j], cand, retr, row_pos, lp_row)
                rel = (cand == target).astype(np.float32)
                lists.append((feats, rel, liked, retr, cand))
                example_users.append(cases.user_ids[i])
    c_max = max((x[0].shape[0] for x in lists), default=1)
    e = len(lists)
    out = Examples(
        feats=np.zeros((e, c_max, len(FEATURE_NAMES)), np.float32),
        mask=np.zeros((e, c_max), bool),
        relevance=np.zeros((e, c_max), np.float32),
        liked=np.asarray([x[2] for x in lists], np.float32).reshape(e),
        retrieval=np.full((e, c_max), -np.inf, np.float32),
        user_ids=example_users,
        items=np.zeros((e, c_max), np.int64),
    )
    for n, (feats, rel, _, retr, cand) in enumerate(lists):
        c = feats.shape[0]
        out.items[n, :c] = cand
        out.feats[n, :c], out.mask[n, :c], out.relevance[n, :c] = feats, True, rel
        out.retrieval[n, :c] = retr
    return out


def ranking_metrics(scores: np.ndarray, ex: Examples, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """HR@k / NDCG@k / MRR of the target under ``scores`` (E, C), over ALL cases (a target that
    retrieval missed counts as a miss, as it would when serving)."""
    s = np.where(ex.mask, scores, -np.inf)
    has = ex.relevance.max(1) > 0
    tcol = ex.relevance.argmax(1)
    t = s[np.arange(len(ex)), tcol][:, None]
    rank = (s > t).sum(1)  # 0-based; ties favour nothing since scores are continuous
    out: dict[str, float] = {"cases": float(len(ex)), "recall@candidates": float(has.mean()) if len(ex) else 0.0}
    for k in ks:
        hit = has & (rank < k)
        out[f"hr@{k}"] = float(hit.mean()) if len(ex) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean()) if len(ex) else 0.0
    out["mrr"] = float(np.where(has, 1.0 / (rank + 1.0), 0.0).mean()) if len(ex) else 0.0
    return out


def _holdout(user_ids: list[str], share: float = 0.1) -> np.ndarray:
    """Deterministic user split (by a hash of the id): True = ranker-validation user."""
    return np.asarray([int(hashlib.sha1(u.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share for u in user_ids])


def _combined(logits: np.ndarray, weights: dict[str, float], objectives: Sequence[str]) -> np.ndarray:
    w = np.asarray([weights.get(o, 0.0) for o in objectives], dtype=np.float32)
    return logits @ w


def _target_logits(logits: np.ndarray, ex: Examples) -> tuple[np.ndarray, np.ndarray]:
    """(E,) ``liked`` logit at each example's target and its observed label, for the examples
    whose target survived retrieval and whose label the data observed."""
    has = (ex.relevance.max(1) > 0) & np.isfinite(ex.liked)
    rows = np.flatnonzero(has)
    return logits[rows, ex.relevance[rows].argmax(1), 1], ex.liked[rows]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for ``labels >= 0.5`` (Mann-Whitney; tied scores share their mean
    rank); None without both classes."""
    pos = np.asarray(labels) >= 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return None
    uniq, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1.0  # 1-based rank of each distinct score's first copy
    ranks = (first_rank + (counts - 1) / 2.0)[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _logits(model: MultiTaskRanker, ex: Examples, mean: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """(E, C, O), a few hundred examples at a time (the activations of thousands are gigabytes)."""
    parts = []
    with torch.inference_mode():
        for s in range(0, len(ex), 256):
            parts.append(model(torch.from_numpy((ex.feats[s:s + 256] - mean) * inv_std)).numpy())
    return np.concatenate(parts) if parts else np.zeros((*ex.mask.shape, len(model.objectives)), np.float32)


def _train_tower(train: Examples, val: Examples, mean: np.ndarray, inv_std: np.ndarray, objectives: Sequence[str],
                 *, hidden: int, lr: float, epochs: int, patience: int, batch_size: int,
                 seed: int, offset: tuple[np.ndarray, np.ndarray] | None = None,
                 ) -> tuple[MultiTaskRanker, list[dict[str, Any]]]:
    """One tower, trained on ``train`` and stopped at its best held-out relevance NDCG@10.

    ``offset`` ((E, C) for ``train`` and for ``val``): a frozen base ranker's scores the tower's
    relevance logit is added to (a residual ranker). The tower then starts as a zero correction,
    and that start (epoch 0: the base alone) is kept unless an epoch beats it on ``val``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MultiTaskRanker(len(FEATURE_NAMES), hidden, objectives)
    off_t = None if offset is None else torch.from_numpy(np.where(train.mask, offset[0], 0.0).astype(np.float32))
    off_v = None if offset is None else np.where(val.mask, offset[1], 0.0).astype(np.float32)
    best: dict[str, Any] = {"ndcg": -1.0, "epoch": 0, "state": None}
    if offset is not None:
        with torch.no_grad():
            for tower in model.towers:
                tower.heads.weight.zero_()
                tower.heads.bias.zero_()
        best = {"ndcg": ranking_metrics(off_v, val)["ndcg@10"], "epoch": 0,
                "state": {k: v.clone() for k, v in model.state_dict().items()}}
    history: list[dict[str, Any]] = [] if offset is None else [{"epoch": 0, "loss": None, "val_ndcg@10": best["ndcg"]}]
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    feats_t = torch.from_numpy((train.feats - mean) * inv_std)
    mask_t = torch.from_numpy(train.mask)
    rel_t = torch.from_numpy(train.relevance)
    has_t = rel_t.amax(1) > 0
    tcol_t = rel_t.argmax(1)
    liked_t = torch.from_numpy(train.liked)
    liked_ok = has_t & torch.isfinite(liked_t)
    stale = 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        total = 0.0
        for s in range(0, len(order), batch_size):
            b = torch.from_numpy(order[s : s + batch_size])
            z = model(feats_t[b])  # (b, C, O)
            zr = z[..., 0] if off_t is None else z[..., 0] + off_t[b]
            zr = zr.masked_fill(~mask_t[b], -1e9)
            h = has_t[b]
            loss = -(F.log_softmax(zr, 1) * rel_t[b]).sum(1)[h].mean() if bool(h.any()) else zr.sum() * 0
            ok = liked_ok[b]
            if len(objectives) > 1 and bool(ok.any()):
                at_target = z[torch.arange(len(b)), tcol_t[b], 1]
                loss = loss + F.binary_cross_entropy_with_logits(at_target[ok], liked_t[b][ok])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        model.eval()
        # the epoch is chosen on the primary objective; the liked head's weight is chosen after
        val_rel = _logits(model, val, mean, inv_std)[..., 0]
        val_m = ranking_metrics(val_rel if off_v is None else val_rel + off_v, val)
        history.append({"epoch": epoch, "loss": total / max(len(train), 1), "val_ndcg@10": val_m["ndcg@10"]})
        if val_m["ndcg@10"] > best["ndcg"]:
            best = {"ndcg": val_m["ndcg@10"], "epoch": epoch, "state": {k: v.clone() for k, v in model.state_dict().items()}}
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best["state"])
    return model.eval(), history


def train_ranker(artifacts: ArtifactsLike, data: InteractionData, *, out_dir: str | Path | None = None,
                 n_candidates: int = 500, epochs: int = 30, patience: int = 5, hidden: int = 64,
                 lr: float = 1e-3, batch_size: int = 128, seed: int = 0, max_history: int = 200,
                 agent_rows: RowsByUser | None = None,
                 provenance: dict[str, Any] | None = None, rows_share: float = 0.5,
                 bags: int = RANKER_BAGS, residual_of: Ranker | None = None,
                 residual_dir: str | None = None, reads_rows: Sequence[str] | None = None,
                 select_share: float = 0.0) -> Ranker:
    """Train, select on held-out users, report the test-cut lift over retrieval order, and save
    ``ranker.pt`` + ``ranker.json`` into ``out_dir`` (default: the artifacts' own directory).

    ``bags``: towers trained with seeds ``seed .. seed + bags - 1``; the first n of them are
    averaged, n chosen on the held-out users.

    ``agent_rows``: the rows the outer loop compiled at the validation cut
    (:func:`outerloop.evals.replay.compile_outer_rows`). Half the users (by a hash of the id)
    keep theirs and half get none, so the ranker learns lists both with agent rows and
    without them (what the inner loop alone serves) and neither case is new to it when
    serving (the split is salted apart from the validation users', so both halves are
    validated; a user with several row sets gives one example per set, so the share of
    examples with rows is above the share of users); ``rows_share`` sets that share (1.0:
    every user keeps its rows, for a ranker that serves only users with rows, beside one trained without any). The report gives the held-out users' validation NDCG without any rows
    (``val_no_rows``: how this ranker serves the inner loop alone, the figure a replay uses to
    pick the inner arm's ranker) and the test cut without rows. ``agent_rows={}`` trains for the
    inner loop alone; without ``agent_rows``, every user gets a simulated "because you watched"
    row.

    ``residual_of``: train a correction of this (frozen) ranker instead of a ranker of its own
    (see :mod:`outerloop.inner_loop.model.ranker`): relevance only, each tower starting from a
    zero correction that is kept unless the held-out users say otherwise; ``residual_dir`` is
    where the base lives, relative to ``out_dir`` (written into the config, read by ``load``).

    ``reads_rows``: the agent rows (row ids) the ranker reads, None for all (see
    ``RankerConfig.reads_rows``). ``select_share``: a share of the users outside the held-out
    tenth (by a salted hash) kept out of training too, scored in the report's ``selection`` as
    the funnel would serve them (a residual's user without a log-prob row by the base alone), so
    a caller can choose between rankers on users none of them was fitted or stopped on (a
    residual's base may have trained on them: both candidates share it)."""
    if (residual_of is None) != (residual_dir is None):
        raise ValueError("residual_of and residual_dir go together")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # co-visitation from the transformer's own training part: no validation or test item in it
    covisit = CoVisitation.build([u.items for u in train_sequences(data)], len(artifacts.catalog))
    tables = FeatureTables.build(artifacts.catalog, artifacts.item_vectors, artifacts.popularity, covisit=covisit)
    if agent_rows is not None:
        agent_rows = {u: r for u, r in agent_rows.items() if not _holdout([u + "#rows"], share=1.0 - rows_share)[0]}
    train_all = build_examples(artifacts, tables, data, "valid", n_candidates=n_candidates, max_history=max_history,
                               agent_rows=agent_rows, reads_rows=reads_rows)
    test = build_examples(artifacts, tables, data, "test", n_candidates=n_candidates, max_history=max_history,
                          agent_rows=None if agent_rows is None else {})
    t_examples = time.perf_counter() - t_start
    hold = _holdout(train_all.user_ids)
    if hold.all() or not hold.any():  # tiny data: fall back to a random tenth of the users
        users = sorted(set(train_all.user_ids))
        held = {u for u, r in zip(users, rng.random(len(users))) if r < 0.1} or {users[0]}
        hold = np.asarray([u in held for u in train_all.user_ids], bool)
    select = (_holdout([u + "#select" for u in train_all.user_ids], share=select_share) & ~hold
              if select_share > 0 else np.zeros(len(train_all), bool))
    if not (~hold & ~select).any():
        raise ValueError(f"select_share={select_share} leaves no user to train on")
    train, val = train_all.take(np.flatnonzero(~hold & ~select)), train_all.take(np.flatnonzero(hold))
    sel = train_all.take(np.flatnonzero(select))

    def base_scores(ex: Examples) -> np.ndarray:
        """(E, C) the frozen base ranker's serving scores (0 without a base)."""
        if residual_of is None or not len(ex):
            return np.zeros(ex.mask.shape, np.float32)
        # the base never saw a row: it scores the candidates as if there were none (as serving does);
        # a few hundred examples at a time (all of ML-1M's at once held gigabytes of activations)
        out = np.zeros(ex.mask.shape, np.float32)
        for s in range(0, len(ex), 256):
            part = slice(s, s + 256)
            out[part] = np.where(ex.mask[part], residual_of.score(without_rows(ex.feats[part])), 0.0)
        return out

    off_train, off_val, off_test, off_sel = base_scores(train), base_scores(val), base_scores(test), base_scores(sel)

    rows = train.feats[train.mask]  # (R, F)
    mean = rows.mean(0).astype(np.float32)
    std = np.maximum(rows.std(0), 1e-3).astype(np.float32)
    inv_std = (1.0 / std).astype(np.float32)
    # the liked head only where the data observed engagement that was not all positive
    observed = train.liked[np.isfinite(train.liked)]
    objectives = OBJECTIVES if np.unique(observed).size > 1 and residual_of is None else OBJECTIVES[:1]
    towers, histories = [], []
    for b in range(bags):
        tower, hist = _train_tower(train, val, mean, inv_std, objectives, hidden=hidden, lr=lr, epochs=epochs,
                                   patience=patience, batch_size=batch_size, seed=seed + b,
                                   offset=None if residual_of is None else (off_train, off_val))
        towers.append(tower)
        histories.append(hist)
    # how many towers to average: chosen on the held-out users (the first n, n = 1..bags)
    val_by_bags = {n: ranking_metrics(_logits(MultiTaskRanker.of(towers[:n]), val, mean, inv_std)[..., 0] + off_val,
                                      val)["ndcg@10"]
                   for n in range(1, bags + 1)}
    n_bags = max(val_by_bags, key=lambda n: (val_by_bags[n], n))
    model = MultiTaskRanker.of(towers[:n_bags]).eval()

    # the liked head's serving weight: chosen on the held-out users' validation cut, never on test
    val_logits = _logits(model, val, mean, inv_std)
    grid = [0.0, 0.25, 0.5, 1.0, 2.0] if "liked" in objectives else [0.0]
    val_by_w = {w: ranking_metrics(_combined(val_logits, {"relevance": 1.0, "liked": w}, objectives) + off_val, val)
                for w in grid}
    w_liked = max(grid, key=lambda w: (val_by_w[w]["ndcg@10"], -w))
    weights = {"relevance": 1.0, **({"liked": w_liked} if "liked" in objectives else {})}

    def score(logits: np.ndarray, off: np.ndarray) -> np.ndarray:
        return _combined(logits, weights, objectives) + off

    if agent_rows:  # the held-out users again, without any row: the inner loop alone
        plain = build_examples(artifacts, tables, data, "valid", n_candidates=n_candidates,
                               max_history=max_history, agent_rows={})  # one example per user
        held_users = set(val.user_ids)
        val_plain = plain.take(np.flatnonzero([u in held_users for u in plain.user_ids]))
    else:
        val_plain = val
    selection = None
    if len(sel):
        sel_scores = score(_logits(model, sel, mean, inv_std), off_sel)
        with_lp = sel.feats[:, :, FEATURE_NAMES.index("has_log_prob_row")].max(1) > 0  # (E,)
        if residual_of is not None:  # as the funnel serves: a user without a log-prob row gets the base alone
            sel_scores = np.where(with_lp[:, None], sel_scores, off_sel)
        selection = {
            "users": len(set(sel.user_ids)), "examples": len(sel),
            "examples_with_log_prob_row": int(with_lp.sum()),
            "ndcg@10": ranking_metrics(sel_scores, sel)["ndcg@10"],
            "base_alone_ndcg@10": ranking_metrics(off_sel, sel)["ndcg@10"] if residual_of is not None else None,
        }
    val_no_rows = ranking_metrics(score(_logits(model, val_plain, mean, inv_std), base_scores(val_plain)), val_plain)
    with_rows = np.flatnonzero([u in (agent_rows or {}) for u in val.user_ids])
    val_with_rows = (ranking_metrics(score(_logits(model, val.take(with_rows), mean, inv_std), off_val[with_rows]),
                                     val.take(with_rows))
                     if with_rows.size else None)
    test_logits = _logits(model, test, mean, inv_std)
    test_report = {
        "retrieval_order": ranking_metrics(test.retrieval, test),
        "ranker": ranking_metrics(score(test_logits, off_test), test),
        "ranker_relevance_only": ranking_metrics(test_logits[..., 0] + off_test, test),
        "popularity_order": ranking_metrics(test.feats[..., FEATURE_NAMES.index("popularity")], test),
    }
    base, ours = test_report["retrieval_order"], test_report["ranker"]
    lift = {k: (ours[k] / base[k] - 1.0 if base[k] > 0 else 0.0) for k in ("hr@10", "ndcg@10", "mrr")}
    heads: dict[str, Any] = {"relevance": {"metric": "ndcg@10",
                                           "val": ranking_metrics(val_logits[..., 0] + off_val, val)["ndcg@10"],
                                           "test": test_report["ranker_relevance_only"]["ndcg@10"]}}
    if "liked" in objectives:
        heads["liked"] = {"metric": "roc_auc of the target's observed engagement",
                          "val": roc_auc(*_target_logits(val_logits, val)),
                          "test": roc_auc(*_target_logits(test_logits, test)),
                          "val_targets": int(np.isfinite(val.liked).sum()),
                          "val_targets_liked_share": float(np.nanmean(val.liked >= 0.5)) if len(val) else None}
    else:
        heads["liked"] = {"trained": False, "reason": "the data observed no negative engagement (every target "
                          "has the same action), so there is nothing to learn liking from"}
    report = {
        "data": data.name, "users_train": len(set(train.user_ids)), "users_val": len(set(val.user_ids)),
        "examples_train": len(train), "examples_val": len(val), "cases_test": len(test),
        "rows_provenance": provenance,
        "agent_rows": ("simulated 'because you watched' row" if agent_rows is None else
                       f"outer-loop rows at the validation cut for {len(agent_rows)} users, none for the rest"),
        "n_candidates": n_candidates, "objectives": list(objectives), "heads": heads,
        "bags": n_bags, "val_ndcg@10_by_bags": {str(k): v for k, v in val_by_bags.items()},
        "epochs_run": sum(len(h) for h in histories),
        "best_epochs": [max(h, key=lambda r: r["val_ndcg@10"])["epoch"] for h in histories],  # one per tower
        "best_epoch": max(histories[0], key=lambda r: r["val_ndcg@10"])["epoch"],  # the first tower's
        "val_ndcg@10_by_liked_weight": {str(k): v["ndcg@10"] for k, v in val_by_w.items()},
        "val_no_rows": val_no_rows if agent_rows is not None else None,
        "val_with_rows": val_with_rows,
        "rows_share": rows_share if agent_rows else None,
        "reads_rows": None if reads_rows is None else list(reads_rows),
        "selection": selection,
        "test": test_report, "test_lift_over_retrieval": lift,
        "seconds": {"examples": round(t_examples, 1), "total": round(time.perf_counter() - t_start, 1)},
        "history": histories[0],
        "residual_of": None if residual_of is None else {
            "dir": residual_dir,
            "val_base_alone_ndcg@10": ranking_metrics(off_val, val)["ndcg@10"],
            "val_with_correction_ndcg@10": val_by_bags[n_bags],
            "towers_kept_at_zero_correction": sum(1 for h in histories
                                                   if max(h, key=lambda r: r["val_ndcg@10"])["epoch"] == 0),
        },
    }
    config = RankerConfig(objectives=objectives, hidden=hidden, bags=n_bags, weights=weights, mean=mean.tolist(),
                          std=std.tolist(), model_version=str(artifacts.model_version), report=report,
                          residual_of=residual_dir, reads_rows=None if reads_rows is None else list(reads_rows))
    ranker = Ranker(model, config, covisit=covisit, base=residual_of)
    target = Path(out_dir) if out_dir is not None else Path(getattr(artifacts, "dir"))
    target.mkdir(parents=True, exist_ok=True)
    ranker.save(target)
    return ranker
