"""The request-time funnel: history -> user vector -> ANN candidates (+ agent rows) -> ranker ->
seen filter -> rows. Pure computation on a :class:`UserState` already read from Redis, so it is
tested without a server and timed stage by stage.

Fallbacks (each one named in ``Recommendation.fallbacks``, never an error):

- no history the model can read -> cold-start rows (popular + one-per-genre "explore");
- no trained ranker, or the ranker over its share of the request budget -> retrieval order.
  The ranker's cost is tracked as a moving average; while it is over its share the ranker is
  skipped, and re-tried once a second so that it comes back when the machine calms down.
- Redis unreachable is handled by the caller with :meth:`Funnel.degraded` (popular items).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from outerloop import telemetry
from outerloop.contracts.rows import AgentRow, continue_rows, live_rows
from outerloop.data.schema import ACTION_ID
from outerloop.inner_loop.model.ranker import ArtifactsLike, FeatureTables, LogProbRow, Ranker, candidate_features
from outerloop.inner_loop.serving.user_state import UserState

TOP_PICKS = "top-picks"
POPULAR = "popular"
EXPLORE = "explore"
PRECOMPUTED = "precomputed"
SKIP_ACTION = ACTION_ID["skip"]  # models without action inputs must not read a skip as interest


@dataclass(frozen=True, slots=True)
class FunnelConfig:
    """Knobs of the funnel; the defaults are the ones the latency targets are measured with."""

    n_candidates: int = 500  # ANN candidates before ranking
    max_history: int = 200  # history tokens fed to the encoder (the model's context)
    request_budget_ms: float = 50.0  # whole request, Redis included
    ranker_share: float = 0.3  # of the request budget the ranker may use
    max_agent_rows: int = 8
    cache_size: int = 50_000  # user vectors kept in process
    ranker_probe_s: float = 1.0  # while the ranker is skipped, re-try it this often
    pool_size: int = 1000  # popular / explore lists kept ready
    inline_row_len: int = 300  # items an inline model proposes (as the ensemble agent's row)


@dataclass(slots=True)
class ServedRow:
    """One row of the response. ``origins[i]`` says where item i came from (``ann``, ``agent``,
    ``ann+agent``, ``popular``, ...)."""

    row_id: str
    title: str
    reason: str
    produced_by: str
    source: str  # funnel | agent | cold_start | degraded | precomputed
    item_ids: np.ndarray
    scores: np.ndarray
    origins: list[str]
    run_id: str | None = None
    model_version: str | None = None
    expires_at: int | None = None


@dataclass(slots=True)
class Recommendation:
    rows: list[ServedRow]
    model_version: str
    history_version: int = 0
    degraded: bool = False
    cold_start: bool = False
    ranker: str = "none"  # model | retrieval_order
    fallbacks: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    encoder_cache: str = "none"  # hit | redis | miss | none
    new_vector: bytes | None = None  # to cache in Redis (the caller writes it behind)
    rows_skipped: int = 0


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


class Funnel:
    """One per process: holds the artifacts, the ranker, the feature tables and the caches."""

    def __init__(self, artifacts: ArtifactsLike, ranker: Ranker | None, config: FunnelConfig | None = None, *,
                 inline_model: Any = None, ranker_without_rows: Ranker | None = None) -> None:
        """``inline_model``: an object with the ensemble's ``top(history, k, exclude=...)`` run on
        every request in place of the outer loop's log-prob row. It exists to measure what the
        request path would pay for the outer loop's heavy model (``outerloop serve
        --inline-ensemble``); the outer loop is where that model belongs."""
        self.artifacts = artifacts
        self.ranker = ranker
        # a ranker trained for users the outer loop has not reached yet (no log-prob row), beside
        # ``ranker``, trained for users it has: each serves the situation it learned
        self.ranker_without_rows = ranker_without_rows
        self.inline_model = inline_model
        self.config = config or FunnelConfig()
        self.catalog = artifacts.catalog
        self.n_items = len(self.catalog)
        self.model_version = str(artifacts.model_version)
        self.tables = FeatureTables.build(self.catalog, artifacts.item_vectors, artifacts.popularity,
                                          covisit=getattr(ranker, "covisit", None))
        self.dim = int(self.tables.vectors.shape[1])
        model = getattr(artifacts, "model", None)
        cfg = getattr(model, "cfg", None)
        self.uses_actions = bool(getattr(cfg, "use_actions", False))
        # ids the encoder knows (a scaled catalog is larger than the trained one)
        self.model_items = int(getattr(cfg, "n_items", self.n_items))
        self._popular, self._explore = self._pools()
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._ranker_ewma_ms = 0.0
        self._ranker_last_try = 0.0
        self.stats: dict[str, int] = {"cache_hit": 0, "cache_redis": 0, "cache_miss": 0, "ranker_skipped": 0,
                                      "rows_continued": 0}

    # --- pools for cold start and degraded mode ------------------------------------------------
    def _pools(self) -> tuple[np.ndarray, np.ndarray]:
        pop = np.asarray(self.artifacts.popularity, dtype=np.float64)[1 : self.n_items + 1]
        order = np.argsort(-pop, kind="stable")[: max(self.config.pool_size * 5, 5000)] + 1  # dense ids
        popular = order[: self.config.pool_size].astype(np.int64)
        # explore: round-robin over genres (most popular genre first), each genre's most popular
        # items first, so the first screen shows breadth instead of ten blockbusters
        genres = self.tables.genres[order]  # (P, G)
        by_genre = [order[genres[:, g] > 0] for g in np.argsort(-genres.sum(0), kind="stable")]
        picked: list[int] = []
        used: set[int] = set()
        cursor = [0] * len(by_genre)
        while len(picked) < self.config.pool_size and any(c < len(b) for c, b in zip(cursor, by_genre)):
            for g, items in enumerate(by_genre):
                while cursor[g] < len(items) and int(items[cursor[g]]) in used:
                    cursor[g] += 1
                if cursor[g] < len(items):
                    it = int(items[cursor[g]])
                    used.add(it)
                    picked.append(it)
                    cursor[g] += 1
        explore = np.asarray(picked or popular.tolist(), dtype=np.int64)
        return popular, explore

    def title(self, item_id: int) -> str:
        return self.catalog.items[item_id - 1].title

    # --- the user vector --------------------------------------------------------------------------
    def _model_input(self, state: UserState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        items, actions, ts = state.items, state.actions, state.ts
        if not self.uses_actions and items.shape[0]:
            keep = actions != SKIP_ACTION
            items, actions, ts = items[keep], actions[keep], ts[keep]
        n = self.config.max_history
        keep_ok = (items >= 1) & (items <= self.model_items)
        items, actions, ts = items[keep_ok][-n:], actions[keep_ok][-n:], ts[keep_ok][-n:]
        return items, actions, ts

    @staticmethod
    def fingerprint(state: UserState) -> str:
        """Identifies the history a vector was computed from: the version, and (in case keys
        were deleted and the version restarted) the length and newest token."""
        if state.items.shape[0] == 0:
            return f"{state.version}:0"
        return f"{state.version}:{state.items.shape[0]}:{state.items[-1]}:{state.ts[-1]}"

    def _cached_vector(self, state: UserState, fp: str) -> tuple[np.ndarray | None, str]:
        key = (state.user_id, fp)
        vec = self._cache.get(key)
        if vec is not None:
            self._cache.move_to_end(key)
            return vec, "hit"
        raw = state.cached_vector
        header = f"{fp}|{self.model_version}|".encode()
        if raw and raw.startswith(header) and len(raw) == len(header) + 4 * self.dim:
            vec = np.frombuffer(raw, dtype=np.float32, offset=len(header)).copy()
            self._remember(key, vec)
            return vec, "redis"
        return None, "miss"

    def _remember(self, key: tuple[str, str], vec: np.ndarray) -> None:
        self._cache[key] = vec
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    def encode(self, items: np.ndarray, actions: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(d,) user vector of one history."""
        out = self.artifacts.encode([items.tolist()], actions=[actions.tolist()], ts=[ts.tolist()])
        return np.asarray(out, dtype=np.float32).reshape(-1)[: self.dim]

    # --- the funnel ---------------------------------------------------------------------------------
    def recommend(self, state: UserState, k: int, *, started: float | None = None,
                  now_ms: int | None = None) -> Recommendation:
        """Rows for one user. ``started`` is the request's ``perf_counter()`` start, so the ranker
        budget counts the time already spent (Redis, parsing)."""
        t_start = time.perf_counter() if started is None else started
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        agent_rows, skipped = live_rows(state.rows, now_ms=now_ms, n_items=self.n_items,
                                        limit=self.config.max_agent_rows)
        if agent_rows:  # a row the user has moved past serves its branch for what they did next
            agent_rows, continued = continue_rows(agent_rows, state.items, state.ts, state.actions, self.n_items)
            self.stats["rows_continued"] += continued
        items, actions, ts = self._model_input(state)
        if items.shape[0] == 0:
            rec = self.cold_start(state, k, agent_rows)
            rec.rows_skipped = skipped
            return rec

        rec = Recommendation(rows=[], model_version=self.model_version, history_version=state.version,
                             rows_skipped=skipped)
        t0 = time.perf_counter()
        fp = self.fingerprint(state)
        vec, rec.encoder_cache = self._cached_vector(state, fp)
        if vec is None:
            vec = self.encode(items, actions, ts)
            self._remember((state.user_id, fp), vec)
            rec.new_vector = f"{fp}|{self.model_version}|".encode() + vec.tobytes()
        self.stats["cache_" + rec.encoder_cache] += 1
        if telemetry.enabled():  # nothing but a flag check on the request path when off
            telemetry.count_cache("encoder", rec.encoder_cache != "miss")
        rec.timings_ms["encode"] = _ms(t0)

        t0 = time.perf_counter()
        ids, scores = self.artifacts.index.search(vec[None, :], self.config.n_candidates)
        ids = np.asarray(ids[0], dtype=np.int64)
        scores = np.asarray(scores[0], dtype=np.float32)
        ok = (ids >= 1) & (ids <= self.n_items)
        ann_ids, ann_scores = ids[ok], scores[ok]
        lp_row = log_prob_row(agent_rows if self.ranker is None else self.ranker.rows_read(agent_rows), state.ts)
        inline: list[np.ndarray] = []
        if self.inline_model is not None:
            t1 = time.perf_counter()
            top = self.inline_model.top(items, self.config.inline_row_len, actions=actions, ts=ts, exclude=state.seen)
            lp_row = LogProbRow(np.asarray([i for i, _ in top], np.int64), np.asarray([s for _, s in top], np.float32))
            inline.append(lp_row.item_ids)
            rec.timings_ms["inline_model"] = _ms(t1)
        # the rows the scoring ranker reads (every row by default) join its candidates; the others
        # are served as rows of their own only
        scorer = self._scorer(lp_row)
        ranked_rows = agent_rows if scorer is None else scorer.rows_read(agent_rows)
        cand, retr, row_pos, from_ann = self._merge(vec, ann_ids, ann_scores, ranked_rows, inline)
        keep = ~np.isin(cand, state.seen) if state.seen.shape[0] else np.ones(cand.shape[0], dtype=bool)
        cand, retr, row_pos, from_ann = cand[keep], retr[keep], row_pos[keep], from_ann[keep]
        rec.timings_ms["retrieve"] = _ms(t0)

        t0 = time.perf_counter()
        final = self._rank(rec, t_start, scorer, items, cand, retr, row_pos, lp_row)
        rec.timings_ms["rank"] = _ms(t0)

        order = np.argsort(-final, kind="stable")
        top = order[:k]
        origins = ["ann+agent" if a and p >= 0 else ("ann" if a else "agent")
                   for a, p in zip(from_ann[top].tolist(), row_pos[top].tolist())]
        ranked_by = "the ranker" if rec.ranker == "model" else "retrieval order"
        rec.rows.append(ServedRow(
            row_id=TOP_PICKS, title="Top picks for you",
            reason=f"ranked for you by {ranked_by} from your last {items.shape[0]} titles",
            produced_by="inner_loop.funnel", source="funnel",
            item_ids=cand[top], scores=final[top], origins=origins, model_version=self.model_version,
        ))
        if agent_rows:
            score_of = dict(zip(cand.tolist(), final.tolist()))
            read = {r.row.row_id for r in ranked_rows}
            for row in agent_rows:  # a row the ranker did not read keeps the agent's order
                rec.rows.append(self._agent_row(row, k, score_of if row.row.row_id in read else {}, state.seen))
        return rec

    def _merge(self, vec: np.ndarray, ann_ids: np.ndarray, ann_scores: np.ndarray, agent_rows: list[AgentRow],
               inline: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return merge_candidates(self.tables.vectors, vec, ann_ids, ann_scores,
                                [r.item_ids for r in agent_rows if not r.row.log_prob],
                                extra=[*[r.item_ids for r in agent_rows if r.row.log_prob], *inline])

    def _scorer(self, lp_row: LogProbRow | None) -> Ranker | None:
        """The ranker that scores a request: the one for users without rows when there is one and
        the user has no log-prob row the served ranker reads, else the served ranker."""
        if lp_row is None and self.ranker_without_rows is not None and self.ranker is not None:
            return self.ranker_without_rows
        return self.ranker

    def _rank(self, rec: Recommendation, t_start: float, scorer: Ranker | None, hist: np.ndarray, cand: np.ndarray,
              retr: np.ndarray, row_pos: np.ndarray, lp_row: LogProbRow | None = None) -> np.ndarray:
        """``scorer``'s scores (the ranker ``_scorer`` picked for this request), or retrieval
        scores when there is no ranker or no time for it."""
        rec.ranker = "retrieval_order"
        if scorer is None:
            rec.fallbacks.append("no_ranker")
            return retr
        if cand.shape[0] == 0:
            return retr
        budget_ms = self.config.request_budget_ms * self.config.ranker_share
        spent_ms = (time.perf_counter() - t_start) * 1000.0
        now = time.monotonic()
        if spent_ms > self.config.request_budget_ms - budget_ms:
            self.stats["ranker_skipped"] += 1
            rec.fallbacks.append("ranker_skipped_request_over_budget")
            return retr
        if self._ranker_ewma_ms > budget_ms and now - self._ranker_last_try < self.config.ranker_probe_s:
            self.stats["ranker_skipped"] += 1
            rec.fallbacks.append("ranker_over_budget")
            return retr
        t0 = time.perf_counter()
        self._ranker_last_try = now
        plain = scorer is not self.ranker
        # the ranker for users without rows never saw row features: it gets none (the items of the rows
        # it reads stay candidates)
        feats = candidate_features(self.tables, hist, cand, retr, np.full_like(row_pos, -1) if plain else row_pos, lp_row)
        final = scorer.score(feats)  # type: ignore[union-attr]
        took = (time.perf_counter() - t0) * 1000.0
        self._ranker_ewma_ms = took if self._ranker_ewma_ms == 0 else 0.9 * self._ranker_ewma_ms + 0.1 * took
        if took > budget_ms:  # already paid for: use it, but skip the ranker until the probe
            self._ranker_ewma_ms = max(self._ranker_ewma_ms, took)
            rec.fallbacks.append("ranker_slow")
        rec.ranker = "model"
        return final

    def _agent_row(self, agent_row: AgentRow, k: int, score_of: dict[int, float], seen: np.ndarray) -> ServedRow:
        row = agent_row.row
        keep = ~np.isin(agent_row.item_ids, seen) if seen.shape[0] else np.ones(agent_row.item_ids.shape[0], bool)
        ids = agent_row.item_ids[keep]
        agent_scores = agent_row.scores[keep]
        scored = np.asarray([score_of.get(i, np.nan) for i in ids.tolist()], dtype=np.float32)
        if ids.shape[0] and not row.ordered and not np.isnan(scored).any():
            order = np.argsort(-scored, kind="stable")[:k]
            ids, scores = ids[order], scored[order]
        else:  # an ordered row, or no common scale: keep the agent's order and scores
            ids, scores = ids[:k], agent_scores[:k]
        return ServedRow(row_id=row.row_id, title=row.title, reason=row.reason, produced_by=row.produced_by,
                   source="agent", item_ids=ids, scores=scores, origins=["agent"] * ids.shape[0],
                   run_id=row.run_id, model_version=row.model_version, expires_at=row.expires_at)

    # --- fallbacks ----------------------------------------------------------------------------------
    def _pool_row(self, row_id: str, title: str, reason: str, pool: np.ndarray, k: int,
                  seen: np.ndarray | None, source: str) -> ServedRow:
        ids = pool if seen is None or not seen.shape[0] else pool[~np.isin(pool, seen)]
        ids = ids[:k]
        scores = self.tables.popularity[ids]
        return ServedRow(row_id=row_id, title=title, reason=reason, produced_by="inner_loop.popularity", source=source,
                   item_ids=ids, scores=scores, origins=[row_id] * ids.shape[0], model_version=self.model_version)

    def cold_start(self, state: UserState, k: int, agent_rows: list[AgentRow] | None = None) -> Recommendation:
        """A user without usable history: what is popular, and breadth to learn from."""
        rec = Recommendation(rows=[], model_version=self.model_version, history_version=state.version,
                             cold_start=True, fallbacks=["cold_start"])
        rec.rows.append(self._pool_row(POPULAR, "Popular right now", "popular with everyone; you are new here",
                                       self._popular, k, state.seen, "cold_start"))
        rec.rows.append(self._pool_row(EXPLORE, "Explore something different",
                                       "the most popular titles of each genre, to learn your taste",
                                       self._explore, k, state.seen, "cold_start"))
        for row in agent_rows or []:
            rec.rows.append(self._agent_row(row, k, {}, state.seen))
        return rec

    def degraded(self, k: int, reason: str) -> Recommendation:
        """Redis is unreachable: popular items from the loaded artifacts, flagged degraded."""
        rec = Recommendation(rows=[], model_version=self.model_version, degraded=True, fallbacks=[reason])
        rec.rows.append(self._pool_row(POPULAR, "Popular right now", "popular with everyone (personalization is "
                                       "temporarily unavailable)", self._popular, k, None, "degraded"))
        return rec

    def precomputed(self, user_id: str, pre: np.ndarray, seen: np.ndarray, k: int) -> Recommendation:
        """The baseline: a list precomputed in batch, minus what the user has seen since."""
        rec = Recommendation(rows=[], model_version=self.model_version)
        ok = (pre >= 1) & (pre <= self.n_items)
        pre = pre[ok]
        if seen.shape[0]:
            pre = pre[~np.isin(pre, seen)]
        ids = pre[:k]
        scores = (1.0 / (1.0 + np.arange(ids.shape[0]))).astype(np.float32)
        rec.rows.append(ServedRow(row_id=PRECOMPUTED, title="Picked for you", reason="precomputed in the last batch run",
                            produced_by="batch.precompute", source="precomputed", item_ids=ids, scores=scores,
                            origins=["precomputed"] * ids.shape[0], model_version=self.model_version))
        if not ids.shape[0]:
            rec.fallbacks.append("no_precomputed_list")
        return rec

    def stats_snapshot(self) -> dict[str, Any]:
        return {**self.stats, "cache_size": len(self._cache), "ranker_ewma_ms": round(self._ranker_ewma_ms, 3)}


def log_prob_row(rows: Sequence[AgentRow], history_ts: np.ndarray) -> LogProbRow | None:
    """The freshest live row with ``score_kind="log_prob"`` as the ranker reads it, with the
    user's interactions since the run that compiled it (``history_ts`` is the user's event times,
    newest last; a row without ``history_ts`` counts as fresh; a row served as its branch for
    the first of them, one fewer)."""
    for r in rows:  # live_rows orders them newest first
        if r.row.log_prob:
            compiled_at = r.row.history_ts
            since = 0 if compiled_at is None else int((history_ts > compiled_at).sum())
            return LogProbRow(r.item_ids, r.scores, max(0, since - r.continued), r.row.floor)
    return None


def merge_candidates(vectors: np.ndarray, vec: np.ndarray, ann_ids: np.ndarray, ann_scores: np.ndarray,
                     rows: Sequence[np.ndarray], extra: Sequence[np.ndarray] = (),
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Union of ANN candidates and agent-row items: ids, retrieval scores (``vectors @ vec`` for
    items ANN did not find), best position in any of ``rows`` (-1 = none), and whether ANN found
    it. ``extra`` rows (log-prob rows, which reach the ranker through their scores) join the
    union without positions.

    The ranker's training (``ranker_train.build_examples``) calls this too, so the candidate
    lists it learns from are built exactly as serving builds them."""
    rows = [r for r in rows if r.shape[0]]
    extra = [r for r in extra if r.shape[0]]
    if not rows and not extra:
        return ann_ids, ann_scores, np.full(ann_ids.shape[0], -1, dtype=np.int64), np.ones(ann_ids.shape[0], bool)
    row_items = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    row_posn = np.concatenate([np.arange(r.shape[0]) for r in rows]) if rows else np.zeros(0, np.int64)
    srt = np.lexsort((row_posn, row_items))
    row_items, row_posn = row_items[srt], row_posn[srt]
    first = np.r_[True, row_items[1:] != row_items[:-1]] if row_items.shape[0] else np.zeros(0, bool)
    row_items, row_posn = row_items[first], row_posn[first]  # unique items, best position
    proposed = np.unique(np.concatenate([row_items, *[e.astype(np.int64) for e in extra]]))
    new = proposed[~np.isin(proposed, ann_ids)]
    new_scores = (vectors[new] @ vec).astype(np.float32)
    cand = np.concatenate([ann_ids, new])
    retr = np.concatenate([ann_scores, new_scores])
    if row_items.shape[0]:
        idx = np.minimum(np.searchsorted(row_items, cand), row_items.shape[0] - 1)
        row_pos = np.where(row_items[idx] == cand, row_posn[idx], -1)
    else:
        row_pos = np.full(cand.shape[0], -1, dtype=np.int64)
    from_ann = np.r_[np.ones(ann_ids.shape[0], bool), np.zeros(new.shape[0], bool)]
    return cand, retr, row_pos, from_ann
