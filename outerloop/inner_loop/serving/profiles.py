"""A user's profile as the outer loop reads it: today, where their day starts.

The late-night rule ("a session after 23:00 in the user's time ending on thrillers") and the
daypart facts need the user's UTC offset; the scheduler reads it from the HASH
``Keys.user(user, "profile")`` (field ``utc_offset_min``, 0 when absent). Clients set it through
``PUT /v1/users/{id}/profile`` with either the offset or an IANA time-zone name; a name is turned
into the offset it has *now* and kept beside it, so a client re-sends it when daylight saving
time changes (or sends offsets itself).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from outerloop.contracts.events import WHOLE_NUMBER

MIN_OFFSET_MIN, MAX_OFFSET_MIN = -12 * 60, 14 * 60  # UTC-12:00 .. UTC+14:00, every zone in use


@lru_cache(maxsize=1)
def known_zones() -> tuple[str, ...]:
    """The IANA zone names this machine's time-zone database has (what ``timezone`` accepts)."""
    return tuple(sorted(available_timezones()))


def _exactly_one_schema(schema: dict[str, Any]) -> None:
    """The JSON schema says what the validators enforce: exactly one of the two is given (and
    not null), and a zone is one of :func:`known_zones`."""
    offset, zone = schema["properties"]["utc_offset_min"]["anyOf"][0], schema["properties"]["timezone"]["anyOf"][0]
    zone["enum"] = list(known_zones())
    schema["anyOf"] = [  # (the branches repeat the fields' bounds: some generators read only the branch)
        {"required": ["utc_offset_min"], "properties": {"utc_offset_min": dict(offset), "timezone": {"type": "null"}}},
        {"required": ["timezone"], "properties": {"timezone": dict(zone), "utc_offset_min": {"type": "null"}}},
    ]


class ProfileIn(BaseModel):
    """Exactly one of ``utc_offset_min`` and ``timezone``."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_exactly_one_schema)

    utc_offset_min: Annotated[int, Field(ge=MIN_OFFSET_MIN, le=MAX_OFFSET_MIN), WHOLE_NUMBER] | None = Field(
        None, description="minutes east of UTC, e.g. 540 for Tokyo")
    timezone: str | None = Field(None, min_length=1, max_length=64, description="IANA name, e.g. Europe/Paris")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None and name not in set(known_zones()):
            raise ValueError(f"unknown IANA time zone {name!r} (e.g. Europe/Paris, America/New_York)")
        return name

    @model_validator(mode="after")
    def _exactly_one(self) -> "ProfileIn":
        if (self.utc_offset_min is None) == (self.timezone is None):
            raise ValueError("give exactly one of utc_offset_min and timezone")
        return self

    def fields(self, now: dt.datetime | None = None) -> dict[str, str]:
        """The HASH fields to write (the offset always; the zone name when one was given)."""
        if self.timezone is None:
            return {"utc_offset_min": str(self.utc_offset_min), "timezone": ""}
        return {"utc_offset_min": str(offset_now(self.timezone, now)), "timezone": self.timezone}


def offset_now(zone: str, now: dt.datetime | None = None) -> int:
    """Minutes east of UTC that ``zone`` has at ``now`` (default: this moment)."""
    at = (now or dt.datetime.now(dt.timezone.utc)).astimezone(ZoneInfo(zone))
    offset = at.utcoffset()
    return int(offset.total_seconds() // 60) if offset is not None else 0


def profile_out(user_id: str, raw: dict[Any, Any]) -> dict[str, Any]:
    """The API's view of the stored HASH (bytes or str keys)."""
    get = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in raw.items()}
    return {"user_id": user_id, "utc_offset_min": int(get.get("utc_offset_min") or 0),
            "timezone": get.get("timezone") or None, "set": bool(get)}
