"""How an :class:`~outerloop.contracts.events.Event` is written to and read from the event stream.

One entry per event, one field: ``event`` = the event's JSON (``Event.model_dump_json``). The
API (producer) and the daemon (consumer) both go through this module so they cannot drift
apart. A single JSON field keeps optional fields optional and lets the daemon dead-letter an
entry with the exact validation message (which names the field). A producer that traces adds
``traceparent`` (W3C trace context, :func:`outerloop.telemetry.inject_trace`); the event never
depends on it, the consumer only links its spans to it.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from outerloop.contracts.events import Event
from outerloop.errors import UserInputError

EVENT_FIELD = "event"


class MalformedEntry(UserInputError, ValueError):
    """A stream entry that is not a valid event; ``reason`` is readable and names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode_event(event: Event) -> dict[str, str]:
    """Stream fields for ``event`` (pass to ``XADD``)."""
    return {EVENT_FIELD: event.model_dump_json(exclude_none=True)}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "event"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def decode_entry(fields: Mapping[bytes | str, bytes | str] | None) -> Event:
    """The event in a stream entry's fields; :class:`MalformedEntry` says why not."""
    if not fields:
        return _raise("entry has no fields (deleted or empty)")
    decoded = {_text(k): v for k, v in fields.items()}
    raw = decoded.get(EVENT_FIELD)
    if raw is None:
        names = ", ".join(sorted(decoded)) or "none"
        return _raise(f"missing field {EVENT_FIELD!r} (entry has: {names})")
    try:
        return Event.model_validate_json(raw)
    except ValidationError as exc:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return _raise(f"{EVENT_FIELD}: not valid JSON ({exc.errors()[0].get('msg')})")
        return _raise(_validation_reason(exc))


def _raise(reason: str) -> Event:
    raise MalformedEntry(reason)


def describe_fields(fields: Mapping[bytes | str, bytes | str] | None, limit: int = 2000) -> str:
    """The raw entry as text for a dead letter (bounded, so a huge entry cannot bloat it)."""
    if not fields:
        return ""
    text = "; ".join(f"{_text(k)}={_text(v)}" for k, v in fields.items())
    return text if len(text) <= limit else text[:limit] + "..."
