"""The moments the outer loop exists for, as ``outerloop demo`` tells them.

Each moment posts real events through ``POST /v1/events`` (or, for the budget moment, asks the
daemon to run an agent), waits until the daemon's refreshed row is served by
``GET /v1/users/{id}/recommendations``, prints before and after, and returns what it observed,
so a test can check the same story the demo shows:

- :func:`episode_release`: a new episode of a series the user follows -> "Continue watching"
  refreshed for the series' followers, the user's leading with the new episode;
- :func:`late_night`: a thriller/horror session ending at 2 AM local time -> a "Wind down" row;
- :func:`genre_backoff`: three titles of one genre dropped in a row -> a ``GenreBackoff`` fact
  with its evidence, and the genre gone from the agent's rows;
- :func:`budget_overrun`: the demo agent run once in budget (row committed) and once past it ->
  killed with its overrun, not retried, nothing committed, the last good row still served.

When a moment does not happen (no candidate titles, no refresh before the timeout), it says so
and returns ``happened=False``; it never pretends. What the moments share (the API, Redis, the
catalog, the measurements) is :class:`~outerloop.demo.story.Story`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from outerloop.agents.planner import ROW_CONTINUE, ROW_TOP_PICKS, ROW_WIND_DOWN
from outerloop.demo.story import (
    CATALOG_USER, DARK, HOUR_MS, MIN_MS, Story, event, find_row, local_time_before, now_ms,
)


# --- a. a new episode of a followed series ---------------------------------------------------------

@dataclass
class ReleaseOutcome:
    happened: bool
    user: str
    series: str | None = None
    released_item: int | None = None
    lead_before: int | None = None
    lead_after: int | None = None
    followers: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    refresh_ms: float | None = None


def pick_release(story: Story, user: str, series: str | None = None) -> tuple[str, int] | None:
    """A series the user has been watching lately (the planner follows those) and its next
    episode after the last one they watched, released and not seen: (series, item). ``series``
    when it has one; else series that do not lead the user's "Continue watching" row first,
    then those whose next episode is not in the row at all, then the most recent."""
    hist = story.history(user)
    seen = story.seen(user)
    recent = {story.catalog.get(i).series_id for i, _, _ in hist[-50:]}
    last: dict[str, tuple[int, int]] = {}  # series -> (position, last item watched)
    for pos, (item, _, _) in enumerate(hist):
        sid = story.catalog.get(item).series_id
        if sid is not None:
            last[sid] = (pos, item)
    current = story.stored_row(user, ROW_CONTINUE)
    in_row = current.item_ids() if current else []
    lead = in_row[0] if in_row else None
    now = now_ms()
    picks = []
    for sid, (pos, after) in last.items():
        if sid not in recent:
            continue
        nxt = [i for i in story.index.next_episodes(sid, after, 5)
               if i not in seen and (story.catalog.get(i).release_ts or 0) <= now]
        if nxt:
            picks.append((sid == series, nxt[0] != lead, nxt[0] not in in_row, pos, sid, nxt[0]))
    if not picks:
        return None
    *_, sid, item = max(picks)
    return sid, item


def episode_release(story: Story, user: str, series: str | None = None) -> ReleaseOutcome:
    """An ``episode_release`` catalog event for the next episode of a series ``user`` follows
    (``series`` when it can be)."""
    pick = pick_release(story, user, series)
    if pick is None:
        story.say(f"     (no released, unseen next episode in {user}'s recent series: the moment is skipped)")
        return ReleaseOutcome(False, user)
    series, item = pick
    out = ReleaseOutcome(False, user, series=series, released_item=item)
    out.followers = story.followers(series)
    before = {u: story.row(u, ROW_CONTINUE) for u in out.followers}
    mine = before.get(user)
    out.lead_before = mine["items"][0]["item_id"] if mine and mine["items"] else None
    story.say(f"     {story.title(item)} is out. The series is followed by {len(out.followers)} of the streamed users "
              f"({', '.join(out.followers)}). {user} before:")
    story.show_row(mine, n=3)
    story.say(f"     POST episode_release {story.title(item)} (a catalog event, user_id {CATALOG_USER})")
    t0 = story.post([event(CATALOG_USER, item, "episode_release", now_ms(), "release", 0)])
    ids = {u: (r or {}).get("run_id") for u, r in before.items()}
    got = story.wait_for_rows(out.followers or [user], ROW_CONTINUE, t0, lambda u, r: r["run_id"] != ids.get(u))
    out.refreshed = sorted(got)
    if user not in got:
        story.say(f"     no refreshed row for {user} within {story.timeout_s:.0f} s: the moment did not happen")
        return out
    row, took = got[user]
    out.refresh_ms = took
    out.lead_after = row["items"][0]["item_id"] if row["items"] else None
    out.happened = out.lead_after == item
    story.say(f"     {took:.0f} ms after the POST, {user}'s row as served:")
    story.show_row(row, n=3, mark=item)
    was = _position(mine, item) if mine else None
    if was:
        story.say(f"     (it was already in the row, at position {was}: the catalog's release date had passed; "
                  "the release event is what brings its series to the front)")
    verdict = ("leads with the new episode" if out.happened else
               f"has the new episode at position {_position(row, item)}" if _position(row, item) else
               "does not have the new episode")
    story.say(f"     -> the row {verdict}. 'Continue watching' refreshed for {len(got)} of {len(out.followers)} "
              "followers: " + ", ".join(f"{u} in {ms:.0f} ms" for u, (_, ms) in sorted(got.items())))
    return out


def _position(row: dict[str, Any], item: int) -> int | None:
    return next((p for p, it in enumerate(row["items"], 1) if it["item_id"] == item), None)


# --- b. a 2 AM thriller session ---------------------------------------------------------------------

@dataclass
class LateNightOutcome:
    happened: bool
    user: str
    watched: list[int] = field(default_factory=list)
    ended_local: str = ""
    row: dict[str, Any] | None = None
    refresh_ms: float | None = None


def late_night(story: Story, user: str, tz_offset_min: int) -> LateNightOutcome:
    """A late session on thriller/horror films that ends at 02:02 local time: the end of one
    film resumed 25 minutes before its end and finished, then another started and paused at
    2 AM. (Events are never more than 27 minutes apart, or the 30-minute idle gap would split
    the session.)"""
    # the user's time zone, as a client sets it (the late-night rule reads it)
    story.http.put(f"/v1/users/{user}/profile", json={"utc_offset_min": tz_offset_min}).raise_for_status()
    films = story.unseen_films(user, DARK, 2)
    if not films:
        story.say(f"     (no unseen thriller or horror film for {user}: the moment is skipped)")
        return LateNightOutcome(False, user)
    end = local_time_before(now_ms(), tz_offset_min, 2, 2, margin_ms=45 * MIN_MS)
    first, second = films[0], films[-1] if len(films) > 1 else None
    runtime_s = story.catalog.get(first).runtime_min * 60  # type: ignore[operator]
    finish_first = end if second is None else end - 30 * MIN_MS
    evs = [event(user, first, "play", finish_first - 25 * MIN_MS, "night", 0, device="tv",
                 position_s=float(runtime_s - 25 * 60)),
           event(user, first, "finish", finish_first, "night", 1, device="tv", position_s=float(runtime_s))]
    if second is not None:
        evs += [event(user, second, "play", end - 27 * MIN_MS, "night", 2, device="tv", position_s=0.0),
                event(user, second, "pause", end, "night", 3, device="tv", position_s=27 * 60.0)]
    out = LateNightOutcome(False, user, watched=films, ended_local="02:02")
    before = story.row(user, ROW_WIND_DOWN)
    local = time.strftime("%H:%M", time.gmtime((evs[0]["ts"] + tz_offset_min * MIN_MS) / 1000))
    story.say(f"     {user} (UTC{tz_offset_min / 60:+g}), {local} to 02:02 local: finishes {story.describe(first)}"
              + (f", starts {story.describe(second)} and stops at 2 AM" if second is not None else "")
              + f"; before: {'a wind-down row' if before else 'no wind-down row'}")
    story.say("     POST the session's events; it closes after 30 minutes without activity (in event time)")
    t0 = story.post(evs)
    prev = (before or {}).get("run_id")
    row, took = story.wait_for_row(user, ROW_WIND_DOWN, t0, lambda r: r["run_id"] != prev)
    if took is None:
        story.say(f"     no wind-down row within {story.timeout_s:.0f} s: the moment did not happen")
        return out
    out.happened, out.row, out.refresh_ms = True, row, took
    story.say(f"     {took:.0f} ms after the POST:")
    story.show_row(row, n=4)
    return out


# --- c. three titles of one genre dropped in a row ---------------------------------------------------

@dataclass
class BackoffOutcome:
    happened: bool
    user: str
    genre: str
    dropped: list[int] = field(default_factory=list)
    skip_ids: list[str] = field(default_factory=list)  # event ids of the skips posted
    fact: Any = None  # the GenreBackoff fact for the genre
    also: list[Any] = field(default_factory=list)  # other back-off facts the same cycle wrote
    before: dict[str, tuple[int, int]] = field(default_factory=dict)  # row label -> (genre items, items)
    after: dict[str, tuple[int, int]] = field(default_factory=dict)
    refreshed: list[str] = field(default_factory=list)  # rows the cycle wrote (labels of ``after``)
    refresh_ms: float | None = None


def genre_share(story: Story, body: dict[str, Any], genre: str) -> dict[str, tuple[int, int]]:
    """Per served row: (items of ``genre``, items)."""
    return {_label(r): (sum(story.has_genre(it["item_id"], genre) for it in r["items"]), len(r["items"]))
            for r in body["rows"]}


def _label(row: dict[str, Any]) -> str:
    return f"{row['title']} ({row['produced_by']})"


def genre_backoff(story: Story, user: str, genre: str, tz_offset_min: int = 0) -> BackoffOutcome:
    """Three ``genre`` films started and skipped a few minutes in, one after the other, in an
    evening session that ended more than an hour ago."""
    from outerloop.memory.facts import GenreBackoff

    out = BackoffOutcome(False, user, genre)
    titles = story.unseen_films(user, [genre], 3)
    if len(titles) < 3:
        story.say(f"     (fewer than three unseen {genre} films for {user}: the moment is skipped)")
        return out
    out.dropped = titles
    before_body = story.recommendations(user)
    out.before = genre_share(story, before_body, genre)
    prev = (find_row(before_body, ROW_TOP_PICKS) or {}).get("run_id")
    start = local_time_before(now_ms(), tz_offset_min, 20, 30, margin_ms=2 * HOUR_MS)
    evs = []
    for n, item in enumerate(titles):
        t = start + n * 8 * MIN_MS
        evs += [event(user, item, "play", t, "drop", 2 * n, device="tv", position_s=0.0),
                event(user, item, "skip", t + 6 * MIN_MS, "drop", 2 * n + 1, device="tv", position_s=360.0)]
    out.skip_ids = [e["event_id"] for e in evs if e["type"] == "skip"]
    story.say(f"     {user} starts " + ", ".join(story.describe(i) for i in titles)
              + ", and drops each after six minutes (20:30-20:54 local)")
    t0 = story.post(evs)
    row, took = story.wait_for_row(user, ROW_TOP_PICKS, t0, lambda r: r["run_id"] != prev)
    memory = story.memory(user)
    backoffs = [f for f in memory.values() if isinstance(f, GenreBackoff)]
    out.fact = next((f for f in backoffs if f.genre.lower() == genre.lower()), None)
    out.also = [f for f in backoffs if f is not out.fact and set(_as_list(f.evidence)) & {e["event_id"] for e in evs}]
    if out.fact is None:
        story.say(f"     no {genre} back-off in {user}'s memory: the moment did not happen")
        return out
    story.say(f"     memory: {_fact_line(out.fact)}")
    if out.fact.evidence != out.skip_ids:
        story.say(f"     (the skips just posted: {', '.join(out.skip_ids)})")
    for f in out.also:
        story.say(f"     memory: {_fact_line(f)} (the same skips; every genre of the dropped titles is judged)")
    if took is None:
        story.say(f"     the top-picks row was not refreshed within {story.timeout_s:.0f} s")
        return out
    out.refresh_ms = took
    after_body = story.recommendations(user)
    out.after = genre_share(story, after_body, genre)
    runs_before = {_label(r): r.get("run_id") for r in before_body["rows"]}
    out.refreshed = [_label(r) for r in after_body["rows"]
                     if r.get("run_id") and r["run_id"] != runs_before.get(_label(r))]
    out.happened = bool(out.refreshed) and all(out.after[k][0] == 0 for k in out.refreshed)
    story.say(f"     {took:.0f} ms after the POST, {genre} titles per row served (before -> after):")
    for label in dict.fromkeys([*out.before, *out.after]):
        b, a = out.before.get(label), out.after.get(label)
        note = (" refreshed by this cycle" if label in out.refreshed else
                " (the inner loop's own ranking: memory is the outer loop's)" if "inner_loop" in label else
                " (not refreshed by this cycle)")
        story.say(f"        {label}: {_share(b)} -> {_share(a)}{note}")
    return out


def _as_list(evidence: Any) -> list[str]:
    return list(evidence) if isinstance(evidence, list) else []


def _fact_line(f: Any) -> str:
    ev = f.evidence if isinstance(f.evidence, str) else ", ".join(f.evidence)
    return (f"GenreBackoff(genre={f.genre}, until={f.until:%Y-%m-%d}, confidence={f.confidence:.2f}, "
            f"source={f.source}) evidence: {ev}")


def _share(v: tuple[int, int] | None) -> str:
    return "-" if v is None else f"{v[0]}/{v[1]}"


# --- d. an agent over its budget ---------------------------------------------------------------------

@dataclass
class OverrunOutcome:
    happened: bool
    user: str
    good: dict[str, Any] | None = None  # run record of the run that finished in budget
    killed: dict[str, Any] | None = None  # run record of the run past its budget
    good_row_run: str | None = None  # run id of the row the good run committed
    served_run_after: str | None = None  # run id of the row served after the kill
    later_runs: int = 0  # runs of the agent for the user after the kill (retries would be here)
    request_to_row_ms: float | None = None


def _wait_run(story: Story, user: str, agent: str, after: str) -> tuple[str, dict[str, Any] | None]:
    """The first cycle in the run log after ``after`` that ran ``agent`` for ``user``:
    (its entry id, the agent's run record), or (cursor, None) at the timeout."""
    from outerloop.demo.runner import read_run_log

    deadline = time.monotonic() + story.timeout_s
    while time.monotonic() < deadline:
        for eid, cycle in read_run_log(story.redis, story.base, after):
            rec = next((r for r in cycle["records"] if r["agent"] == agent), None)
            if cycle["user"] == user and rec is not None:
                return eid, rec
        time.sleep(story.poll_s)
    return after, None


def budget_overrun(story: Story, user: str, agent: str, row_id: str, *, good_work_ms: float = 10.0,
                   bad_work_ms: float = 5000.0) -> OverrunOutcome:
    """Run ``agent`` for ``user`` through the daemon twice: with ``good_work_ms`` of work (within
    its budget) and with ``bad_work_ms`` (far past it)."""
    from outerloop.demo.runner import last_run_log_id, read_run_log, request_agents

    out = OverrunOutcome(False, user)
    cursor = last_run_log_id(story.redis, story.base)
    t0 = time.perf_counter()
    request_agents(story.redis, story.keys, user, [agent], work_ms=good_work_ms)
    cursor, out.good = _wait_run(story, user, agent, cursor)
    if out.good is None:
        story.say(f"     the daemon did not run {agent} within {story.timeout_s:.0f} s: the moment did not happen")
        return out
    g = out.good
    story.say(f"     run 1 ({good_work_ms:.0f} ms of work asked): {g['outcome']} in {g['elapsed_ms']:.0f} ms of its "
              f"{g['budget_ms']:.0f} ms budget, {g['writes_committed']} write(s) committed")
    if g["outcome"] == "ok" and g["writes_committed"]:
        row, took = story.wait_for_row(user, row_id, t0, lambda r: r["run_id"] == g["run_id"], record=False)
        out.good_row_run = row["run_id"] if row and took is not None else None
        out.request_to_row_ms = took
        story.show_row(row, n=3)
    else:
        story.say(f"     (run 1 committed no row: there is no earlier row for the kill to leave in place)")
    request_agents(story.redis, story.keys, user, [agent], work_ms=bad_work_ms)
    cursor, out.killed = _wait_run(story, user, agent, cursor)
    if out.killed is None:
        story.say(f"     the daemon did not run {agent} again within {story.timeout_s:.0f} s")
        return out
    k = out.killed
    story.say(f"     run 2 ({bad_work_ms:.0f} ms of work asked): {k['outcome']} after {k['elapsed_ms']:.0f} ms; "
              f"overrun {k['overrun_ms']:.1f} ms past the deadline; retries {k['retries']}; "
              f"writes committed {k['writes_committed']}; worker pid {k['worker_pid']} "
              f"{'SIGKILLed' if k['isolated'] else 'cancelled'}")
    time.sleep(1.0)  # a retry, if there were one, would have started by now
    out.later_runs = sum(1 for _, c in read_run_log(story.redis, story.base, cursor) if c["user"] == user
                         for r in c["records"] if r["agent"] == agent)
    served = story.row(user, row_id)
    out.served_run_after = (served or {}).get("run_id")
    stored = story.stored_row(user, row_id)
    stored_run = stored.run_id if stored is not None else None
    kept = out.good_row_run is not None and out.served_run_after == out.good_row_run
    story.say(f"     after the kill: {out.later_runs} further run(s) of {agent}; the row served is "
              + (f"still run 1's ({(out.served_run_after or '')[:8]})" if kept else
                 f"from run {(out.served_run_after or 'none')[:8]}")
              + ("; the killed run's row is nowhere in Redis" if stored_run != k["run_id"] else ""))
    out.happened = (k["outcome"] == "killed" and k["retries"] == 0 and k["writes_committed"] == 0
                    and out.later_runs == 0 and stored_run != k["run_id"]
                    and (out.good_row_run is None or kept))
    return out
