"""The built-in tools, and the two Redis structures two of them read.

Tools (each an ``@tool`` spec; :func:`default_registry` registers them all):

- ``vector_search``: nearest items to a vector in the FAISS index (shareable per user cluster);
- ``embed_history``: the model's embedding of an item history;
- ``co_watch``: items co-watched with seed items, from the member-action graph in Redis;
- ``item_metadata``: catalog facts about items;
- ``next_episodes``: the episodes after a given one in a series;
- ``trending``: decayed play counts, overall or per genre (shareable by everyone);
- ``ensemble_rank``: the heavy ensemble's most likely next items (``tools/ensemble.py``).

Structures:

- :class:`CoWatchGraph`: per-item sorted sets of co-watched items, built from user edges (a
  user's recent items, whatever the device) and device edges (a device's recent items, whoever
  the member), so a journey that starts on a phone and ends on a TV joins up, and so does a
  household sharing one TV. Each event is applied once (idempotent on ``event_id``).
- :class:`TrendingCounter`: exponentially decayed counts as sorted-set scores. Increments are
  scaled by ``2**((ts - epoch) / half_life)`` so old counts decay without rewriting them; reads
  scale back to "now". The epoch is rebased (one ZUNIONSTORE per key) before scores overflow.

Both are keyed by item. With ``keys.shared_buckets`` 1 on one server (the default) the co-watch
graph lives under one hash tag and trending under plain names (a rebase is one MULTI); on a
cluster even one bucket is tagged (``Keys.shared_tagged``: a trending rebase is then one
single-slot script, as each bucket's is). With ``N`` > 1 (a cluster) an item's keys carry the tag of the item's bucket
(``crc32(item) % N``), so the structures spread over N slots and so over the masters, while an
item's edges (one sorted set) and an item's trending counts stay in one slot. Reads over several
buckets are merged exactly: the co-watch merge sums each seed's edges in seed order, as the
one-slot script does; trending reads each bucket's top ``k`` and merges them as one sorted set
would order them. The same events give the same answers whatever the bucket count.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from outerloop.contracts.events import Event
from outerloop.contracts.keys import Keys
from outerloop.data.schema import Catalog, Item
from outerloop.storage.scripts import LuaScript, ScriptSet
from outerloop.tools.contracts import ScoredItems, ToolDeps, ToolSpec, tool
from outerloop.tools.ensemble import ensemble_rank
from outerloop.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from redis.asyncio import Redis

# How much each event type says "I watched this" (0 = not a co-watch signal).
ENGAGEMENT_WEIGHT: dict[str, float] = {
    "play": 0.5,
    "finish": 1.0,
    "add_to_list": 0.7,
    "rate": 0.8,
    "click": 0.2,
}


# --- catalog lookups -------------------------------------------------------------------------


@dataclass(slots=True)
class CatalogIndex:
    """Lookups the catalog does not index itself: episodes per series, items per genre."""

    catalog: Catalog
    episodes: dict[str, list[int]] = field(default_factory=dict)  # series -> ids in watch order
    by_genre: dict[str, list[int]] = field(default_factory=dict)
    _meta: dict[int, "ItemMeta"] = field(default_factory=dict)  # built on first request, then reused

    @classmethod
    def build(cls, catalog: Catalog) -> "CatalogIndex":
        episodes: dict[str, list[Item]] = defaultdict(list)
        by_genre: dict[str, list[int]] = defaultdict(list)
        for it in catalog.items:
            if it.series_id is not None:
                episodes[it.series_id].append(it)
            for g in it.genres:
                by_genre[g].append(it.item_id)
        ordered = {
            s: [e.item_id for e in sorted(eps, key=lambda e: (e.season or 0, e.episode or 0, e.item_id))]
            for s, eps in episodes.items()
        }
        return cls(catalog=catalog, episodes=ordered, by_genre=dict(by_genre))

    def item(self, item_id: int) -> Item | None:
        try:
            return self.catalog.get(item_id)
        except KeyError:
            return None

    def meta(self, item_id: int) -> "ItemMeta | None":
        """The item's metadata record (one object per item, made once: the tools hand out many)."""
        m = self._meta.get(item_id)
        if m is None:
            it = self.item(item_id)
            if it is None:
                return None
            m = self._meta[item_id] = _meta(it)
        return m

    def next_episodes(self, series_id: str, after_item_id: int | None, k: int) -> list[int]:
        eps = self.episodes.get(series_id, [])
        if after_item_id is None or after_item_id not in eps:
            return eps[:k]
        i = eps.index(after_item_id)
        return eps[i + 1 : i + 1 + k]


_INDEX_KEY = "catalog_index"
ENCODE_IN_THREAD = "encode_in_thread"  # ToolDeps.extra flag: run embed_history in a worker thread


def catalog_index(deps: ToolDeps) -> CatalogIndex:
    """The deps' catalog index, built on first use and kept in ``deps.extra``."""
    idx = deps.extra.get(_INDEX_KEY)
    if idx is None or idx.catalog is not deps.catalog:
        idx = CatalogIndex.build(deps.catalog)
        deps.extra[_INDEX_KEY] = idx
    return idx


# --- co-watch graph --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoWatchGraph:
    """Co-watch edges in Redis. ``window``: how many recent items of a user/device an event
    links to; ``max_neighbours``: the per-item sorted set is trimmed to its strongest edges."""

    window: int = 20
    max_neighbours: int = 200
    device_weight: float = 0.5  # a device edge may be another household member: weaker evidence
    applied_ttl_s: int = 7 * 24 * 3600
    keys: type[Keys] = Keys  # key namespace (a Keys subclass with another prefix in tests)

    async def claim(self, redis: "Redis", events: Iterable[Event]) -> list[Event]:
        """The engagement events among ``events`` not seen before (marked seen now, one round
        trip): what is safe to count once, here and in :class:`TrendingCounter`."""
        evs = [e for e in events if e.item_id is not None and ENGAGEMENT_WEIGHT.get(e.type, 0.0) > 0]
        if not evs:
            return []
        pipe = redis.pipeline(transaction=False)
        for e in evs:
            pipe.set(self.keys.cowatch_applied(e.event_id), 1, nx=True, ex=self.applied_ttl_s)
        return [e for e, new in zip(evs, await pipe.execute()) if new]

    async def apply(self, redis: "Redis", events: Iterable[Event]) -> int:
        """Claim and link engagement events (per-user order is kept whatever the batch order).
        Returns how many events were new. Three round trips per batch."""
        fresh = await self.claim(redis, events)
        await self.link(redis, fresh)
        return len(fresh)

    async def link(self, redis: "Redis", fresh: Sequence[Event]) -> None:
        """Add the edges of already-claimed events."""
        if not fresh:
            return
        fresh = sorted(fresh, key=lambda e: e.ts)
        users = sorted({e.user_id for e in fresh})
        devices = sorted({e.device for e in fresh if e.device})
        pipe = redis.pipeline(transaction=False)
        for u in users:
            pipe.zrevrange(self.keys.cowatch_recent(u), 0, self.window - 1)
        for d in devices:
            pipe.zrevrange(self.keys.cowatch_device(d), 0, self.window - 1)
        res = await pipe.execute()
        recent_u = {u: [int(x) for x in r] for u, r in zip(users, res[: len(users)])}
        recent_d = {d: [int(x) for x in r] for d, r in zip(devices, res[len(users) :])}

        incr: dict[tuple[int, int], float] = defaultdict(float)
        for e in fresh:
            w = ENGAGEMENT_WEIGHT[e.type]
            item = int(e.item_id)  # type: ignore[arg-type]
            mine = recent_u[e.user_id]
            near = {j: w for j in mine if j != item}
            if e.device:
                for j in recent_d[e.device]:
                    if j != item and j not in near:
                        near[j] = w * self.device_weight
            for j, wj in near.items():
                incr[(item, j)] += wj
                incr[(j, item)] += wj
            for lst in (mine, recent_d.get(e.device, []) if e.device else []):
                if item in lst:
                    lst.remove(item)
                lst.insert(0, item)
                del lst[self.window :]

        by_item: dict[int, list[Any]] = defaultdict(list)
        for (i, j), w in incr.items():
            by_item[i] += (w, j)
        pipe = redis.pipeline(transaction=False)
        for i, args in by_item.items():  # one script per item: its increments and its trim
            SCRIPTS.queue(pipe, "link", [self.keys.cowatch_item(i)], [self.max_neighbours, *args])
        last_ts_u: dict[str, dict[int, int]] = defaultdict(dict)
        last_ts_d: dict[str, dict[int, int]] = defaultdict(dict)
        for e in fresh:
            last_ts_u[e.user_id][int(e.item_id)] = e.ts  # type: ignore[arg-type]
            if e.device:
                last_ts_d[e.device][int(e.item_id)] = e.ts  # type: ignore[arg-type]
        for u, m in last_ts_u.items():
            pipe.zadd(self.keys.cowatch_recent(u), {str(i): ts for i, ts in m.items()})
            pipe.zremrangebyrank(self.keys.cowatch_recent(u), 0, -(self.window + 1))
        for d, m in last_ts_d.items():
            pipe.zadd(self.keys.cowatch_device(d), {str(i): ts for i, ts in m.items()})
            pipe.zremrangebyrank(self.keys.cowatch_device(d), 0, -(self.window + 1))
        await pipe.execute()

    async def neighbours(self, redis: "Redis", seeds: Sequence[int], k: int, per_seed: int = 50) -> list[tuple[int, float]]:
        """Top-``k`` items co-watched with any seed (edge weights summed), seeds excluded.
        Merged in Redis by one script: a round trip and a short string back, however many
        seeds and edges (parsing hundreds of scored members in Python costs milliseconds)."""
        if not seeds:
            return []
        groups: dict[int, list[int]] = defaultdict(list)  # bucket -> positions in seeds
        for pos, s in enumerate(seeds):
            groups[self.keys.shared_bucket(s)].append(pos)
        if len(groups) > 1:
            return await self._neighbours_across(redis, seeds, groups, k, per_seed)
        raw = await SCRIPTS.call(redis, "neighbours", [self.keys.cowatch_item(s) for s in seeds], [per_seed, k, *seeds])
        if not raw:
            return []
        out = []
        for pair in raw.split(b","):
            item, score = pair.split(b":")
            out.append((int(item), float(score)))
        return out

    async def _neighbours_across(self, redis: "Redis", seeds: Sequence[int], groups: dict[int, list[int]],
                                 k: int, per_seed: int) -> list[tuple[int, float]]:
        """Seeds in several buckets (slots): one script per bucket returns each seed's top edges
        (one pipeline, one round trip per master), merged here exactly as the one-slot script
        merges them: weights summed in seed order, ties by item id."""
        pipe = redis.pipeline(transaction=False)
        order = list(groups.values())
        for positions in order:
            SCRIPTS.queue(pipe, "edges", [self.keys.cowatch_item(seeds[p]) for p in positions], [per_seed])
        rows: dict[int, bytes] = {}
        for positions, raw in zip(order, await pipe.execute()):
            for p, part in zip(positions, (raw or b"").split(b";")):
                rows[p] = part
        skip = {int(s) for s in seeds}
        acc: dict[int, float] = {}
        for p in range(len(seeds)):
            if not rows.get(p):
                continue
            for pair in rows[p].split(b","):
                item, score = pair.split(b":")
                m = int(item)
                if m not in skip:
                    acc[m] = acc.get(m, 0.0) + float(score)
        return sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


# KEYS[1]: one item's edge set. ARGV[1] neighbours kept, ARGV[2..] (weight, neighbour) pairs. One
# call per touched item instead of one ZINCRBY per edge: a batch of 5,000 events makes ~100,000
# edges, and packing that many commands is most of an ingest's cost in Python.
_LINK = LuaScript.of("link", "cowatch_link")

# KEYS: item edge sets of the seeds. ARGV[1] per seed, ARGV[2] k, ARGV[3..] the seeds.
_NEIGHBOURS = LuaScript.of("neighbours", "cowatch_neighbours")


# KEYS: item edge sets (one slot). ARGV[1] per seed. Each key's top edges as 'item:score,...'
# (the score as Redis prints it: it reads back to the same double), keys joined by ';'.
_EDGES = LuaScript.of("edges", "cowatch_edges")


# --- trending --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrendingCounter:
    """Decayed engagement counts, overall and per genre, as Redis sorted-set scores."""

    half_life_ms: int = 6 * 3600 * 1000
    rebase_after_half_lives: float = 400.0  # 2**400 is far inside a double's range
    keys: type[Keys] = Keys

    @property
    def bucketed(self) -> bool:
        """Keys per bucket, each bucket under its hash tag (``Keys.trending_bucket``): several
        buckets, or one on a cluster (its rebase must be one single-slot script; see
        ``Keys.shared_tagged``)."""
        return self.keys.shared_buckets > 1 or self.keys.shared_tagged

    async def _epoch(self, redis: "Redis", first_ts: int) -> int:
        await redis.set(self.keys.trending_epoch(), first_ts, nx=True)
        return int(await redis.get(self.keys.trending_epoch()))

    async def _record_buckets(self, redis: "Redis", evs: list[Event], catalog: Catalog) -> int:
        """:meth:`record` over several buckets: every bucket's epoch starts as the one shared
        epoch (so its scores are the ones a single key would hold) and is rebased on its own."""
        keys = self.keys
        pipe = redis.pipeline(transaction=False)
        pipe.set(keys.trending_epoch(), min(e.ts for e in evs), nx=True)
        pipe.get(keys.trending_epoch())
        shared = int((await pipe.execute())[1])
        by_bucket: dict[int, list[Event]] = defaultdict(list)
        for e in evs:
            by_bucket[keys.shared_bucket(int(e.item_id))].append(e)  # type: ignore[arg-type]
        pipe = redis.pipeline(transaction=False)
        for b in by_bucket:
            pipe.set(keys.trending_bucket_epoch(b), shared, nx=True)
            pipe.get(keys.trending_bucket_epoch(b))
        got = await pipe.execute()
        epochs = {b: int(got[2 * n + 1]) for n, b in enumerate(by_bucket)}
        for b, bevs in by_bucket.items():
            newest = max(e.ts for e in bevs)
            if (newest - epochs[b]) / self.half_life_ms > self.rebase_after_half_lives:
                epochs[b] = await self._rebase_bucket(redis, b, newest, catalog)
        pipe = redis.pipeline(transaction=False)
        for e in evs:
            b = keys.shared_bucket(int(e.item_id))  # type: ignore[arg-type]
            inc = ENGAGEMENT_WEIGHT[e.type] * 2.0 ** ((e.ts - epochs[b]) / self.half_life_ms)
            pipe.zincrby(keys.trending_bucket(b), inc, e.item_id)
            for g in _genres(catalog, e.item_id):
                pipe.zincrby(keys.trending_bucket_genre(b, g), inc, e.item_id)
        await pipe.execute()
        return len(evs)

    async def _rebase_bucket(self, redis: "Redis", bucket: int, new_epoch: int, catalog: Catalog) -> int:
        k = self.keys
        keys = [k.trending_bucket_epoch(bucket), k.trending_bucket(bucket),
                *(k.trending_bucket_genre(bucket, g) for g in catalog.genres)]
        await SCRIPTS.call(redis, "rebase", keys, [new_epoch, self.half_life_ms])
        return new_epoch

    async def record(self, redis: "Redis", events: Iterable[Event], catalog: Catalog) -> int:
        """Count engagement events (not idempotent by itself: pass events claimed once, e.g. by
        ``CoWatchGraph.claim``). Returns how many were counted."""
        evs = [e for e in events if e.item_id is not None and ENGAGEMENT_WEIGHT.get(e.type, 0.0) > 0]
        if not evs:
            return 0
        if self.bucketed:
            return await self._record_buckets(redis, evs, catalog)
        epoch = await self._epoch(redis, min(e.ts for e in evs))
        if (max(e.ts for e in evs) - epoch) / self.half_life_ms > self.rebase_after_half_lives:
            epoch = await self.rebase(redis, max(e.ts for e in evs), catalog)
        pipe = redis.pipeline(transaction=False)
        for e in evs:
            inc = ENGAGEMENT_WEIGHT[e.type] * 2.0 ** ((e.ts - epoch) / self.half_life_ms)
            pipe.zincrby(self.keys.trending(), inc, e.item_id)
            try:
                genres = catalog.get(int(e.item_id)).genres  # type: ignore[arg-type]
            except KeyError:
                genres = ()
            for g in genres:
                pipe.zincrby(self.keys.trending_genre(g), inc, e.item_id)
        await pipe.execute()
        return len(evs)

    async def rebase(self, redis: "Redis", new_epoch: int, catalog: Catalog) -> int:
        """Move the epoch to ``new_epoch``, rescaling every score so decayed values stay equal
        (with several buckets: each bucket in one script, its keys and epoch together)."""
        keys = self.keys
        if self.bucketed:
            for b in range(keys.shared_buckets):
                await self._rebase_bucket(redis, b, new_epoch, catalog)
            await redis.set(keys.trending_epoch(), new_epoch)
            return new_epoch
        old = int(await redis.get(keys.trending_epoch()) or new_epoch)
        factor = 2.0 ** ((old - new_epoch) / self.half_life_ms)
        pipe = redis.pipeline(transaction=True)
        for key in [keys.trending(), *(keys.trending_genre(g) for g in catalog.genres)]:
            pipe.zunionstore(key, {key: factor})
        pipe.set(keys.trending_epoch(), new_epoch)
        await pipe.execute()
        return new_epoch

    async def top(self, redis: "Redis", k: int, now_ms: int, genre: str | None = None) -> list[tuple[int, float]]:
        if self.bucketed:
            return await self._top_buckets(redis, k, now_ms, genre)
        key = self.keys.trending_genre(genre) if genre else self.keys.trending()
        pipe = redis.pipeline(transaction=False)
        pipe.get(self.keys.trending_epoch())
        pipe.zrevrange(key, 0, k - 1, withscores=True)
        epoch_raw, rows = await pipe.execute()
        if epoch_raw is None:
            return []
        scale = 2.0 ** ((int(epoch_raw) - now_ms) / self.half_life_ms)
        return [(int(m), float(s) * scale) for m, s in rows]

    async def _top_buckets(self, redis: "Redis", k: int, now_ms: int, genre: str | None) -> list[tuple[int, float]]:
        """Each bucket's top ``k`` (one pipeline), merged: exact, since an item lives in one
        bucket. While the buckets share one epoch (until one is rebased) the order is the order
        of the stored scores, ties by member descending, as ``ZREVRANGE`` of one key orders them."""
        keys, buckets = self.keys, self.keys.shared_buckets
        pipe = redis.pipeline(transaction=False)
        for b in range(buckets):
            pipe.get(keys.trending_bucket_epoch(b))
            pipe.zrevrange(keys.trending_bucket_genre(b, genre) if genre else keys.trending_bucket(b), 0, k - 1,
                           withscores=True)
        got = await pipe.execute()
        merged: list[tuple[float, bytes, float]] = []  # (sort score, member, decayed score)
        epochs = {int(got[2 * b]) for b in range(buckets) if got[2 * b] is not None}
        for b in range(buckets):
            epoch_raw, rows = got[2 * b], got[2 * b + 1]
            if epoch_raw is None:
                continue
            scale = 2.0 ** ((int(epoch_raw) - now_ms) / self.half_life_ms)
            for m, s in rows:
                decayed = float(s) * scale
                merged.append((float(s) if len(epochs) == 1 else decayed, _as_bytes(m), decayed))
        merged.sort(key=lambda r: (r[0], r[1]), reverse=True)
        return [(int(m), decayed) for _, m, decayed in merged[:k]]


def _genres(catalog: Catalog, item_id: Any) -> Sequence[str]:
    try:
        return catalog.get(int(item_id)).genres
    except KeyError:
        return ()


def _as_bytes(member: Any) -> bytes:
    return member if isinstance(member, bytes) else str(member).encode()


# KEYS[1] a bucket's epoch, KEYS[2..] its sorted sets. ARGV[1] the new epoch, ARGV[2] the half-life.
# Rescales every set and moves the epoch in one step (the keys share the bucket's slot).
_REBASE = LuaScript.of("rebase", "trending_rebase")
SCRIPTS = ScriptSet(_LINK, _NEIGHBOURS, _EDGES, _REBASE)


# --- tool contracts and implementations ------------------------------------------------------


class VectorSearchIn(BaseModel):
    vector: list[float] = Field(min_length=1)
    k: int = Field(default=100, ge=1, le=5000)
    exclude: list[int] = Field(default_factory=list)


class EmbedHistoryIn(BaseModel):
    items: list[int] = Field(min_length=1)
    actions: list[int] | None = None
    ts: list[int] | None = None


class EmbedHistoryOut(BaseModel):
    vector: list[float]
    model_version: str


class CoWatchIn(BaseModel):
    items: list[int] = Field(min_length=1, max_length=50)
    k: int = Field(default=100, ge=1, le=1000)
    per_seed: int = Field(default=50, ge=1, le=500)


class ItemIdsIn(BaseModel):
    item_ids: list[int] = Field(min_length=1, max_length=1000)


class ItemMeta(BaseModel):
    item_id: int
    title: str
    genres: list[str]
    year: int | None = None
    runtime_min: int | None = None
    kind: str = "film"
    series_id: str | None = None
    season: int | None = None
    episode: int | None = None
    release_ts: int | None = None


class ItemsOut(BaseModel):
    items: list[ItemMeta] = Field(default_factory=list)


class NextEpisodesIn(BaseModel):
    series_id: str = Field(min_length=1)
    after_item_id: int | None = None
    k: int = Field(default=3, ge=1, le=50)


class TrendingIn(BaseModel):
    k: int = Field(default=100, ge=1, le=1000)
    genre: str | None = None


def _meta(it: Item) -> ItemMeta:
    # built from the catalog (already typed): skip validation, it costs more than the lookup
    return ItemMeta.model_construct(
        item_id=it.item_id, title=it.title, genres=list(it.genres), year=it.year,
        runtime_min=it.runtime_min, kind=it.kind, series_id=it.series_id, season=it.season,
        episode=it.episode, release_ts=it.release_ts,
    )


@tool(name="vector_search", timeout_ms=80, share="cluster", cache_ttl_ms=10 * 60_000)
async def vector_search(args: VectorSearchIn, deps: ToolDeps) -> ScoredItems:
    """Items whose embeddings score highest against a query vector (inner product), from the
    model's FAISS index. Use a user embedding for "more like this user's taste"."""
    q = np.asarray([args.vector], dtype=np.float32)  # (1, d)
    exclude = set(args.exclude)
    ids, scores = deps.artifacts.index.search(q, args.k + len(exclude))  # (1, k'), (1, k')
    pairs = [(i, s) for i, s in zip(ids[0].tolist(), scores[0].tolist()) if i > 0 and i not in exclude]
    return ScoredItems.from_pairs(pairs[: args.k])


@tool(name="embed_history", timeout_ms=100)
async def embed_history(args: EmbedHistoryIn, deps: ToolDeps) -> EmbedHistoryOut:
    """The model's embedding of an interaction history (oldest first): the user's taste as one
    vector, comparable with item vectors."""
    actions = [args.actions] if args.actions else None
    ts = [args.ts] if args.ts else None
    if deps.extra.get(ENCODE_IN_THREAD, False):  # big models: keep the event loop responsive
        vec = await asyncio.to_thread(deps.artifacts.encode, [args.items], actions, ts)  # (1, d)
    else:  # one short forward pass (~1-2 ms on CPU) costs less than two thread hand-offs
        vec = deps.artifacts.encode([args.items], actions, ts)  # (1, d)
    return EmbedHistoryOut(vector=np.asarray(vec)[0].astype(float).tolist(), model_version=deps.artifacts.model_version)


def make_co_watch_tool(graph: CoWatchGraph) -> ToolSpec:
    """The ``co_watch`` tool bound to one :class:`CoWatchGraph` configuration."""

    @tool(name="co_watch", timeout_ms=50)
    async def co_watch(args: CoWatchIn, deps: ToolDeps) -> ScoredItems:
        """Items other members watched together with the seed items (user and device edges of
        the member-action graph), strongest first; seeds themselves are left out."""
        return ScoredItems.from_pairs(await graph.neighbours(deps.redis, args.items, args.k, args.per_seed))

    return co_watch


@tool(name="item_metadata", timeout_ms=50)
async def item_metadata(args: ItemIdsIn, deps: ToolDeps) -> ItemsOut:
    """Catalog facts for items: title, genres, year, runtime, and for episodes their series,
    season and number. Unknown ids are left out."""
    idx = catalog_index(deps)
    return ItemsOut.model_construct(items=[m for i in args.item_ids if (m := idx.meta(i)) is not None])


@tool(name="next_episodes", timeout_ms=50)
async def next_episodes(args: NextEpisodesIn, deps: ToolDeps) -> ItemsOut:
    """The next ``k`` episodes of a series after ``after_item_id`` (from the first episode when
    it is not given), in watch order."""
    idx = catalog_index(deps)
    ids = idx.next_episodes(args.series_id, args.after_item_id, args.k)
    return ItemsOut.model_construct(items=[m for i in ids if (m := idx.meta(i)) is not None])


def make_trending_tool(counter: TrendingCounter) -> ToolSpec:
    """The ``trending`` tool bound to one :class:`TrendingCounter` configuration."""

    @tool(name="trending", timeout_ms=50, share="global", cache_ttl_ms=30_000)
    async def trending(args: TrendingIn, deps: ToolDeps) -> ScoredItems:
        """What is being watched right now: exponentially decayed engagement counts (half-life
        of hours), overall or within one genre."""
        return ScoredItems.from_pairs(await counter.top(deps.redis, args.k, deps.clock_ms(), args.genre))

    return trending


def builtin_tools(
    co_watch_graph: CoWatchGraph | None = None, trending_counter: TrendingCounter | None = None
) -> list[ToolSpec]:
    """Fresh specs of every built-in tool (the two Redis-backed ones bound to their structures)."""
    return [
        vector_search,
        embed_history,
        make_co_watch_tool(co_watch_graph or CoWatchGraph()),
        item_metadata,
        next_episodes,
        make_trending_tool(trending_counter or TrendingCounter()),
        ensemble_rank,
    ]


def default_registry(
    co_watch_graph: CoWatchGraph | None = None, trending_counter: TrendingCounter | None = None
) -> ToolRegistry:
    """A new registry holding the built-in tools. Explicit on purpose: there is no global one."""
    return ToolRegistry(builtin_tools(co_watch_graph, trending_counter))
