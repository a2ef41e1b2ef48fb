"""Triggers: why the outer loop should look at a user now, classified once.

One set of kinds (:data:`TriggerKind`) is both what the scheduler fires (the sessionizer's Lua,
the sweeps, the evaluator, manual requests) and what agents subscribe to
(``@agent(triggers=...)``) and the planner reads: a cycle receives the triggers it was fired as
:class:`Trigger` values of those kinds, with nothing translating in between. A late-night
session is classified by the sessionizer when it closes the session (``late_night_session``,
next to ``session_closed``), under the settings of :class:`TriggerRules`, and the planner reads
that kind: nothing downstream re-derives it.

An agent may also subscribe to a group of kinds (:data:`SUBSCRIPTION_GROUPS`): ``event`` is
every kind that carries the user's events, which is what ``event`` meant when the per-event
triggers were all one ``event`` kind.

Callers that close sessions themselves instead of through the daemon (replays, benchmarks, the
demo, tests) get the same triggers from :func:`session_triggers`, which applies the same rule with
the same settings as the Lua (``outerloop.scheduler.sessionizer``, ``finalize``), and per-event
triggers from :meth:`Trigger.event`, which picks the kind the sessionizer fires for the event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from outerloop.clock import now_ms
from outerloop.contracts.events import Event

# The trigger kinds. The Lua scripts (outerloop/storage/lua/) fire the first five by these names.
TITLE_FINISHED = "title_finished"  # a film or an episode of a series was watched to the end
EPISODE_RELEASED = "episode_released"  # a new episode of a series the user follows
ACTIVITY = "activity"  # any interaction (opt-in: real-time row refresh, the freshness bench)
SESSION_CLOSED = "session_closed"  # 30 minutes of event time without activity
LATE_NIGHT_SESSION = "late_night_session"  # session ended after 23:00 local on thriller/horror
DRIFT = "drift"  # the evaluator flagged that what is served drifted from the feedback
SWEEP = "sweep"  # the periodic sweep found the user's rows expired (or expiring soon)
MANUAL = "manual"  # someone asked for named agents (fired as ``manual:<agent>``, one per agent)
BACKOFF = "backoff"  # raised inside a cycle by the memory agent when a genre back-off is new, so
#                      the planner refreshes the user's other rows without that genre

TriggerKind = Literal["title_finished", "episode_released", "activity", "session_closed", "late_night_session",
                      "drift", "sweep", "manual", "backoff"]
TRIGGER_KINDS: tuple[str, ...] = get_args(TriggerKind)

# Groups an agent may subscribe to by one name, declared here once.
EVENT = "event"
SUBSCRIPTION_GROUPS: dict[str, frozenset[str]] = {
    EVENT: frozenset({TITLE_FINISHED, EPISODE_RELEASED, ACTIVITY, SESSION_CLOSED, LATE_NIGHT_SESSION}),
}
Subscription = TriggerKind | Literal["event"]  # what ``@agent(triggers=...)`` takes


def kinds_of(subscription: str) -> frozenset[str]:
    """The trigger kinds an agent declaring ``subscription`` is scheduled on (a kind itself, or
    the kinds of a group); empty for a name that is neither."""
    if subscription in SUBSCRIPTION_GROUPS:
        return SUBSCRIPTION_GROUPS[subscription]
    return frozenset({subscription}) if subscription in TRIGGER_KINDS else frozenset()


def manual_trigger_name(agent: str) -> str:
    """The name a manual request for ``agent`` is fired under (one per agent, so requests for one
    agent coalesce and requests for two do not)."""
    return f"{MANUAL}:{agent}"


def parse_trigger_name(name: str) -> tuple[str, str | None]:
    """``(kind, agent)`` of a fired trigger's name: ``manual:<agent>`` names its agent, every
    other name is its kind."""
    kind, sep, agent = name.partition(":")
    return (kind, agent or None) if sep and kind == MANUAL else (name, None)


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


class Trigger(BaseModel):
    """Why the outer loop should look at a user now.

    ``events`` are the events behind the trigger (the source events of a per-event kind, the
    session's events for ``session_closed``; a ``late_night_session`` comes with the
    ``session_closed`` of the same session, which carries the events). ``row_id`` names the
    drifting row for ``drift``.
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
        """The per-event trigger the sessionizer fires for ``ev``, for callers that feed events
        themselves: ``title_finished`` for a finish, ``episode_released`` for a release (the
        sessionizer fires it only to the series' followers), else ``activity``."""
        kind: TriggerKind = (TITLE_FINISHED if ev.type == "finish" else
                             EPISODE_RELEASED if ev.type == "episode_release" else ACTIVITY)
        return cls(kind=kind, at_ms=ev.ts, events=[ev], tz_offset_min=tz_offset_min)

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
