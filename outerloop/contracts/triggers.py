"""Triggers: why the outer loop should look at a user now.

The kinds the scheduler fires (from the sessionizer's Lua, the sweeps, the evaluator and manual
requests) are named here once; the daemon hands the agents :class:`Trigger` values of the same
kinds.
"""

from __future__ import annotations

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


# "backoff" is raised inside a cycle by the memory agent when a genre back-off is new, so the
# planner refreshes the user's other rows without that genre.
TriggerKind = Literal["event", "session_closed", "drift", "sweep", "manual", "backoff"]


class Trigger(BaseModel):
    """Why the outer loop should look at a user now.

    ``events`` are the events behind the trigger (one for ``event``, the session's events for
    ``session_closed``). ``row_id`` names the drifting row for ``drift``. ``agents`` names the
    agents a ``manual`` trigger asks for. ``tz_offset_min`` is the user's offset from UTC, so
    daypart rules ("after 23:00") read local time.
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
