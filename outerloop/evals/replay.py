"""Replays: serve a dataset's held-out interactions the way production would, and score them.

Offline metrics (:mod:`outerloop.inner_loop.model.evaluate`) answer "how good is the model". A replay asks
the two questions the architecture is built on, each with nothing visible to a served request
that happened after it:

- **fresh vs stale** (:func:`fresh_vs_stale`, datasets with timestamps): walk the last
  ``test_share`` of interactions (a global time split) and, at each one, recommend from the
  user's history up to that moment (the real-time inner loop) and from the history as of the
  end of the previous UTC day (a nightly batch). The model is trained only on interactions
  before the split (:func:`train_before_cut`); artifacts passed in are accepted only when
  their manifest's data hash says the same.
- **inner vs inner+outer** (:func:`inner_vs_outer`, sequence-order datasets such as ML-1M):
  the funnel alone against the funnel serving the rows the real ``OuterLoop`` compiled for the
  user from what it knew when the test item was served (the train+val prefix).

Both report NDCG@k / HR@k of the served list (full catalog, the user's earlier items removed,
ties broken at random, seeded).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from outerloop.data.schema import InteractionData, UserSequence
from outerloop.errors import UserInputError
from outerloop.inner_loop.model.evaluate import ScoreFn, hit_ndcg, target_ranks
from outerloop.storage.clients import RedisClient

if TYPE_CHECKING:
    from outerloop.inner_loop.model.artifacts import Artifacts

DAY_MS = 86_400_000
EVENTS_SINCE_BATCH_BUCKETS: tuple[tuple[int, int], ...] = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, 10**9))


# --- the time split ------------------------------------------------------------------------------


def require_timestamps(data: InteractionData) -> None:
    """Fresh vs stale needs event times, sorted per user (the loaders sort them)."""
    for u in data.users:
        if u.ts is None:
            raise UserInputError(f"dataset {data.name!r} has no timestamps: fresh vs stale needs them "
                                 "(use ml-100k or ml-latest-small)")
        if u.ts.shape[0] > 1 and bool(np.any(np.diff(u.ts) < 0)):
            raise UserInputError(f"dataset {data.name!r}: user {u.user_id}'s events are not in time order")


def time_cut_ms(data: InteractionData, test_share: float) -> int:
    """The split time: interactions at or after it (about ``test_share`` of all) are the test
    period; the model may only learn from those before it."""
    if not 0.0 < test_share < 1.0:
        raise UserInputError(f"test share must be in (0, 1), got {test_share}")
    require_timestamps(data)
    ts = np.concatenate([u.ts for u in data.users if u.ts is not None and len(u)])
    return int(np.quantile(ts, 1.0 - test_share, method="higher"))


def before(data: InteractionData, cut_ms: int) -> InteractionData:
    """The dataset as it was just before ``cut_ms``: every event strictly earlier, users with
    none dropped, the full catalog kept (items are metadata, not interactions)."""
    users = []
    for u in data.users:
        keep = u.ts < cut_ms  # type: ignore[operator]
        if keep.any():
            users.append(UserSequence(u.user_id, u.items[keep], u.ts[keep],  # type: ignore[index]
                                      None if u.actions is None else u.actions[keep]))
    return InteractionData(name=data.name, catalog=data.catalog, users=users)


def day_start_ms(t_ms: np.ndarray | int) -> np.ndarray:
    """Start of the UTC day holding ``t_ms``: when the nightly batch last ran."""
    return (np.asarray(t_ms, dtype=np.int64) // DAY_MS) * DAY_MS


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One test interaction served: user ``user`` (index into ``data.users``) at ``t_ms`` is
    recommended a list, and ``target`` is what they interacted with next.

    ``fresh_end`` / ``stale_end``: the histories are ``items[:fresh_end]`` (every event strictly
    before ``t_ms``) and ``items[:stale_end]`` (every event before the start of that UTC day).
    """

    user: int
    pos: int
    t_ms: int
    target: int
    fresh_end: int
    stale_end: int

    @property
    def events_since_batch(self) -> int:
        return self.fresh_end - self.stale_end


def served_requests(data: InteractionData, cut_ms: int, *, max_requests: int | None = None,
                    seed: int = 0) -> tuple[list[ServedRequest], int]:
    """The test interactions (``ts >= cut_ms``) of users with some earlier history, in time
    order, and how many were skipped for having none (both histories empty: nothing to
    compare). ``max_requests`` keeps a seeded random subset."""
    require_timestamps(data)
    out: list[ServedRequest] = []
    cold = 0
    for ui, u in enumerate(data.users):
        ts = u.ts
        assert ts is not None
        idx = np.flatnonzero(ts >= cut_ms)
        if idx.size == 0:
            continue
        fresh = np.searchsorted(ts, ts[idx], side="left")
        stale = np.searchsorted(ts, day_start_ms(ts[idx]), side="left")
        for p, f, s in zip(idx.tolist(), fresh.tolist(), stale.tolist()):
            if f == 0:
                cold += 1
                continue
            out.append(ServedRequest(ui, p, int(ts[p]), int(u.items[p]), f, s))
    if max_requests is not None and len(out) > max_requests:
        rng = np.random.default_rng(seed)
        out = [out[i] for i in sorted(rng.choice(len(out), max_requests, replace=False).tolist())]
    out.sort(key=lambda r: (r.t_ms, r.user, r.pos))
    return out, cold


# --- scoring ---------------------------------------------------------------------------------------


def _slice(u: UserSequence, end: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    return (u.items[:end].astype(np.int64), None if u.actions is None else u.actions[:end],
            None if u.ts is None else u.ts[:end])


def served_ranks(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray],
                 rng: np.random.Generator) -> np.ndarray:
    """0-based rank of each target in a full-catalog list without the excluded (seen) items."""
    scores = np.array(scores, dtype=np.float64)  # writable copy
    scores[:, 0] = -np.inf
    rows = np.arange(scores.shape[0])
    keep = scores[rows, targets].copy()
    for r, ex in enumerate(exclude):
        scores[r, ex] = -np.inf
    scores[rows, targets] = keep
    return target_ranks(scores, targets, rng)


def _metrics(ndcg: np.ndarray, hit: np.ndarray, k: int) -> dict[str, float | int]:
    return {f"ndcg@{k}": float(ndcg.mean()) if ndcg.size else 0.0,
            f"hr@{k}": float(hit.mean()) if hit.size else 0.0, "n": int(ndcg.size)}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b > 0 else None


def fresh_vs_stale(data: InteractionData, score: ScoreFn, requests: Sequence[ServedRequest], *, k: int = 10,
                   seed: int = 0, batch_size: int = 256, popularity: np.ndarray | None = None) -> dict[str, Any]:
    """NDCG@k / HR@k of recommending from the fresh and from the stale history at every request.

    Both lists drop everything the user interacted with before the request (a nightly list is
    filtered at serving time too, as the funnel's precomputed baseline does), so the two differ
    only in what the model was shown. ``score`` gets (histories, actions, timestamps) in
    request order, fresh batch then stale batch.
    """
    rng = np.random.default_rng(seed)
    n = len(requests)
    res = {name: (np.zeros(n), np.zeros(n)) for name in ("fresh", "stale", "popularity")}
    for s in range(0, n, batch_size):
        batch = requests[s:s + batch_size]
        users = [data.users[r.user] for r in batch]
        targets = np.asarray([r.target for r in batch], dtype=np.int64)
        exclude = [u.items[:r.fresh_end].astype(np.int64) for u, r in zip(users, batch)]
        for name, end in (("fresh", [r.fresh_end for r in batch]), ("stale", [r.stale_end for r in batch])):
            parts = [_slice(u, e) for u, e in zip(users, end)]
            acts = [p[1] for p in parts]
            tss = [p[2] for p in parts]
            scores = score([p[0] for p in parts], None if any(a is None for a in acts) else acts,  # type: ignore[arg-type]
                           None if any(t is None for t in tss) else tss)  # type: ignore[arg-type]
            hit, ndcg = hit_ndcg(served_ranks(scores, targets, exclude, rng), k)
            res[name][0][s:s + len(batch)], res[name][1][s:s + len(batch)] = ndcg, hit
        if popularity is not None:
            pop = np.broadcast_to(np.asarray(popularity, dtype=np.float64), (len(batch), popularity.shape[0]))
            hit, ndcg = hit_ndcg(served_ranks(pop, targets, exclude, rng), k)
            res["popularity"][0][s:s + len(batch)], res["popularity"][1][s:s + len(batch)] = ndcg, hit

    since = np.asarray([r.events_since_batch for r in requests], dtype=np.int64)
    fresh, stale = _metrics(*res["fresh"], k), _metrics(*res["stale"], k)
    changed = since > 0
    buckets = []
    for lo, hi in EVENTS_SINCE_BATCH_BUCKETS:
        m = (since >= lo) & (since <= hi)
        buckets.append({"events_since_batch": f"{lo}" if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}"),
                        "n": int(m.sum()),
                        f"fresh_ndcg@{k}": float(res["fresh"][0][m].mean()) if m.any() else None,
                        f"stale_ndcg@{k}": float(res["stale"][0][m].mean()) if m.any() else None})
    out: dict[str, Any] = {
        "k": k,
        "n_requests": n,
        "n_users": len({r.user for r in requests}),
        f"fresh_ndcg@{k}": fresh[f"ndcg@{k}"],
        f"stale_ndcg@{k}": stale[f"ndcg@{k}"],
        "fresh_over_stale": _ratio(fresh[f"ndcg@{k}"], stale[f"ndcg@{k}"]),
        f"fresh_hr@{k}": fresh[f"hr@{k}"],
        f"stale_hr@{k}": stale[f"hr@{k}"],
        "share_with_same_day_events": round(float(changed.mean()), 4) if n else 0.0,
        "changed_only": {
            "n": int(changed.sum()),
            f"fresh_ndcg@{k}": float(res["fresh"][0][changed].mean()) if changed.any() else None,
            f"stale_ndcg@{k}": float(res["stale"][0][changed].mean()) if changed.any() else None,
        },
        "by_events_since_batch": buckets,
    }
    warm = np.asarray([r.stale_end > 0 for r in requests], dtype=bool)
    out["stale_history_empty_share"] = round(float(1.0 - warm.mean()), 4) if n else 0.0
    out["stale_history_nonempty"] = {  # not just new users: the batch knew something about them
        "n": int(warm.sum()),
        f"fresh_ndcg@{k}": float(res["fresh"][0][warm].mean()) if warm.any() else None,
        f"stale_ndcg@{k}": float(res["stale"][0][warm].mean()) if warm.any() else None,
    }
    for c in (out["changed_only"], out["stale_history_nonempty"]):
        c["fresh_over_stale"] = _ratio(c[f"fresh_ndcg@{k}"] or 0.0, c[f"stale_ndcg@{k}"] or 0.0)
    if popularity is not None:
        out[f"popularity_ndcg@{k}"] = _metrics(*res["popularity"], k)[f"ndcg@{k}"]
    return out


# --- the replay's model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayModel:
    """The fixed small configuration the fresh-vs-stale replay trains (same for every dataset,
    so two runs compare; small, so a replay takes minutes on two idle cores)."""

    d_model: int = 48
    n_layers: int = 2
    n_heads: int = 1
    max_len: int = 100
    dropout: float = 0.2
    epochs: int = 100  # upper bound; early stopping on validation NDCG@10 ends sooner
    patience: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 42
    max_minutes: float = 20.0
    threads: int = 0  # 0 = auto (see inner_loop.model.train.pick_threads)


def train_before_cut(data: InteractionData, cut_ms: int, cfg: ReplayModel | None = None, *,
                     progress: bool = False) -> "Artifacts":
    """Train the replay's model on :func:`before` ``(data, cut_ms)`` only; the manifest records
    the cut and the hash of exactly that data (see :func:`check_trained_before`)."""
    from outerloop.data.datasets import dataset_hash
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.model.train import TrainConfig, model_config_for, train

    cfg = cfg or ReplayModel()
    pre = before(data, cut_ms)
    mcfg = model_config_for(pre, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                            max_len=cfg.max_len, dropout=cfg.dropout)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, patience=cfg.patience,
                       seed=cfg.seed, max_minutes=cfg.max_minutes, num_threads=cfg.threads)
    result = train(pre, mcfg, tcfg, progress=progress)
    manifest = {
        "dataset": data.name,
        "data_hash": dataset_hash(pre),
        "replay": {"cut_ms": cut_ms, "trained_on": "interactions strictly before cut_ms"},
        "config": {"train": dataclasses.asdict(tcfg)},
        "wall_time_s": round(result.wall_s, 1),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "metrics": {"valid_best": result.valid},
    }
    return Artifacts.from_model(result.model, data.catalog, result.popularity, manifest)


def check_trained_before(artifacts: "Artifacts", data: InteractionData, cut_ms: int) -> None:
    """Refuse artifacts that were not trained on exactly the pre-cut data (leakage guard)."""
    from outerloop.data.datasets import dataset_hash

    if len(artifacts.catalog) != len(data.catalog):
        raise UserInputError(f"artifacts have {len(artifacts.catalog)} items, dataset {data.name!r} {len(data.catalog)}")
    want = dataset_hash(before(data, cut_ms))
    if artifacts.manifest.get("data_hash") != want:
        raise UserInputError(
            f"{artifacts.dir}: not trained on {data.name!r} before the cut "
            f"({iso(cut_ms)}): its data hash differs, so it may have seen the test period. "
            "Train inside the replay (omit --artifacts) or pass artifacts it saved (--save-model)")


def iso(t_ms: int) -> str:
    return dt.datetime.fromtimestamp(t_ms / 1000, tz=dt.timezone.utc).isoformat(timespec="seconds")


def run_fresh_vs_stale(data: InteractionData, *, test_share: float = 0.1, artifacts: "Artifacts | None" = None,
                       model: ReplayModel | None = None, k: int = 10, max_requests: int | None = None,
                       seed: int = 0, progress: bool = False,
                       on_trained: Callable[["Artifacts"], None] | None = None) -> dict[str, Any]:
    """The whole fresh-vs-stale replay of one dataset: split, model, requests, metrics."""
    cut = time_cut_ms(data, test_share)
    if artifacts is None:
        artifacts = train_before_cut(data, cut, model, progress=progress)
        trained = "in the replay"
    else:
        check_trained_before(artifacts, data, cut)
        trained = f"loaded from {artifacts.dir} (data hash matches the pre-cut data)"
    if on_trained is not None:
        on_trained(artifacts)
    requests, cold = served_requests(data, cut, max_requests=max_requests, seed=seed)
    pre = before(data, cut)
    out: dict[str, Any] = {
        "replay": "fresh_vs_stale",
        "dataset": data.name,
        "test_share": test_share,
        "cut_ms": cut,
        "cut": iso(cut),
        "test_period_end": iso(max(int(u.ts.max()) for u in data.users if u.ts is not None and len(u))),
        "stale_policy": "nightly batch at 00:00 UTC: the history up to the end of the previous UTC day",
        "fresh_policy": "real time: every event strictly before the request",
        "seen_filter": "both lists drop everything seen before the request",
        "train_interactions": pre.n_interactions,
        "cold_requests_skipped": cold,
        "model": {"version": artifacts.model_version, "trained": trained,
                  "best_epoch": artifacts.manifest.get("best_epoch"),
                  "valid": (artifacts.manifest.get("metrics") or {}).get("valid_best")},
        "leakage": {
            "max_train_ts_before_cut": bool(max(int(u.ts.max()) for u in pre.users if u.ts is not None) < cut),
            "every_history_before_its_request": all(
                r.fresh_end <= r.pos and int(data.users[r.user].ts[r.fresh_end - 1]) < r.t_ms  # type: ignore[index]
                for r in requests),
        },
    }
    out.update(fresh_vs_stale(data, artifacts.scores, requests, k=k, seed=seed, popularity=artifacts.popularity))
    return out


# --- inner vs inner+outer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OuterReplay:
    """Knobs of the inner-vs-outer replay (sequence-order datasets such as SASRec's ML-1M).

    Without timestamps, "known when the test item was served" is each user's train+val prefix
    (every item but the last); events get synthetic times ``event_gap_ms`` apart ending at the
    replay clock, so sessions, trending decay and dayparts have something to read.

    ``staleness``: for each k, the outer loop compiles every user's rows from the history as it
    was k interactions before the request (and its co-watch graph and trending see every user's
    prefix k interactions short), while the inner loop serves from the full prefix (it is real
    time). k = 0 is a daemon refreshing on every interaction.
    """

    n_users: int | None = 500  # evaluated users (seeded sample); None = every user
    seed: int = 0
    k: int = 10
    session_events: int = 20  # the closed session that triggers the cycle: the prefix's last N
    ingest_events_per_user: int = 10  # of every user's prefix, fed to co-watch and trending (edges ~ n^2)
    event_gap_ms: int = 60_000
    ingest_batch: int = 5_000
    history_cap: int = 200
    staleness: tuple[int, ...] = (0,)
    # the staleness settings at which each user is also served once without each of their rows in
    # turn (None: every one; (): none)
    ablate_at: tuple[int, ...] | None = None


def replay_clock_ms(now_ms: int | None = None) -> int:
    """20:00 UTC of yesterday: in the past (events may not come from the future) and the same
    hour of day on every run (the planner's late-night rule reads the hour)."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return int(day_start_ms(now)) - DAY_MS + 20 * 3_600_000


@dataclass(slots=True)
class _Tally:
    """Per-user results of one staleness setting and what the outer loop did, gathered during
    the replay."""

    outer: list[float] = dataclasses.field(default_factory=list)
    outer_hit: list[bool] = dataclasses.field(default_factory=list)
    without: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # row id -> NDCG without it
    row_users: dict[str, int] = dataclasses.field(default_factory=dict)  # row id -> users served with it
    cycle_ms: list[float] = dataclasses.field(default_factory=list)
    cycle_cpu_ms: list[float] = dataclasses.field(default_factory=list)
    request_cpu_ms: list[float] = dataclasses.field(default_factory=list)
    origins: dict[str, int] = dataclasses.field(default_factory=dict)
    rows: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    facts: dict[str, int] = dataclasses.field(default_factory=dict)
    tool_calls: dict[str, int] = dataclasses.field(default_factory=dict)
    plans: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # agent -> outcome -> runs
    row_missing: dict[str, int] = dataclasses.field(default_factory=dict)  # users served without the agent's row
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    ranker_used: int = 0
    rows_continued: int = 0  # users whose row the funnel served as its branch for their next item
    exposed_events: int = 0
    exposed_after_request: int = 0
    exposed_after_staleness_cut: int = 0

    def bump(self, d: dict[str, Any], key: str, by: float = 1) -> None:
        d[key] = d.get(key, 0) + by


def _ndcg_at(ids: np.ndarray, target: int, k: int) -> tuple[float, int | None]:
    pos = np.flatnonzero(ids[:k] == target)
    if pos.size == 0:
        return 0.0, None
    return float(1.0 / np.log2(pos[0] + 2.0)), int(pos[0])


def paired_lift_ci(inner: np.ndarray, outer: np.ndarray, *, seed: int = 0, n_boot: int = 2000) -> list[float] | None:
    """95% bootstrap interval (users resampled, pairs kept) of ``mean(outer) / mean(inner) - 1``."""
    if inner.size < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, inner.size, size=(n_boot, inner.size))
    base = inner[idx].mean(1)
    ok = base > 0
    lifts = outer[idx].mean(1)[ok] / base[ok] - 1.0
    return [round(float(np.percentile(lifts, 2.5)), 4), round(float(np.percentile(lifts, 97.5)), 4)] if lifts.size else None


def _lift(inner: np.ndarray, outer: np.ndarray, seed: int) -> dict[str, Any]:
    g_in, g_out = (float(inner.mean()), float(outer.mean())) if inner.size else (0.0, 0.0)
    return {"relative_lift": round(g_out / g_in - 1.0, 4) if g_in > 0 else None,
            "relative_lift_ci95": paired_lift_ci(inner, outer, seed=seed)}


def _dist(xs: Sequence[float]) -> dict[str, float | None]:
    if not len(xs):
        return {"p50": None, "mean": None, "p99": None}
    a = np.asarray(xs, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "mean": round(float(a.mean()), 3),
            "p99": round(float(np.percentile(a, 99)), 3)}


@dataclass(slots=True)
class _OuterReplayRun:
    """One staleness setting of the inner-vs-outer replay in progress: the live loop, the
    funnels and user store, and the tally."""

    cfg: OuterReplay
    t0: int
    loop: Any
    funnel: Any  # the served ranker: inner+outer
    inner_funnels: dict[str, Any]  # name -> funnel of the inner arm candidates (served with no rows)
    store: Any
    sync: RedisClient  # blocking client, for seeding histories
    keys: Any
    tally: _Tally = dataclasses.field(default_factory=_Tally)

    def ts_of(self, prefix: np.ndarray, pos: int | np.ndarray) -> Any:
        """Synthetic event time of position ``pos`` of a prefix (the newest ends at the clock)."""
        return self.t0 - (prefix.shape[0] - pos) * self.cfg.event_gap_ms

    def events_of(self, user: str, prefix: np.ndarray, last: int, upto: int) -> list[Any]:
        """Events ``upto - last .. upto - 1`` of the prefix ("rate": the MovieLens interaction)
        at their synthetic times; event ids name their position in the sequence."""
        from outerloop.contracts.events import Event

        start = max(0, upto - last)
        out = [Event(event_id=f"{user}:{pos}", user_id=user, item_id=int(prefix[pos]), type="rate",
                     ts=int(self.ts_of(prefix, pos))) for pos in range(start, upto)]
        self.tally.exposed_events += len(out)
        self.tally.exposed_after_request += sum(pos >= prefix.shape[0] for pos in range(start, upto))
        self.tally.exposed_after_staleness_cut += sum(pos >= upto for pos in range(start, upto))
        return out

    async def ingest(self, cases: Sequence[tuple[str, np.ndarray, int]], k: int) -> None:
        """Every user's recent events, as of k interactions before their request, into the
        co-watch graph and trending counts."""
        batch: list[Any] = []
        for user, prefix, _ in cases:
            batch += self.events_of(user, prefix, self.cfg.ingest_events_per_user, _upto(prefix, k))
            if len(batch) >= self.cfg.ingest_batch:
                await self.loop.ingest(batch)
                batch = []
        if batch:
            await self.loop.ingest(batch)

    def seed(self, user: str, prefix: np.ndarray, upto: int) -> None:
        """The user's history in Redis: ``prefix[:upto]`` at its synthetic times."""
        from outerloop.inner_loop.serving.user_state import seed_history

        ts = [int(self.ts_of(prefix, p)) for p in range(upto)]
        seed_history(self.sync, user, prefix[:upto].tolist(), history_cap=self.cfg.history_cap, ts_ms=ts,
                     keys=self.keys)

    async def cycle(self, user: str, prefix: np.ndarray, upto: int) -> Any:
        """One real outer-loop cycle over ``prefix[:upto]``, triggered by its last session's close."""
        from outerloop.contracts.triggers import session_triggers

        session = self.events_of(user, prefix, self.cfg.session_events, upto)
        triggers = session_triggers(session, genres_of=self.loop.artifacts.catalog.genres_of)
        return await self.loop.run_cycle(user, triggers, now_ms=self.t0)

    async def compile(self, user: str, prefix: np.ndarray, k: int) -> Any:
        """The rows the outer loop compiles k interactions before the request, with the user's
        full prefix in place afterwards (what the funnel serves from)."""
        upto = _upto(prefix, k)
        self.seed(user, prefix, upto)
        cpu = time.process_time()
        res = await self.cycle(user, prefix, upto)
        self.tally.cycle_cpu_ms.append((time.process_time() - cpu) * 1000.0)
        if upto < prefix.shape[0]:
            self.seed(user, prefix, prefix.shape[0])
        return res

    async def live_rows(self, user: str) -> list[Any]:
        """The user's agent rows exactly as the funnel would read them now."""
        from outerloop.contracts.rows import live_rows

        state = await self.store.read(user, self.funnel.config.max_history)
        rows, _ = live_rows(state.rows, now_ms=self.t0, n_items=self.funnel.n_items,
                            limit=self.funnel.config.max_agent_rows)
        return rows

    async def serve(self, user: str, prefix: np.ndarray, target: int, k_stale: int,
                    inner: dict[str, list[float]] | None) -> None:
        """One evaluated user at one staleness: rows compiled k interactions back, the
        inner+outer list, each row left out in turn, and (once) the inner arms."""
        t, k = self.tally, self.cfg.k
        res = await self.compile(user, prefix, k_stale)
        state = await self.store.read(user, self.funnel.config.max_history)
        if inner is not None:
            plain = dataclasses.replace(state, rows={})
            for name, funnel in self.inner_funnels.items():
                inner.setdefault(name, []).append(
                    _ndcg_at(funnel.recommend(plain, k, now_ms=self.t0).rows[0].item_ids, target, k)[0])
        cpu = time.process_time()
        continued = self.funnel.stats["rows_continued"]
        outer = self.funnel.recommend(state, k, now_ms=self.t0)
        t.request_cpu_ms.append((time.process_time() - cpu) * 1000.0)
        t.rows_continued += self.funnel.stats["rows_continued"] > continued
        top_out = outer.rows[0]
        g_out, pos = _ndcg_at(top_out.item_ids, target, k)
        t.outer.append(g_out)
        t.outer_hit.append(g_out > 0)
        if self.cfg.ablate_at is None or k_stale in self.cfg.ablate_at:
            for row_id in sorted(state.rows):
                less = dataclasses.replace(state, rows={r: v for r, v in state.rows.items() if r != row_id})
                g = _ndcg_at(self.funnel.recommend(less, k, now_ms=self.t0).rows[0].item_ids, target, k)[0]
                # a row first met now: for the users before, removing it changed nothing
                t.without.setdefault(row_id, list(t.outer[:-1])).append(g)
                t.bump(t.row_users, row_id)
        for row_id, vals in t.without.items():  # a user without that row: removing it changes nothing
            if len(vals) < len(t.outer):
                vals.append(g_out)
        t.ranker_used += outer.ranker == "model"
        t.cycle_ms.append(res.elapsed_ms)
        if pos is not None:
            t.bump(t.origins, top_out.origins[pos])
        t.bump(t.plans, "+".join(sorted({s.agent for s in res.plan.steps})) or "nothing")
        for row_id, row in res.rows_committed.items():
            r = t.rows.setdefault(row_id, {"committed": 0, "target_in_row": 0, "served_row_ndcg_sum": 0.0})
            r["committed"] += 1
            r["target_in_row"] += int(target in row.item_ids())
        for served in outer.rows[1:]:
            if served.row_id in t.rows:
                t.rows[served.row_id]["served_row_ndcg_sum"] += _ndcg_at(served.item_ids, target, k)[0]
        produced = set(res.rows_committed)
        for rec in res.records:
            t.bump(t.tool_calls, rec.agent, rec.tool_calls)
            t.outcomes.setdefault(rec.agent, {})
            t.bump(t.outcomes[rec.agent], rec.outcome)
            if rec.outcome != "ok":
                t.bump(t.failures, f"{rec.agent} {rec.outcome}: {(rec.error or '')[:100]}")
            report = getattr(rec.value, "value", None)
            for key in getattr(report, "upserts", ()) or ():
                t.bump(t.facts, str(key).split(":", 1)[0])
        for step in res.plan.steps:  # planned rows that did not land: the user keeps the previous row (none here)
            for row_id in step.rows:
                if row_id not in produced:
                    t.bump(t.row_missing, row_id)


def _upto(prefix: np.ndarray, k: int) -> int:
    """How much of the prefix the outer loop sees at staleness k (at least one item)."""
    return max(1, int(prefix.shape[0]) - int(k))


@asynccontextmanager
async def _outer_replay(artifacts: Any, ranker: Any, cfg: OuterReplay, *, redis_target: Any = None, keys: Any = None,
                        extra_agents: Sequence[Any] = (), inner_rankers: dict[str, Any] | None = None,
                        ensemble: Any = True, ranker_without_rows: Any = None) -> AsyncIterator[_OuterReplayRun]:
    """A live ``OuterLoop`` and funnels on a Redis of their own (a temporary embedded server unless
    ``redis_target`` is given), at the replay clock."""
    import tempfile
    from pathlib import Path

    from outerloop.agents.loop import OuterLoop
    from outerloop.agents.runtime import LoopConfig
    from outerloop.inner_loop.serving.funnel import Funnel, FunnelConfig
    from outerloop.inner_loop.serving.user_state import UserStore
    from outerloop.storage.embedded import release_embedded
    from outerloop.storage.clients import RedisTarget
    from outerloop.contracts.keys import Keys

    keys = keys or Keys
    t0 = replay_clock_ms()
    tmp = tempfile.TemporaryDirectory(prefix="outerloop-replay-") if redis_target is None else None
    target = redis_target or RedisTarget(embedded_dir=Path(tmp.name) / "redis")  # type: ignore[union-attr]
    sync = target.sync_client()
    client = target.async_client()
    fcfg = FunnelConfig(request_budget_ms=60_000.0)  # a replay measures quality; `bench serve` measures latency
    funnel = Funnel(artifacts, ranker, fcfg, ranker_without_rows=ranker_without_rows)
    plain = Funnel(artifacts, ranker, fcfg)
    inner = {name: (plain if r is ranker else Funnel(artifacts, r, fcfg)) for name, r in (inner_rankers or {}).items()}
    try:
        # one cycle at a time: no other user's cycle can wait on a blocked event loop, so the
        # watchdog's demotion would only turn machine-load noise into another agent setup
        # mid-replay; a run past its deadline is still cancelled, recorded killed, nothing committed
        async with OuterLoop(artifacts, redis=client, keys=keys, agents=extra_agents, clock_ms=lambda: t0,
                             config=LoopConfig(watchdog=False),
                             ensemble=ensemble) as loop:
            yield _OuterReplayRun(cfg, t0, loop, funnel, inner,
                                  UserStore(client, history_cap=cfg.history_cap, keys=keys), sync, keys)
    finally:
        await client.aclose()
        sync.close()
        if tmp is not None:
            release_embedded(target.embedded_dir, save=False)
            tmp.cleanup()


def _pick(n_cases: int, cfg: OuterReplay) -> list[int]:
    """The evaluated cases: a seeded sample of ``cfg.n_users`` (all when None), in case order."""
    n = n_cases if cfg.n_users is None else min(cfg.n_users, n_cases)
    rng = np.random.default_rng(cfg.seed)
    return sorted(rng.choice(n_cases, n, replace=False).tolist()) if n < n_cases else list(range(n))


def _check_staleness(staleness: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(dict.fromkeys(int(k) for k in staleness))
    if not ks or any(k < 0 for k in ks):
        raise UserInputError(f"staleness must be one or more integers >= 0, got {list(staleness)}")
    return ks


async def inner_vs_outer(artifacts: Any, data: InteractionData, *, ranker: Any = None,
                         inner_rankers: dict[str, Any] | None = None, inner_choice: str | None = None,
                         config: OuterReplay | None = None, redis_target: Any = None, keys: Any = None,
                         extra_agents: Sequence[Any] = (), ensemble: Any = True, ranker_without_rows: Any = None,
                         progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Serve each evaluated user's test item through the real funnel with no agent rows (the
    inner loop alone), and, for every staleness k, with the rows one real ``OuterLoop`` cycle
    (planner, memory, tools, ensemble, evaluator, default budgets, the daemon's enforcer)
    compiled from the user's history k interactions before the request.

    ``ranker`` serves inner+outer; ``inner_rankers`` (name -> ranker, default just ``ranker``)
    are the candidates for the inner arm, each served with no rows, and ``inner_choice`` names
    the one the report's headline compares against (chosen by the caller on validation data;
    default the first); ``ranker_without_rows`` ranks, in the inner+outer arm, the users whose
    cycle left no log-prob row (as ``outerloop serve`` does). The outer loop is shown only the prefix (and at k > 0 only its first
    len - k items, for every user's co-watch and trending too). ``extra_agents`` run in the same
    cycles (tests use one to record what agents see). Each k runs on a fresh Redis.
    """
    from outerloop.evals.budget_report import budget_compliance

    cfg = config or OuterReplay()
    ks = _check_staleness(cfg.staleness)
    inner_rankers = inner_rankers or {"served ranker": ranker}
    choice = inner_choice or next(iter(inner_rankers))
    if choice not in inner_rankers:
        raise UserInputError(f"inner arm {choice!r} is not one of {sorted(inner_rankers)}")
    cases = [(u.user_id, u.items[:-1].astype(np.int64), int(u.items[-1])) for u in data.users if len(u) >= 3]
    picked = _pick(len(cases), cfg)
    inner: dict[str, list[float]] = {}
    per_k: dict[int, tuple[_Tally, dict[str, Any], dict[str, Any]]] = {}
    total = len(picked) * len(ks)
    done = 0
    for k_stale in ks:
        async with _outer_replay(artifacts, ranker, cfg, redis_target=redis_target, keys=keys,
                                 extra_agents=extra_agents, inner_rankers=inner_rankers, ensemble=ensemble,
                                 ranker_without_rows=ranker_without_rows) as run:
            started = time.perf_counter()
            await run.ingest(cases, k_stale)
            run.tally.seconds["ingest"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            for ci in picked:
                await run.serve(*cases[ci], k_stale, inner if not per_k else None)
                done += 1
                if progress is not None:
                    progress(done, total)
            run.tally.seconds["serve_and_cycles"] = round(time.perf_counter() - started, 1)
            budget = budget_compliance(run.loop.accounting.records,
                                       late_writes_refused=run.loop.accounting.late_writes_refused, keep_samples=2000)
            per_k[k_stale] = (run.tally, budget, run.loop.stats())
            t0 = run.t0
            agents = run.loop.agents.names()
        if redis_target is not None and keys is not None:  # a fresh namespace state for the next k
            from outerloop.storage.clients import delete_namespace

            delete_namespace(redis_target, keys.prefix)
    return _outer_report(data, artifacts, cfg, t0, inner, choice, per_k, len(picked), len(cases), agents)


async def compile_outer_rows(artifacts: Any, data: InteractionData, split: str = "valid", *,
                             config: OuterReplay | None = None, redis_target: Any = None, keys: Any = None,
                             extra_agents: Sequence[Any] = (), ensemble: Any = True,
                             every_user_at: Sequence[int] = (),
                             progress: Callable[[int, int], None] | None = None) -> dict[str, list[Any]]:
    """The agent rows the real outer loop compiles for each user at a leave-one-out cut (default
    the validation cut: history = all but the last two items), as the funnel would read them,
    as :class:`~outerloop.contracts.rows.CompiledRows`.

    ``config.staleness`` spreads the users over staleness settings (by a hash of the id): a
    user at k gets rows compiled k interactions before the cut, as in the replay, so the ranker
    learns how far to trust a row from how old it is. ``every_user_at``: staleness settings every
    user is compiled at besides (its hashed draw then comes from the other settings), so each
    user gives one training example per setting. Each user maps to the list of its
    :class:`~outerloop.contracts.rows.CompiledRows`, one per setting. The ranker trains on these
    (``outerloop train-ranker --agent-rows outer``) so that what it learns about agent rows is
    what the outer loop actually emits, not a stand-in. Like the replay, the outer loop sees
    only the prefixes; ``config.n_users`` samples users (None = all).
    """
    import hashlib

    from outerloop.inner_loop.model.evaluate import leave_one_out
    from outerloop.contracts.rows import CompiledRows

    cfg = config or OuterReplay(n_users=None)
    ks = _check_staleness(cfg.staleness)
    always = _check_staleness(every_user_at) if every_user_at else ()
    drawn = tuple(k for k in ks if k not in always)
    loo = leave_one_out(data, split)  # type: ignore[arg-type]
    cases = [(uid, h, int(t)) for uid, h, t in zip(loo.user_ids, loo.histories, loo.targets.tolist())]
    picked = _pick(len(cases), cfg)
    k_of = {ci: drawn[int(hashlib.sha1(f"{cases[ci][0]}#staleness".encode()).hexdigest()[:8], 16) % len(drawn)]
            for ci in picked} if drawn else {}
    out: dict[str, list[Any]] = {}
    done, total = 0, len(picked) * (len(always) + (1 if drawn else 0))
    for k_stale in sorted(set(always) | set(drawn)):
        mine = picked if k_stale in always else [ci for ci in picked if k_of[ci] == k_stale]
        if not mine:
            continue
        async with _outer_replay(artifacts, None, cfg, redis_target=redis_target, keys=keys,
                                 extra_agents=extra_agents, ensemble=ensemble) as run:
            await run.ingest(cases, k_stale)
            for ci in mine:
                user, prefix, _ = cases[ci]
                await run.compile(user, prefix, k_stale)
                upto = _upto(prefix, k_stale)
                # a row's branches are kept only for the user's next item: the one a request can serve
                # (all of them are ~100 kB a row set, and a replay holds thousands)
                nxt = int(prefix[upto]) if upto < prefix.shape[0] else None
                rows = [r if r.row.branches is None else
                        dataclasses.replace(r, row=r.row.model_copy(update={"branches": r.row.branches.only(nxt)}))
                        for r in await run.live_rows(user)]
                out.setdefault(user, []).append(CompiledRows(rows, events_since=prefix.shape[0] - upto))
                done += 1
                if progress is not None:
                    progress(done, total)
        if redis_target is not None and keys is not None:
            from outerloop.storage.clients import delete_namespace

            delete_namespace(redis_target, keys.prefix)
    return out


def _staleness_report(cfg: OuterReplay, k_stale: int, tally: _Tally, budget: dict[str, Any], stats: dict[str, Any],
                      inner: np.ndarray, arms: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    k = cfg.k
    outer = np.asarray(tally.outer)
    n = outer.size
    diff = outer - inner
    g_out = float(outer.mean()) if n else 0.0
    ablation = {}
    for row_id, vals in sorted(tally.without.items()):
        less = np.asarray(vals)
        ablation[row_id] = {
            "users_with_row": tally.row_users.get(row_id, 0),
            f"ndcg@{k}_without": round(float(less.mean()), 5),
            **{f"{key}_without": v for key, v in _lift(inner, less, cfg.seed).items()},
            "lift_lost_without": round(float(outer.mean() - less.mean()) / float(inner.mean()), 4) if inner.mean() > 0 else None,
        }
    rows = {rid: {"committed": int(r["committed"]), "target_in_row": int(r["target_in_row"]),
                  f"served_row_ndcg@{k}": round(r["served_row_ndcg_sum"] / max(r["committed"], 1), 5)}
            for rid, r in sorted(tally.rows.items())}
    cpu = _dist(tally.cycle_cpu_ms)
    return {
        "staleness": k_stale,
        f"outer_ndcg@{k}": g_out,
        f"outer_hr@{k}": float(np.mean(tally.outer_hit)) if n else 0.0,
        **_lift(inner, outer, cfg.seed),
        # the headline compares against the arm chosen on validation; a reader may prefer another
        "lift_over_each_inner_arm": {name: _lift(a, outer, cfg.seed) for name, a in (arms or {}).items()},
        "users_better": int((diff > 0).sum()),
        "users_worse": int((diff < 0).sum()),
        "ablation_each_row_removed": ablation,
        "cost": {
            "refresh_policy": f"one cycle every {k_stale + 1} interaction(s) keeps rows at most {k_stale} behind",
            "cycles_per_interaction": round(1.0 / (k_stale + 1), 4),
            "outer_loop_cpu_ms_per_cycle": cpu,
            "outer_loop_cpu_ms_per_interaction": (round(cpu["mean"] / (k_stale + 1), 3) if cpu["mean"] is not None
                                                  else None),
            "inner_loop_cpu_ms_per_request": _dist(tally.request_cpu_ms),
            "cycle_wall_ms": _dist(tally.cycle_ms),
            "measured": "process CPU time (all threads of the replay process; the embedded Redis is another process)",
        },
        "agents": {a: dict(sorted(o.items())) for a, o in sorted(tally.outcomes.items())},
        "rows_planned_but_not_committed": tally.row_missing,
        "budget": budget,
        "what_the_outer_loop_did": {
            "plans": tally.plans,
            "rows": rows,
            "target_origin_in_outer_top_k": tally.origins,
            "facts_written_by_kind": tally.facts,
            "tool_calls_by_agent": tally.tool_calls,
            "runs_not_ok": dict(sorted(tally.failures.items(), key=lambda kv: -kv[1])[:10]),
            "ranker_used_share": round(tally.ranker_used / n, 4) if n else 0.0,
            # rows one or more interactions old served as the branch for the user's next item
            "users_served_a_row_branch": tally.rows_continued,
            "cache_hit_rates": {k_: v for k_, v in stats.items() if "hit_rate" in k_ or k_ == "tool_cache_by_tool"},
        },
        "seconds": tally.seconds,
        "leakage": {"events_shown_to_outer_loop": tally.exposed_events,
                    "events_at_or_after_served_item": tally.exposed_after_request,
                    "events_after_the_staleness_cut": tally.exposed_after_staleness_cut},
    }


def _outer_report(data: InteractionData, artifacts: Any, cfg: OuterReplay, t0: int, inner: dict[str, list[float]],
                  choice: str, per_k: dict[int, tuple[_Tally, dict[str, Any], dict[str, Any]]], n: int,
                  n_eligible: int, agents: list[str]) -> dict[str, Any]:
    k = cfg.k
    arms = {name: np.asarray(v) for name, v in inner.items()}
    base = arms[choice]
    by_k = [_staleness_report(cfg, ks, *per_k[ks], base, arms) for ks in per_k]
    first = by_k[0]
    tally0 = per_k[next(iter(per_k))][0]
    return {
        "replay": "inner_vs_outer",
        "dataset": data.name,
        "model_version": str(artifacts.model_version),
        "agents": agents,
        "users": n,
        "eligible_users": n_eligible,
        "seed": cfg.seed,
        "k": k,
        "clock": iso(t0),
        "inner_arm": choice,
        "inner_arms": {name: {f"ndcg@{k}": float(a.mean()) if a.size else 0.0,
                              f"hr@{k}": float((a > 0).mean()) if a.size else 0.0} for name, a in arms.items()},
        f"inner_ndcg@{k}": float(base.mean()) if n else 0.0,
        f"inner_hr@{k}": float((base > 0).mean()) if n else 0.0,
        "staleness": [r["staleness"] for r in by_k],
        # the headline fields describe the first staleness setting (k = 0 unless asked otherwise)
        f"outer_ndcg@{k}": first[f"outer_ndcg@{k}"],
        f"outer_hr@{k}": first[f"outer_hr@{k}"],
        "relative_lift": first["relative_lift"],
        "relative_lift_ci95": first["relative_lift_ci95"],
        "users_better": first["users_better"],
        "users_worse": first["users_worse"],
        "by_staleness": by_k,
        "budget": first["budget"],
        "what_the_outer_loop_did": first["what_the_outer_loop_did"],
        "reference": {"agentrec_reported_ndcg@10_lift": 0.019, "required": 0.02, "goal_at_staleness_1": 0.05},
        "ingested_events_per_user": cfg.ingest_events_per_user,
        "leakage": {
            "events_shown_to_outer_loop": sum(t.exposed_events for t, _, _ in per_k.values()),
            "events_at_or_after_served_item": sum(t.exposed_after_request for t, _, _ in per_k.values()),
            "events_after_the_staleness_cut": sum(t.exposed_after_staleness_cut for t, _, _ in per_k.values()),
        },
        "seconds": {f"staleness_{ks}": per_k[ks][0].seconds for ks in per_k},
        "protocol": ("each user's last item is served; the inner loop holds the prefix before it (train+val); at "
                     "staleness k the outer loop held only the prefix's first len-k items when it compiled the rows; "
                     "sequence order stands in for time"),
        "ranker_used_share": tally0.ranker_used / n if n else 0.0,
    }
