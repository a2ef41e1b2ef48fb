"""Triggers: why the outer loop should look at a user now, classified once.

The scheduler fires triggers by name (the sessionizer's Lua, the sweeps, the evaluator, manual
requests) and coalesces them per user; a cycle receives them as :class:`Trigger` values whose
``kind`` is the kind that was fired. A late-night session is classified by the sessionizer when
it closes the session (``late_night_session``, next to ``session_closed``), under the settings of
:class:`TriggerRules`, and the planner reads that kind: nothing downstream re-derives it.

Callers that close sessions themselves instead of through the daemon (replays, benchmarks, the
demo, tests) get the same triggers from :func:`session_triggers`, which applies the same rule with
the same settings as the Lua (``outerloop.scheduler.sessionizer``, ``finalize``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from outerloop.clock import now_ms
from outerloop.contracts.events import Event

# What the scheduler fires (the sessionizer's Lua, the sweeps, the evaluator) and coalesces per user.
TITLE_FINISHED = "title_finished"  # a film or an episode of a series was watched to the end
EPISODE_RELEASED = "episode_released"  # a new episode of a series the user follows
LATE_NIGHT_SESSION = "late_night_session"  # session ended after 23:00 local on thriller/horror
DRIFT = "drift"  # the evaluator flagged that what is served drifted from the feedback
SESSION_CLOSED = "session_closed"  # 30 minutes of event time without activity
STALE_ROWS = "stale_rows"  # the periodic sweep found the user's rows expired
ACTIVITY = "activity"  # any interaction (opt-in: real-time row refresh, the freshness bench)

TRIGGER_NAMES: tuple[str, ...] = (
    TITLE_FINISHED, EPISODE_RELEASED, LATE_NIGHT_SESSION, DRIFT, SESSION_CLOSED, STALE_ROWS, ACTIVITY,
)

# Event types that mean the user is watching the item (they decide "ended on", follows).
WATCH_TYPES = frozenset({"play", "pause", "seek", "finish"})

# Genres a late-night session may not end on without a wind-down row (and that the wind-down row
# avoids), lower case.
DARK_GENRES = frozenset({"thriller", "horror"})


def local_hour(ts_ms: int, tz_offset_min: int) -> int:
    """The hour (0-23) of ``ts_ms`` in a time zone ``tz_offset_min`` minutes from UTC."""
    return int(((ts_ms + tz_offset_min * 60_000) // 3_600_000) % 24)


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerRules:
    """When triggers fire (the thresholds, not the mechanism): the one place for each rule's
    settings. The sessionizer bakes them into its Lua; :func:`session_triggers` reads them too."""

    dark_genres: frozenset[str] = DARK_GENRES
    late_night_start_hour: int = 23  # local time; the window wraps midnight
    late_night_end_hour: int = 5
    on_activity: bool = False  # fire ACTIVITY on every interaction (real-time rows)
    max_event_ids: int = 1024  # most recent source event ids kept per user's pending triggers
    max_events: int = 20  # most recent source events (full JSON) kept per user's pending triggers

    def is_dark(self, genres: Iterable[str]) -> bool:
        return any(g.lower() in self.dark_genres for g in genres)

    def is_late_night(self, hour: int) -> bool:
        """``hour`` (local) in ``[start, end)``, wrapping midnight when start > end."""
        start, end = self.late_night_start_hour, self.late_night_end_hour
        if start > end:
            return hour >= start or hour < end
        return start <= hour < end


# "backoff" is raised inside a cycle by the memory agent when a genre back-off is new, so the
# planner refreshes the user's other rows without that genre.
TriggerKind = Literal["event", "session_closed", "late_night_session", "drift", "sweep", "manual", "backoff"]


class Trigger(BaseModel):
    """Why the outer loop should look at a user now.

    ``events`` are the events behind the trigger (one for ``event``, the session's events for
    ``session_closed``; a ``late_night_session`` comes with the ``session_closed`` of the same
    session, which carries the events). ``row_id`` names the drifting row for ``drift``.
    ``agents`` names the agents a ``manual`` trigger asks for. ``tz_offset_min`` is the user's
    offset from UTC, so daypart rules read local time.
    """

    model_config = ConfigDict(extra="forbid")

    kind: TriggerKind
    at_ms: int = Field(default_factory=now_ms, ge=0)
    events: list[Event] = Field(default_factory=list)
    row_id: str | None = None
    agents: list[str] = Field(default_factory=list)
    tz_offset_min: int = Field(default=0, ge=-14 * 60, le=14 * 60)
    detail: dict[str, float | int | str] = Field(default_factory=dict)

    @classmethod
    def event(cls, ev: Event, *, tz_offset_min: int = 0) -> "Trigger":
        return cls(kind="event", at_ms=ev.ts, events=[ev], tz_offset_min=tz_offset_min)

    @classmethod
    def session_closed(cls, events: list[Event], *, tz_offset_min: int = 0) -> "Trigger":
        at = max((e.ts for e in events), default=now_ms())
        return cls(kind="session_closed", at_ms=at, events=list(events), tz_offset_min=tz_offset_min)

    @classmethod
    def drift(cls, row_id: str, *, at_ms: int | None = None, **detail: float | int | str) -> "Trigger":
        return cls(kind="drift", at_ms=at_ms if at_ms is not None else now_ms(), row_id=row_id, detail=detail)

    @classmethod
    def sweep(cls, *, at_ms: int | None = None) -> "Trigger":
        return cls(kind="sweep", at_ms=at_ms if at_ms is not None else now_ms())

    @classmethod
    def manual(cls, *agents: str, at_ms: int | None = None, **detail: float | int | str) -> "Trigger":
        """A request naming agents; ``detail`` reaches them as the trigger's ``detail``."""
        return cls(kind="manual", at_ms=at_ms if at_ms is not None else now_ms(), agents=list(agents),
                   detail=detail)


def session_triggers(events: Sequence[Event], *, genres_of: Callable[[int], Iterable[str] | None],
                     tz_offset_min: int = 0, rules: TriggerRules | None = None) -> list[Trigger]:
    """The triggers the sessionizer fires when the session of ``events`` closes: ``session_closed``
    and, when the session's last watched title (by event time, :data:`WATCH_TYPES`) is dark and
    its last event falls in the late-night window of the user's local time,
    ``late_night_session``. For callers that close sessions themselves; ``genres_of`` gives an
    item's genres (None when unknown)."""
    rules = rules or TriggerRules()
    in_session = [e for e in events if e.type != "episode_release"]  # catalog events are not activity
    out = [Trigger.session_closed(list(events), tz_offset_min=tz_offset_min)]
    if not in_session:
        return out
    end_ts = max(e.ts for e in in_session)
    watched = [e for e in in_session if e.type in WATCH_TYPES and e.item_id is not None]
    if not watched:
        return out
    last = watched[0]
    for e in watched[1:]:  # the latest watch by event time; on a tie the later one, as the Lua's take_item
        if e.ts >= last.ts:
            last = e
    hour = local_hour(end_ts, tz_offset_min)
    if rules.is_dark(genres_of(int(last.item_id)) or ()) and rules.is_late_night(hour):  # type: ignore[arg-type]
        out.append(Trigger(kind="late_night_session", at_ms=end_ts, tz_offset_min=tz_offset_min,
                           detail={"end_ts": end_ts, "local_hour": hour, "tz_offset_min": tz_offset_min}))
    return out
