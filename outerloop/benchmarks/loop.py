"""``python bench/loop.py --artifacts DIR --json``: per-user outer-loop cycle latency and
throughput with the default rule policies, plan- and tool-cache hit rates, and the quality lost
to tool-result reuse (recall@100 of the cached, re-scored vector search vs an uncached one).

What one measured cycle is: ``OuterLoop.run_cycle(user, session_triggers(last session))``
after the user's earlier history was applied, i.e. read the user (2 round trips), plan, run the
memory agent and the tool agent (and whatever the rules add: continue watching, wind down),
commit through the fence. Users run one at a time by default (``--concurrency`` for more), on a
real Redis (an embedded redis-server in a temporary directory unless ``--redis-url``).

Users come from the dataset the artifacts were trained on (the manifest says which): for the
synthetic world its simulated sessions (devices, skips, late nights, episodes); for MovieLens
the SASRec sequences, the last ``--session`` items replayed as one closed session.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TARGET_P99_MS = 100.0


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="outerloop bench loop", description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", required=True, help="trained artifacts directory")
    p.add_argument("--data-dir", help="data root for MovieLens (default: the manifest's, or ../shared/data)")
    p.add_argument("--users", type=int, default=600, help="users to run one measured cycle each")
    p.add_argument("--warmup", type=int, default=30, help="cycles run first and not measured")
    p.add_argument("--session", type=int, default=10, help="MovieLens: items replayed as the closing session")
    p.add_argument("--concurrency", type=int, default=1, help="cycles in flight at once")
    p.add_argument("--clusters", type=int, default=64, help="k-means clusters of user vectors (tool cache keys)")
    p.add_argument("--fit-users", type=int, default=1000, help="users (not measured) whose vectors fit the clusters")
    p.add_argument("--pool", type=int, default=None,
                   help="shared vector-search pool re-scored per user (default: the loop's retrieval_pool)")
    p.add_argument("--cache-curve", default="8,16,32,64,128,256x300,600,1000,1500,2000", metavar="KS x POOLS",
                   help="the tool cache's trade-off swept after the timed cycles: clusters k and pool sizes, "
                        "each point's hit rate and recall@100 lost against uncached search ('none' to skip)")
    p.add_argument("--redis-url", help="a Redis to use (keys under a fresh prefix, deleted after)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-gc-freeze", action="store_true", help="skip gc.freeze() after warm-up")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    return p.parse_args(list(argv))


def _pct(values: list[float], q: float) -> float:
    from outerloop.budgets.accounting import percentile

    v = percentile(values, q)
    return round(v, 2) if v is not None else float("nan")


# -- users and their sessions --------------------------------------------------------------------
def synthetic_users(manifest: dict[str, Any], n: int, seed: int) -> tuple[list[tuple[str, list[Any], list[Any], int]], str]:
    """(user, history events, last-session events, tz) from the world the artifacts learnt."""
    from outerloop.contracts.events import Event
    from outerloop.data.synthetic import CATALOG_USER_ID, SyntheticWorld

    opts = dict(manifest.get("dataset_options") or {})
    days = int(opts.pop("days", 30))
    world = SyntheticWorld.generate(**opts)
    by_user: dict[str, list[Event]] = {}
    for d in world.simulate(days=days):
        if d["user_id"] != CATALOG_USER_ID:
            by_user.setdefault(d["user_id"], []).append(Event(**d))
    out = []
    rng = np.random.default_rng(seed)
    users = sorted(u for u, evs in by_user.items() if len(evs) >= 8)
    for u in rng.permutation(users)[:n].tolist():
        evs = by_user[u]
        # the last session: events after the last gap of more than an hour
        cut = len(evs) - 1
        while cut > 0 and evs[cut].ts - evs[cut - 1].ts < 3_600_000:
            cut -= 1
        cut = min(cut, len(evs) - 2)
        out.append((u, evs[:cut], evs[cut:], world.user(u).tz_offset_min))
    return out, f"synthetic world {opts or 'defaults'}, {days} days simulated"


def movielens_users(name: str, data_dir: str | None, n: int, session: int, seed: int,
                    now_ms: int) -> tuple[list[tuple[str, list[Any], list[Any], int]], str]:
    from outerloop.data.datasets import load_dataset
    from outerloop.contracts.events import Event

    data = load_dataset(name, data_dir)
    rng = np.random.default_rng(seed)
    users = [u for u in data.users if len(u) > session + 5]
    picked = [users[i] for i in rng.permutation(len(users))[:n]]
    out = []
    for u in picked:
        items = u.items.tolist()
        t0 = now_ms - 60_000 * len(items)
        evs = [Event(event_id=f"ml-{u.user_id}-{k}", user_id=f"ml{u.user_id}", item_id=int(i), type="finish",
                     ts=t0 + 60_000 * k) for k, i in enumerate(items)]
        out.append((f"ml{u.user_id}", evs[:-session], evs[-session:], 0))
    return out, f"{name}: last {session} items of each sequence replayed as a closed session"


# -- the benchmark ---------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    from outerloop.agents.caches import KMeansClusters
    from outerloop.contracts.triggers import session_triggers
    from outerloop.agents.loop import OuterLoop
    from outerloop.agents.runtime import LoopConfig
    from outerloop.inner_loop.model.artifacts import Artifacts
    from outerloop.inner_loop.serving.user_state import UserStore
    from outerloop.storage.embedded import release_embedded
    from outerloop.storage.clients import RedisTarget, delete_namespace
    from outerloop.contracts.keys import namespaced_keys

    art = Artifacts.load(args.artifacts)
    dataset = str(art.manifest.get("dataset", "?"))
    wanted = args.users + args.warmup + args.fit_users
    if dataset == "synthetic":
        users, source = synthetic_users(art.manifest, wanted, args.seed)
    else:
        data_dir = args.data_dir or art.manifest.get("data_dir") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
        users, source = movielens_users(dataset, data_dir, wanted, args.session, args.seed, now_ms=1_700_000_000_000)
    fit_users = users[args.users + args.warmup:]
    users = users[: args.users + args.warmup]
    t_fit = time.perf_counter()
    sample = np.concatenate([
        art.encode([[e.item_id for e in (h + s)][-200:] for _, h, s, _ in fit_users[i:i + 256]])
        for i in range(0, len(fit_users), 256)
    ]) if fit_users else np.zeros((0, art.item_vectors.shape[1]), dtype=np.float32)
    prefix = f"olbench-{uuid.uuid4().hex[:8]}"
    keys = namespaced_keys(prefix)
    tmp = tempfile.TemporaryDirectory(prefix="ol-bench-loop-")
    target = RedisTarget(url=args.redis_url) if args.redis_url else RedisTarget(embedded_dir=Path(tmp.name))
    clusters = KMeansClusters.fit(sample, k=args.clusters, seed=args.seed) if len(sample) else None
    n_fit = len(sample)
    fit_s = time.perf_counter() - t_fit
    cfg = LoopConfig() if args.pool is None else LoopConfig(retrieval_pool=args.pool)
    args.pool = cfg.retrieval_pool
    loop = OuterLoop(art, redis=target, keys=keys, config=cfg, clusters=clusters)
    t_setup = time.perf_counter()
    async with loop:
        assert loop.deps is not None
        store = UserStore(loop.deps.redis, history_cap=cfg.history_len, keys=keys)
        history = [e for _, h, _, _ in users for e in h]
        for i in range(0, len(history), 5000):
            await store.apply(history[i:i + 5000])
        recent = [e for _, h, _, _ in users for e in h[-40:]]
        for i in range(0, len(recent), 5000):
            await loop.ingest(recent[i:i + 5000])
        # the histories live in Redis now; a daemon would not hold them in Python either
        users = [(u, [], s, tz) for u, _, s, tz in users]
        del history, recent, fit_users
        setup_s = time.perf_counter() - t_setup

        async def cycle(u: str, session: list[Any], tz: int) -> Any:
            now = session[-1].ts + 60_000
            triggers = session_triggers(session, genres_of=loop.artifacts.catalog.genres_of, tz_offset_min=tz)
            return await loop.run_cycle(u, triggers, now_ms=now)

        # the closing sessions reach the user's state first, as the API would have applied them
        # before the daemon saw the session close; the cycle is what is timed
        sessions = [e for _, _, s, _ in users for e in s]
        for i in range(0, len(sessions), 5000):
            await store.apply(sessions[i:i + 5000])
        del sessions
        for u, _, s, tz in users[: args.warmup]:
            await cycle(u, s, tz)
        if not args.no_gc_freeze:  # long-lived set-up objects out of the collector's way (tail latency)
            gc.collect()
            gc.freeze()
        loop.planner.cache.stats.hits = loop.planner.cache.stats.misses = 0
        for st in loop.tools.cache.stats.values():
            st.hits = st.misses = 0
        loop.accounting.records.clear()

        measured = users[args.warmup:]
        lat: list[float] = []
        rows_per_cycle: list[int] = []
        sem = asyncio.Semaphore(max(1, args.concurrency))

        async def one(u: str, s: list[Any], tz: int) -> None:
            async with sem:
                t = time.perf_counter()
                res = await cycle(u, s, tz)
                lat.append((time.perf_counter() - t) * 1000.0)
                rows_per_cycle.append(len(res.rows_committed))

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(u, s, tz) for u, _, s, tz in measured))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        stats = loop.stats()

        # quality lost to reuse: the shared pool of the user's cluster, re-scored with the
        # user's own vector, against an uncached search with that vector
        recalls: list[float] = []
        from outerloop.tools.builtin import VectorSearchIn

        # each measured user's vector once, in the order the cycles ran (the order the cache saw
        # them): the recall below reads the first 300, the cache curve all of them
        vectors = []
        for u, _, _, _ in measured:
            state = await store.read(u, cfg.history_len)
            vectors.append(art.encode([state.items.tolist()], [state.actions.tolist()], [state.ts.tolist()])[0])
        for vec in vectors[:300]:
            assigned = loop.clusters.assign(vec)
            if assigned is None:
                continue
            key, rep = assigned
            pool = await loop.tools.call("vector_search", VectorSearchIn(vector=rep.tolist(), k=args.pool),
                                         loop.deps.tool_deps, share_key=key)
            ids = np.array(pool.ids())
            cached = set(ids[np.argsort(-(art.item_vectors[ids] @ vec))[:100]].tolist())
            true_ids, _ = art.index.search(vec[None, :], 100)
            recalls.append(len(cached & set(true_ids[0].tolist())) / 100.0)
        curve = None
        if args.cache_curve != "none" and len(sample):
            ks, pools = parse_curve(args.cache_curve)
            curve = cache_curve(art, sample, np.stack(vectors), ks, pools, seed=args.seed)
        if args.redis_url:
            delete_namespace(target, prefix)
    release_embedded(Path(tmp.name), save=False)
    tmp.cleanup()

    runs = stats["runs"]
    by_agent = {a: {k: v[k] for k in ("runs", "ok", "killed", "errors", "over_tool_budget")}
                for a, v in runs.get("by_agent", {}).items()}
    agent_ms: dict[str, dict[str, float]] = {}
    for rec in loop.accounting.records:
        agent_ms.setdefault(rec.agent, {}).setdefault("_", 0)
    for a in agent_ms:
        vals = [r.elapsed_ms for r in loop.accounting.records if r.agent == a]
        agent_ms[a] = {"p50_ms": _pct(vals, 50), "p99_ms": _pct(vals, 99)}
    p99 = _pct(lat, 99)
    failures: dict[str, int] = {}
    for rec in loop.accounting.records:
        if rec.outcome != "ok":
            what = f"{rec.agent}: {rec.outcome}: {(rec.error or '').split(' (')[0][:90]}"
            failures[what] = failures.get(what, 0) + 1
    return {
        "bench": "loop",
        "artifacts": str(args.artifacts),
        "dataset": dataset,
        "model_version": art.model_version,
        "users_source": source,
        "note": None if dataset.startswith("ml-1m") else "not ML-1M artifacts: figures are for this dataset",
        "users": len(lat),
        "concurrency": args.concurrency,
        "gc_freeze": not args.no_gc_freeze,
        "cycle_p50_ms": _pct(lat, 50),
        "cycle_p99_ms": p99,
        "cycle_max_ms": round(max(lat), 2) if lat else None,
        "users_per_s": round(len(lat) / wall, 1) if wall > 0 else None,
        "cpu_ms_per_cycle": round(cpu * 1000.0 / len(lat), 2) if lat else None,  # this process only
        "load_avg_1m": round(__import__("os").getloadavg()[0], 2),
        "target_cycle_p99_ms": TARGET_P99_MS,
        "meets_target": bool(p99 <= TARGET_P99_MS),
        "rows_committed_per_cycle": round(statistics.mean(rows_per_cycle), 2) if rows_per_cycle else 0,
        "plan_cache_hit_rate": stats["plan_cache_hit_rate"],
        "tool_cache_hit_rate": stats["tool_cache_hit_rate"],
        "tool_cache_by_tool": stats["tool_cache_by_tool"],
        "tool_cache_clusters": (f"k-means k={args.clusters} on {n_fit} other users' vectors ({fit_s:.1f} s); "
                                f"shared pool {args.pool} re-scored per user"),
        "recall_at_100_cached_vs_uncached": round(statistics.mean(recalls), 4) if recalls else None,
        "recall_at_100_p10": round(float(np.percentile(recalls, 10)), 4) if recalls else None,
        "tool_cache_curve": curve,
        "agents": {a: {**by_agent.get(a, {}), **agent_ms[a]} for a in sorted(agent_ms)},
        "retries": runs.get("retries", 0),
        "failed_runs": dict(sorted(failures.items(), key=lambda kv: -kv[1])[:6]),
        "setup_s": round(setup_s, 1),
        "machine": f"{__import__('os').cpu_count()} cpu",
    }


# -- the tool cache's trade-off -----------------------------------------------------------------------
def parse_curve(text: str) -> tuple[list[int], list[int]]:
    """``"8,64x600,1500"`` → ([8, 64], [600, 1500]); a bad value is refused naming the flag."""
    from outerloop.errors import UserInputError

    try:
        ks_text, pools_text = text.lower().split("x")
        ks = [int(v) for v in ks_text.split(",") if v.strip()]
        pools = [int(v) for v in pools_text.split(",") if v.strip()]
    except ValueError:
        raise UserInputError(f"--cache-curve: expected 'K,K,...xPOOL,POOL,...' (e.g. 16,64x600,1500), got {text!r}")
    if not ks or not pools or min(ks + pools) < 1:
        raise UserInputError(f"--cache-curve: clusters and pools must be positive integers, got {text!r}")
    return ks, pools


def cache_curve(art: Any, sample: np.ndarray, vectors: np.ndarray, ks: Sequence[int], pools: Sequence[int], *,
                seed: int = 0, top: int = 100) -> dict[str, Any]:
    """Hit rate against quality lost, for each (clusters k, shared pool) setting of the tool cache.

    For the users in ``vectors`` (their order is the order the cache sees them): each is
    assigned its k-means cluster (fitted on ``sample``, other users' vectors, as the bench's
    clusters are); the first user of a cluster misses and fetches the representative's
    ``pool`` nearest items, later ones hit (what the cache does while its TTL, 10 minutes for
    ``vector_search``, outlives the stream of users). Every user's top ``top`` is then the pool
    re-scored with their own vector, against an uncached search with that vector.
    """
    from outerloop.agents.caches import KMeansClusters

    exact, _ = art.index.search(np.ascontiguousarray(vectors, dtype=np.float32), top)
    truth = [set(r.tolist()) for r in exact]
    points = []
    for k in ks:
        clusters = KMeansClusters.fit(sample, k=k, seed=seed)
        keys, reps = zip(*(clusters.assign(v) for v in vectors))
        seen: set[str] = set()
        hits = 0
        for key in keys:
            hits += key in seen
            seen.add(key)
        distinct = sorted(seen)
        rep_of = {key: rep for key, rep in zip(keys, reps)}
        for pool in pools:
            ids, _ = art.index.search(np.stack([rep_of[key] for key in distinct]), pool)
            pool_of = {key: np.asarray(r[r >= 1], dtype=np.int64) for key, r in zip(distinct, ids)}
            recalls = []
            t0 = time.perf_counter()
            for v, key, want in zip(vectors, keys, truth):
                cand = pool_of[key]
                got = cand[np.argsort(-(art.item_vectors[cand] @ v))[:top]]
                recalls.append(len(want & set(got.tolist())) / float(top))
            rescore_us = (time.perf_counter() - t0) * 1e6 / max(1, len(recalls))
            points.append({"clusters": int(len(clusters.centroids)), "pool": int(pool),
                           "hit_rate": round(hits / max(1, len(keys)), 4),
                           f"recall_at_{top}_mean": round(float(np.mean(recalls)), 4),
                           f"recall_at_{top}_p10": round(float(np.percentile(recalls, 10)), 4),
                           "loss_pct": round(100.0 * (1.0 - float(np.mean(recalls))), 2),
                           "rescore_us_per_user": round(rescore_us, 1)})
    ok = [p for p in points if p["loss_pct"] <= 1.0 and p["hit_rate"] >= 0.5]
    best = max(ok, key=lambda p: (p["hit_rate"], -p["pool"]), default=None)
    return {"users": int(len(vectors)), "catalog_items": int(art.item_vectors.shape[0] - 1), "top": top,
            "points": points, "goal": "loss <= 1% of recall@100 at hit rate >= 50%",
            "best_meeting_goal": best}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
