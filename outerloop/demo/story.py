"""The demo's story, around its moments: who plays which part, the shared :class:`Story`
(the API, the Redis both processes use, the catalog, and the measurements taken on the way),
streaming the users' history, the real-time step, and waiting for the daemon to be at rest.
The moments themselves are in :mod:`outerloop.demo.moments`.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from outerloop.clock import now_ms
from outerloop.contracts.keys import Keys, SchedulerKeys
from outerloop.contracts.rows import Row, RowDecodeError, decode_row
from outerloop.data.schema import Catalog
from outerloop.storage.clients import RedisClient

MIN_MS = 60_000
HOUR_MS = 60 * MIN_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
CATALOG_USER = "__catalog__"  # the user id of catalog events (SyntheticWorld's CATALOG_USER_ID)
DARK = ("Thriller", "Horror")



def local_time_before(at_ms: int, tz_offset_min: int, hour: int, minute: int, margin_ms: int) -> int:
    """The latest UTC time (ms) that reads ``hour:minute`` in the user's local time and is at
    least ``margin_ms`` before ``at_ms``."""
    offset = tz_offset_min * MIN_MS
    local_latest = at_ms - margin_ms + offset
    t = local_latest - local_latest % DAY_MS + hour * HOUR_MS + minute * MIN_MS
    if t > local_latest:
        t -= DAY_MS
    return t - offset


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass
class Story:
    """What the moments share: the API, the Redis both processes use, the catalog, and the
    measurements taken on the way (POST-to-refreshed-row times, every request's latency)."""

    http: Any  # httpx.Client on the API
    redis: RedisClient  # blocking redis client on the same server
    catalog: Catalog
    keys: SchedulerKeys = field(default_factory=SchedulerKeys.default)
    say: Callable[[str], None] = print
    timeout_s: float = 45.0
    poll_s: float = 0.02
    k: int = 10
    refresh_ms: list[float] = field(default_factory=list)
    request_ms: list[float] = field(default_factory=list)
    events_posted: int = 0
    _index: Any = None

    # -- the API --------------------------------------------------------------------------------
    def post(self, events: Sequence[dict[str, Any]]) -> float:
        """Post events (batches of 500); returns ``perf_counter()`` taken before the first POST."""
        t0 = time.perf_counter()
        for start in range(0, len(events), 500):
            r = self.http.post("/v1/events", json=list(events[start:start + 500]))
            r.raise_for_status()
        self.events_posted += len(events)
        return t0

    def recommendations(self, user: str, k: int | None = None, rows: Sequence[str] = ()) -> dict[str, Any]:
        t0 = time.perf_counter()
        params: dict[str, Any] = {"k": k or self.k}
        if rows:
            params["row"] = list(rows)
        r = self.http.get(f"/v1/users/{user}/recommendations", params=params)
        self.request_ms.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
        return r.json()

    def row(self, user: str, row_id: str) -> dict[str, Any] | None:
        """The user's row ``row_id`` as the API serves it now (None when there is none)."""
        return find_row(self.recommendations(user, rows=[row_id]), row_id)

    def wait_for_rows(self, users: Sequence[str], row_id: str, t0: float,
                      done: Callable[[str, dict[str, Any]], bool], *, grace_s: float = 5.0,
                      record: bool = True) -> dict[str, tuple[dict[str, Any], float]]:
        """Poll the API until each user's row ``row_id`` satisfies ``done(user, row)`` (users
        in turn, so each time is that user's own): user -> (row, ms from ``t0``, a
        ``perf_counter()``) for those whose row got there. The wait ends at the timeout, or
        ``grace_s`` after the first one got there. ``record``: keep the times in ``refresh_ms``."""
        got: dict[str, tuple[dict[str, Any], float]] = {}
        deadline = t0 + self.timeout_s
        while len(got) < len(users) and time.perf_counter() < deadline:
            for u in users:
                if u in got:
                    continue
                row = self.row(u, row_id)
                if row is not None and done(u, row):
                    took = (time.perf_counter() - t0) * 1000
                    got[u] = (row, took)
                    if record:
                        self.refresh_ms.append(took)
                    deadline = min(deadline, time.perf_counter() + grace_s)
            if len(got) < len(users):
                time.sleep(self.poll_s)
        return got

    def wait_for_row(self, user: str, row_id: str, t0: float, done: Callable[[dict[str, Any]], bool],
                     *, record: bool = True) -> tuple[dict[str, Any] | None, float | None]:
        """:meth:`wait_for_rows` for one user: (row, ms), or (None, None) at the timeout."""
        got = self.wait_for_rows([user], row_id, t0, lambda _u, r: done(r), record=record)
        return got.get(user, (None, None))

    # -- state the daemon and the API keep in Redis ----------------------------------------------
    @property
    def base(self) -> type[Keys]:
        return self.keys.base

    def history(self, user: str) -> list[tuple[int, int, int]]:
        """(item, action id, ts) oldest first, as the inner loop and the agents read it."""
        out = []
        for token in self.redis.lrange(self.base.history(user), 0, -1):
            item, action, ts = _text(token).split(":")[:3]
            out.append((int(item), int(action), int(ts)))
        return out

    def seen(self, user: str) -> set[int]:
        return {int(_text(m)) for m in self.redis.smembers(self.base.seen(user))}

    def memory(self, user: str) -> dict[str, Any]:
        """The user's durable facts by key."""
        from outerloop.memory.facts import parse_fact

        return {_text(k): parse_fact(v) for k, v in self.redis.hgetall(self.base.memory(user)).items()
                if _text(k) != "_v"}

    def followers(self, series: str) -> list[str]:
        """Users the daemon knows to follow ``series`` (they watched or listed an episode)."""
        return sorted(_text(u) for u in self.redis.smembers(self.keys.followers(series)))

    def unseen_films(self, user: str, first_genres: Sequence[str], n: int) -> list[int]:
        """Up to ``n`` films of one of ``first_genres`` (their first genre) with a runtime that
        the user has neither seen nor started: those the API recommends them first, then the
        catalog's."""
        touched = self.seen(user) | {i for i, _, _ in self.history(user)}
        shown = [it["item_id"] for r in self.recommendations(user, k=20)["rows"] for it in r["items"]]
        out: list[int] = []
        for i in dict.fromkeys([*shown, *(it.item_id for it in self.catalog.items)]):
            it = self.catalog.get(i)
            if i not in touched and it.kind == "film" and it.genres and it.genres[0] in first_genres and it.runtime_min:
                out.append(i)
                if len(out) == n:
                    break
        return out

    def stored_row(self, user: str, row_id: str) -> Row | None:
        """The row as the outer loop committed it (the agent's own order); ``None`` when there is
        none, or none that decodes (the agents rebuild such a row)."""
        raw = self.redis.hget(self.base.rows(user), row_id)
        try:
            return decode_row(raw) if raw else None
        except RowDecodeError:
            return None

    # -- the catalog ----------------------------------------------------------------------------
    @property
    def index(self) -> Any:
        if self._index is None:
            from outerloop.tools.builtin import CatalogIndex

            self._index = CatalogIndex.build(self.catalog)
        return self._index

    def title(self, item_id: int) -> str:
        it = self.catalog.get(int(item_id))
        if it.kind == "episode" and f"E{it.episode:02d}" not in it.title:
            return f"{it.title} S{it.season}E{it.episode}"
        return it.title

    def describe(self, item_id: int) -> str:
        it = self.catalog.get(int(item_id))
        runtime = f", {it.runtime_min} min" if it.runtime_min else ""
        return f"{self.title(item_id)} ({'/'.join(it.genres[:2])}{runtime})"

    def has_genre(self, item_id: int, genre: str) -> bool:
        return genre.lower() in {g.lower() for g in self.catalog.get(int(item_id)).genres}

    def show_row(self, row: dict[str, Any] | None, n: int = 5, indent: str = "       ",
                 mark: int | None = None) -> None:
        if row is None:
            self.say(f"{indent}(no such row)")
            return
        self.say(f"{indent}[{row['title']}] by {row['produced_by']}: {row['reason']}")
        for rank, it in enumerate(row["items"][:n], 1):
            star = "  <- new" if mark is not None and it["item_id"] == mark else ""
            self.say(f"{indent}   {rank}. {self.describe(it['item_id'])}{star}")


def find_row(body: dict[str, Any], row_id: str) -> dict[str, Any] | None:
    return next((r for r in body.get("rows", []) if r["row_id"] == row_id), None)


def event(user: str, item: int | None, type_: str, ts: int, tag: str, n: int, **extra: Any) -> dict[str, Any]:
    """An event as a client posts it, with a readable id (it becomes evidence in memory)."""
    return {"event_id": f"demo-{tag}-{n}-{uuid.uuid4().hex[:6]}", "user_id": user, "item_id": item,
            "type": type_, "ts": int(ts), **extra}


# --- which users play which part ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Roles:
    follower: str  # watches series: gets the release, and runs the demo agent
    series: str | None  # a series the follower has been watching that others watch too
    co_followers: tuple[str, ...]  # other users who have been watching it
    night_owl: str  # the 2 AM thriller session
    genre_fan: str  # drops three titles of their favourite genre
    genre: str  # that genre

    def users(self) -> list[str]:
        return list(dict.fromkeys([self.follower, *self.co_followers, self.night_owl, self.genre_fan]))


def pick_roles(world: Any, events: Iterable[dict[str, Any]], genre: str = "Crime", co_followers: int = 2) -> Roles:
    """Users of the synthetic world whose ground truth suits each moment, among the most active
    (a rich history makes the rows readable): a fan of ``genre`` who has not tired of it, a
    late-night thriller watcher, and a series watcher with a series that up to
    ``co_followers`` other users are also in the middle of."""
    from outerloop.data.synthetic import GENRES
    from outerloop.tools.builtin import CatalogIndex

    plays: Counter[str] = Counter()
    recent: dict[str, list[tuple[str | None, str, int]]] = {}  # user -> (series, type, item), oldest first
    for e in events:
        if e["type"] not in ("play", "finish", "skip", "add_to_list") or e["user_id"] == CATALOG_USER:
            continue
        plays[e["user_id"]] += e["type"] in ("play", "finish")
        item = int(e["item_id"])
        recent.setdefault(e["user_id"], []).append((world.catalog.get(item).series_id, e["type"], item))
    active = sorted(plays, key=lambda u: (-plays[u], u))[:200]
    g = [x.lower() for x in GENRES].index(genre.lower())
    fans = [u for u in active if world.user(u).tired_genre != genre]
    genre_fan = max(fans or active, key=lambda u: (world.user(u).genre_prefs[g], plays[u]))
    owls = [u for u in active if u != genre_fan]
    night_owl = max(owls or active, key=lambda u: (world.user(u).night_dark, world.user(u).habit == "late_night",
                                                  plays[u]))
    others = [u for u in active if u not in (genre_fan, night_owl)]
    idx = CatalogIndex.build(world.catalog)
    middle = {u: _in_the_middle_of(idx, recent.get(u, [])) for u in others}
    watchers = {s: [u for u in others if s in middle[u]] for u in others for s in middle[u]}
    # the series with the most co-followers; not the follower's latest (its next episode already
    # leads their "Continue watching", and the release would change nothing to see)
    follower, series = max(((u, s) for u in others for s in middle[u]),
                           key=lambda us: (min(len(watchers[us[1]]) - 1, co_followers),
                                           us[1] != middle[us[0]][-1], plays[us[0]], us),
                           default=(max(others or active, key=lambda u: plays[u]), None))
    co = tuple(u for u in watchers.get(series, []) if u != follower)[:co_followers] if series else ()
    return Roles(follower=follower, series=series, co_followers=co, night_owl=night_owl, genre_fan=genre_fan,
                 genre=genre)


def _in_the_middle_of(idx: Any, seq: Sequence[tuple[str | None, str, int]]) -> list[str]:
    """Series among the last 50 interactions (what the planner follows) that were not dropped
    (last one not a skip) and have an episode after the last one watched; latest last."""
    last: dict[str, tuple[str, int]] = {}
    for sid, type_, item in seq[-50:]:
        if sid is not None:
            last.pop(sid, None)
            last[sid] = (type_, item)
    return [s for s, (type_, item) in last.items() if type_ != "skip" and idx.next_episodes(s, item, 1)]


# --- the daemon at rest ---------------------------------------------------------------------------

def daemon_idle(redis: RedisClient, keys: SchedulerKeys) -> bool:
    """Every stream entry delivered to the daemons' group and acknowledged, and no user due or
    in a cycle. (Delivery is compared by entry id: the embedded Redis 6.2 has no ``lag``.)"""
    from redis.exceptions import ResponseError

    for stream in keys.streams():
        try:
            last = _text(redis.xinfo_stream(stream)["last-generated-id"])
            groups = redis.xinfo_groups(stream)
        except ResponseError:  # no stream yet: nothing was posted, no group was made
            return False
        mine = [g for g in groups if _text(g["name"]) == keys.group]
        if not mine or int(mine[0]["pending"]) or _text(mine[0]["last-delivered-id"]) != last:
            return False
    return all(redis.zcard(keys.due(s)) == 0 for s in range(keys.shards))


def wait_until_idle(redis: RedisClient, keys: SchedulerKeys, timeout_s: float, quiet_s: float = 1.0) -> bool:
    """Until the daemon has been idle for ``quiet_s`` (sessions closed by the sweep start new
    cycles a moment after the stream is drained); False at the timeout."""
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        if daemon_idle(redis, keys):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return True
        else:
            quiet_since = None
        time.sleep(0.05)
    return False


# --- before the moments: history, and the clock moving to now ---------------------------------------

@dataclass
class StreamOutcome:
    events: int
    cycles: int
    agent_runs: int
    sessions_closed: int
    idle: bool
    seconds: float


def stream_history(story: Story, world: Any, events: Sequence[dict[str, Any]], users: Sequence[str],
                   days: int, idle_timeout_s: float = 120.0) -> StreamOutcome:
    """Post ``users``' events of the simulated ``days``, replayed as the days that ended at
    least two days ago (moved by whole weeks, so local hours and weekdays stay), and wait until
    the daemon has applied them and run the cycles they triggered."""
    from outerloop.demo.runner import read_run_log

    end = world.start_ts_ms + days * DAY_MS
    shift = (now_ms() - 2 * DAY_MS - end) // WEEK_MS * WEEK_MS
    chosen = set(users)
    mine = [{**e, "ts": e["ts"] + shift} for e in events if e["user_id"] in chosen]
    t0 = time.perf_counter()
    story.post(mine)
    posted_s = time.perf_counter() - t0
    idle = wait_until_idle(story.redis, story.keys, timeout_s=idle_timeout_s)
    cycles = [c for _, c in read_run_log(story.redis, story.base)]
    out = StreamOutcome(events=len(mine), cycles=len(cycles), agent_runs=sum(len(c["records"]) for c in cycles),
                        sessions_closed=sum(int(story.redis.hget(story.keys.counters(u), "sessions") or 0)
                                            for u in users),
                        idle=idle, seconds=time.perf_counter() - t0)
    story.say(f"     {out.events:,} events posted in {posted_s:.1f} s; the daemon applied them, closed "
              f"{out.sessions_closed} sessions and ran {out.cycles} outer-loop cycles ({out.agent_runs} agent runs) "
              f"in {out.seconds:.1f} s" + ("" if idle else f" (still busy after {idle_timeout_s:.0f} s)"))
    return out


@dataclass
class RealTimeOutcome:
    item: int
    still_recommended: bool
    post_get_ms: float
    cycles_after: int


def real_time(story: Story, user: str) -> RealTimeOutcome:
    """``user`` finishes their top pick now: the very next response no longer has it. The event
    also moves the daemon's event-time clock to now, which closes the streamed users' last
    sessions: wait for the cycles that follow."""
    from outerloop.demo.runner import read_run_log

    body = story.recommendations(user, k=5)
    pick = int(body["rows"][0]["items"][0]["item_id"])
    before = len(read_run_log(story.redis, story.base))
    story.say(f"     {user} finishes {story.title(pick)!r}, the top pick, now")
    t0 = time.perf_counter()
    story.post([event(user, pick, "finish", now_ms(), "now", 0, device="tv")])
    body = story.recommendations(user, k=5)
    took = (time.perf_counter() - t0) * 1000
    still = any(it["item_id"] == pick for row in body["rows"] for it in row["items"])
    story.say(f"     POST + GET took {took:.1f} ms; the finished title is {'STILL' if still else 'no longer'} "
              f"recommended (history version {body['history_version']}, server time "
              f"{body['timings_ms']['total']:.1f} ms)")
    story.show_row(body["rows"][0], n=5)
    t0 = time.perf_counter()
    wait_until_idle(story.redis, story.keys, timeout_s=60)
    ran = len(read_run_log(story.redis, story.base)) - before
    story.say(f"     the event moved the daemon's event-time clock to now: it closed the streamed users' last "
              f"sessions and ran {ran} cycle{'s' if ran != 1 else ''} in {time.perf_counter() - t0:.1f} s")
    return RealTimeOutcome(item=pick, still_recommended=still, post_get_ms=took, cycles_after=ran)
