"""Triggers: the reasons a user's outer-loop cycle should run, and how they are queued.

A trigger is fired inside the same Lua script as the event effect that caused it (see
:mod:`outerloop.scheduler.sessionizer`), into the user's pending triggers. Triggers of the same
name coalesce there until the user's next cycle takes them all at once: a hash holds per name
the count, the first and last firing time and the latest detail; two capped lists hold the
source event ids and the most recent source events. Firing is append-only (no JSON is
re-encoded), so a user with a long backlog costs the same per event as any other.

A trigger's name is its kind (:data:`outerloop.contracts.triggers.TriggerKind`), the kind agents
subscribe to and the planner reads; only a manual request is fired per agent, as
``manual:<agent>``. A cycle receives its triggers through :meth:`PendingTrigger.as_trigger`,
which moves fields over and classifies nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from outerloop.contracts.events import Event
from outerloop.contracts.keys import SchedulerKeys
from outerloop.contracts.triggers import DRIFT, TRIGGER_KINDS, Trigger, TriggerKind, parse_trigger_name
from outerloop.storage.clients import AsyncRedisClient
from outerloop.storage.scripts import lua_source

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PendingTrigger:
    """One coalesced trigger as a cycle receives it.

    ``events`` are the most recent source events (for ``session_closed``: the session's last
    events), ``event_ids`` all source event ids up to a cap.

    ``first_ms``/``last_ms`` are wall-clock times (ms) of the first and last firing, so the
    cycle can tell how long the trigger waited; ``detail`` is the latest firing's detail (event
    time, item, series, session summary).
    """

    name: str
    count: int = 1
    first_ms: int = 0
    last_ms: int = 0
    event_ids: tuple[str, ...] = ()
    events: Sequence[Event] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_trigger(self, tz_offset_min: int = 0) -> Trigger | None:
        """This trigger as the cycle's agents receive it, of the kind it was fired as (a
        ``manual:<agent>`` request: ``manual``, naming its agent), with its source events, the
        latest firing's detail as it was fired (numbers and strings), the drifting row for
        ``drift``, and ``at_ms`` the event time it is about: the closed session's end (the
        ``end_ts`` the sessionizer's session triggers carry), else its newest source event, else
        when it last fired. ``None`` (logged) for a name that is no trigger kind, e.g. one queued
        by another version: the cycle runs on the others."""
        kind, agent = parse_trigger_name(self.name)
        if kind not in TRIGGER_KINDS:
            log.warning("left out a pending trigger of unknown kind %r", self.name)
            return None
        detail = {k: v for k, v in self.detail.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
        end_ts = detail.get("end_ts") if agent is None else None  # a manual detail is the requester's own
        at_ms = int(end_ts) if isinstance(end_ts, int | float) else max((e.ts for e in self.events),
                                                                         default=self.last_ms)
        row_id = detail.get("row_id") if kind == DRIFT else None
        return Trigger(kind=cast(TriggerKind, kind), at_ms=at_ms, events=list(self.events),
                       row_id=str(row_id) if row_id else None, agents=[agent] if agent else [],
                       tz_offset_min=tz_offset_min, detail=detail)


SEP = "\x1f"  # between a trigger name and an event id / event JSON in the lists
EVENTS_SEP = b"\x1e"  # between events when a script returns them joined (JSON never has it raw)


class LazyEvents(Sequence[Event]):
    """Source events parsed on first use: most cycles never look at them, and parsing twenty
    per trigger would cost more than the rest of the dispatch."""

    __slots__ = ("_raw", "_parsed")

    def __init__(self, raw: Sequence[str]) -> None:
        self._raw = raw
        self._parsed: list[Event] | None = None

    def _events(self) -> list[Event]:
        if self._parsed is None:
            parsed = []
            for doc in self._raw:
                try:  # validated when it was read from the stream; only parsed here
                    parsed.append(Event.model_construct(**json.loads(doc)))
                except (ValueError, TypeError):  # not an event document: left out
                    continue
            self._parsed = parsed
        return self._parsed

    def __getitem__(self, index: Any) -> Any:
        return self._events()[index]

    def __len__(self) -> int:
        return len(self._events())

    def __repr__(self) -> str:
        return f"LazyEvents({len(self._raw)} events)"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def triggers_from_parts(hash_flat: Iterable[Any] | Mapping[Any, Any], ids: Iterable[Any],
                        events: Iterable[Any]) -> list[PendingTrigger]:
    """Triggers from the pending (or in-flight) hash and its two lists, as the scripts return
    them (a flat list or a dict for the hash), sorted by name."""
    if isinstance(hash_flat, Mapping):
        pairs = [(_text(k), _text(v)) for k, v in hash_flat.items()]
    else:
        flat = [_text(x) for x in hash_flat]
        pairs = list(zip(flat[0::2], flat[1::2]))
    fields: dict[str, dict[str, str]] = {}
    for key, value in pairs:
        name, _, part = key.partition("|")
        fields.setdefault(name, {})[part or "count"] = value
    by_name_ids: dict[str, list[str]] = {}
    for raw in ids:
        name, _, eid = _text(raw).partition(SEP)
        by_name_ids.setdefault(name, []).append(eid)
    by_name_events: dict[str, list[str]] = {}
    for raw in events:
        name, _, doc = _text(raw).partition(SEP)
        by_name_events.setdefault(name, []).append(doc)
    out = []
    for name, f in sorted(fields.items()):
        if "count" not in f:
            continue
        detail = json.loads(f["detail"]) if "detail" in f else {}
        out.append(PendingTrigger(name=name, count=int(f["count"]), first_ms=int(f.get("first", 0)),
                           last_ms=int(f.get("last", 0)), event_ids=tuple(by_name_ids.get(name, ())),
                           events=LazyEvents(by_name_events.get(name, [])),
                           detail=detail if isinstance(detail, dict) else {}))
    return out


async def read_triggers(client: AsyncRedisClient, keys: SchedulerKeys, user_id: str, *, inflight: bool = False) -> list[PendingTrigger]:
    """A user's pending (or in-flight) triggers, without taking them (inspection, tests)."""
    h, ids, evs = keys.inflight_triggers(user_id) if inflight else keys.pending_triggers(user_id)
    return triggers_from_parts(await client.hgetall(h), await client.lrange(ids, 0, -1),
                               await client.lrange(evs, 0, -1))


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """What the scheduler needs to know about an item."""

    series_id: str | None = None
    genres: tuple[str, ...] = ()
    runtime_min: int | None = None  # keeps a session open while the title plays (see the sessionizer)


class ItemLookup(Protocol):
    """Item facts for trigger rules (a catalog in memory, a Redis hash, ...)."""

    def __call__(self, item_id: int) -> ItemInfo | None: ...


def no_item_info(item_id: int) -> ItemInfo | None:
    """The lookup when no catalog is available: genre and series rules never fire."""
    return None


@dataclass(frozen=True, slots=True)
class CatalogLookup:
    """Item facts from an :class:`outerloop.data.schema.Catalog` (any object with ``get``)."""

    catalog: Any

    def __call__(self, item_id: int) -> ItemInfo | None:
        try:
            item = self.catalog.get(item_id)
        except KeyError:
            return None
        return ItemInfo(series_id=getattr(item, "series_id", None), genres=tuple(getattr(item, "genres", ())),
                        runtime_min=getattr(item, "runtime_min", None))


# Lua shared by every script that fires or moves triggers. ``t`` = {hash, ids list, events
# list} of one trigger set; ``lim`` = {ids = max event ids, events = max events}.
LUA_TRIGGERS = lua_source("triggers")

# Fire one trigger from outside the event path (evaluator drift, stale sweep, a release fanned
# out to a follower). ``marker`` makes it idempotent: it fires only if the marker was not yet in
# the user's set of applied ids (pass '' to always fire).
# KEYS: pending hash, ids, events, applied
# ARGV: name, now_ms, detail JSON|'', max_ids, max_events, marker, applied_ttl_s, event_id|'',
#       event JSON|''
# Returns 1 if fired.
LUA_FIRE = LUA_TRIGGERS + lua_source("trigger_fire")
