"""The Event contract: what the API accepts, the stream carries and the daemon applies.

Validation is strict and its messages name the field, so a bad request becomes a 4xx that says
what is wrong, and a bad stream entry becomes a dead letter with a readable reason.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from outerloop.clock import now_ms

# Interaction / event types, in a fixed order: the model's action-token vocabulary is this
# list's index + 1 (0 = unknown / padding). Append only; never reorder.
EVENT_TYPES: tuple[str, ...] = (
    "impression",
    "click",
    "play",
    "pause",
    "seek",
    "finish",
    "skip",
    "add_to_list",
    "rate",
    "search",
    "episode_release",
)
# an event type's integer id in histories and model inputs (0 = padding / unknown): the model's
# action-token vocabulary
ACTION_ID: dict[str, int] = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}
EventType = Literal[
    "impression", "click", "play", "pause", "seek", "finish", "skip",
    "add_to_list", "rate", "search", "episode_release",
]

# Events may carry device clocks that run a little fast; anything further ahead is rejected.
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000
# 2000-01-01T00:00:00Z: earlier event times are treated as bad input (ML-100K starts in 1997,
# so replays of MovieLens opt out with ``allow_historic``; the API never does).
MIN_LIVE_TS_MS = 946_684_800_000


def _whole_number(value: Any) -> Any:
    return int(value) if type(value) is float and value.is_integer() else value


# Makes an ``int`` field a JSON Schema ``integer``: 5 and 5.0 (a number with no fraction is an
# integer in JSON Schema), but under strict validation (as the API validates) neither "5" nor true
# nor 5.5. Put it after the field's bounds (``Annotated[int, Field(ge=1), WHOLE_NUMBER]``), or the
# bounds leave the JSON schema.
WHOLE_NUMBER = BeforeValidator(_whole_number)



class Event(BaseModel):
    """One user interaction or catalog event.

    ``event_id`` is the idempotency key: the same id applied twice has one effect.
    ``request_id`` joins feedback to the recommendation response that showed the item.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    item_id: Annotated[int, Field(ge=1), WHOLE_NUMBER] | None = None
    type: EventType
    ts: Annotated[int, Field(ge=0), WHOLE_NUMBER] = Field(description="event time, ms since the Unix epoch")
    device: str | None = Field(default=None, max_length=64)
    position_s: float | None = Field(default=None, ge=0, le=7 * 24 * 3600)
    request_id: str | None = Field(default=None, max_length=128)

    @field_validator("ts")
    @classmethod
    def _not_in_future(cls, ts: int) -> int:
        if ts > now_ms() + MAX_FUTURE_SKEW_MS:
            raise ValueError(f"ts {ts} is more than {MAX_FUTURE_SKEW_MS // 1000} s in the future")
        return ts

    def needs_item(self) -> bool:
        """Every type but ``search`` refers to an item."""
        return self.type != "search"
