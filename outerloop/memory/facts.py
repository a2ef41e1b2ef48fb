"""Typed memory facts: what the outer loop believes about a user, and why.

Every fact subclasses :class:`Fact` and is tagged by its ``kind``, so a fact read back from
Redis is validated into the right class and a malformed one is rejected with a message naming
the field. Every fact carries its ``evidence`` (event ids or a short text), a ``confidence`` in
[0, 1], the agent that wrote it (``source``) and ``version``: the user's memory version at
which the fact was last written (stamped by the store on commit).

A fact's :attr:`~Fact.key` is its identity in the user's memory: one ``GenreBackoff`` per genre,
one ``RuntimePreference`` per daypart, and so on. Writing a fact with an existing key replaces it.

Your own facts are subclasses too; defining the class is what makes its kind known to this
process, and declaring it in an agent's ``memory_scopes`` lets that agent read and write it.
Stored, versioned, cached and compare-and-set like the built-ins::

    class PrefersSubtitles(Fact):
        kind: Literal["prefers_subtitles"] = "prefers_subtitles"
        language: str

        @property
        def key(self) -> str:             # default: the kind (one such fact per user)
            return f"prefers_subtitles:{self.language}"

A process that reads a user's memory without knowing a kind (the API, a console) keeps such a
fact as an :class:`UnknownFact`, untouched, instead of failing the whole read.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from outerloop.errors import OuterloopError, UsageError

Daypart = Literal[
    "weekday_morning", "weekday_daytime", "weekday_evening", "weekday_night",
    "weekend_morning", "weekend_daytime", "weekend_evening", "weekend_night",
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Evidence = Annotated[list[EventId], Field(min_length=1, max_length=200)] | Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)
]


class InvalidFact(OuterloopError, ValueError):
    """A fact failed validation; the message names the kind and the field."""


KIND = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_KINDS: dict[str, type["Fact"]] = {}  # kind -> class, filled as fact classes are defined


class Fact(BaseModel):
    """The base of every memory fact (built-in or yours): the fields every fact has.

    A subclass declares ``kind: Literal["..."] = "..."`` (lowercase, unique in the process) and
    its own fields; override :attr:`key` when a user can hold several facts of the kind.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: str = Field(description="the fact's class, as stored")
    evidence: Evidence = Field(description="event ids, or a short text, that justify the fact")
    confidence: float = Field(ge=0.0, le=1.0, description="how sure the writing agent is")
    source: Name = Field(description="name of the agent that wrote the fact")
    version: int = Field(default=0, ge=0, description="memory version when last written")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__module__ == __name__ and cls.__name__ == "UnknownFact":
            return  # the placeholder for other processes' kinds is no kind of its own
        field = cls.model_fields.get("kind")
        kind = field.default if field is not None else None
        if not isinstance(kind, str) or kind == "":
            raise UsageError(f"fact class {cls.__name__} must declare its kind: "
                             f'kind: Literal["{_snake(cls.__name__)}"] = "{_snake(cls.__name__)}"')
        if not KIND.match(kind):
            raise UsageError(f"fact kind {kind!r} of {cls.__name__} must match {KIND.pattern}")
        old = _KINDS.get(kind)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise UsageError(f"fact kind {kind!r} is already {old.__module__}.{old.__qualname__}; "
                             f"{cls.__module__}.{cls.__qualname__} needs another kind")
        _KINDS[kind] = cls

    @property
    def key(self) -> str:
        """The fact's identity in the user's memory (default: its kind: one per user)."""
        return self.kind


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def fact_class(kind: str) -> type[Fact] | None:
    """The class of a fact kind defined in this process, or None."""
    return _KINDS.get(kind)


def fact_kinds() -> list[str]:
    """Every fact kind this process knows (built-ins and the classes defined so far)."""
    return sorted(_KINDS)


class GenreAffinity(Fact):
    """How much the user likes a genre (positive) or avoids it (negative)."""

    kind: Literal["genre_affinity"] = "genre_affinity"
    genre: Name
    score: float

    @property
    def key(self) -> str:
        return f"genre_affinity:{self.genre.lower()}"


class GenreBackoff(Fact):
    """Stop pushing a genre until ``until`` (e.g. "dropped three crime dramas in a row")."""

    kind: Literal["genre_backoff"] = "genre_backoff"
    genre: Name
    until: AwareDatetime

    @property
    def key(self) -> str:
        return f"genre_backoff:{self.genre.lower()}"


class RuntimePreference(Fact):
    """Preferred runtime in a daypart (e.g. 45-minute episodes on weekday nights)."""

    kind: Literal["runtime_preference"] = "runtime_preference"
    daypart: Daypart
    minutes: int = Field(ge=1, le=600)

    @property
    def key(self) -> str:
        return f"runtime_preference:{self.daypart}"


class ContinueWatching(Fact):
    """The next episode of a series the user is in the middle of."""

    kind: Literal["continue_watching"] = "continue_watching"
    series_id: Name
    next_item_id: int = Field(ge=1, description="dense catalog id of the next episode")
    next_episode: int = Field(ge=1, description="episode number within the series")

    @property
    def key(self) -> str:
        return f"continue_watching:{self.series_id}"


class UnknownFact(Fact):
    """A stored fact whose kind this process does not define (another process's own class).
    Read as it is, never validated against a class; its stored JSON is kept (``raw``) so a
    commit that does not touch it leaves it exactly as it was."""

    model_config = ConfigDict(extra="allow", frozen=True)

    stored_key: str = Field(default="", exclude=True)

    @property
    def key(self) -> str:
        return self.stored_key or self.kind


BuiltinFact = Annotated[
    GenreAffinity | GenreBackoff | RuntimePreference | ContinueWatching,
    Field(discriminator="kind"),
]
FACT_TYPES: tuple[type[Fact], ...] = (GenreAffinity, GenreBackoff, RuntimePreference, ContinueWatching)

def _explain(kind: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{kind}.{loc}: {err['msg']}" if loc else f"{kind}: {err['msg']}")
    return "; ".join(parts)


def parse_fact(data: dict[str, Any] | str | bytes, *, unknown_ok: bool = False, key: str = "") -> Fact:
    """Validate a dict or JSON into the right fact class; :class:`InvalidFact` otherwise.

    The message leads with the kind and the field path, e.g.
    ``invalid fact: genre_backoff.confidence: Input should be less than or equal to 1``.
    ``unknown_ok``: a kind no class in this process defines becomes an :class:`UnknownFact`
    (stored under ``key``) instead of an error.
    """
    try:
        doc = json.loads(data) if isinstance(data, str | bytes) else data
    except ValueError as exc:
        raise InvalidFact(f"invalid fact: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidFact(f"invalid fact: expected an object, got {type(doc).__name__}")
    kind = doc.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        if unknown_ok and isinstance(kind, str) and kind:
            return UnknownFact.model_construct(**doc, stored_key=key)
        raise InvalidFact(f"invalid fact: kind: {kind!r} is not a known fact kind ({', '.join(fact_kinds())})")
    try:
        return cls.model_validate(doc)
    except ValidationError as exc:
        raise InvalidFact(f"invalid fact: {_explain(kind, exc)}") from exc


def dump_fact(fact: Fact) -> str:
    """JSON of a fact (with its ``kind``), the form stored in Redis."""
    return fact.model_dump_json()


def check_fact(fact: Any) -> Fact:
    """Accept a fact instance (or a dict) from an agent; reject anything else clearly."""
    if isinstance(fact, UnknownFact):
        raise InvalidFact(f"invalid fact: kind {fact.kind!r} is not defined in this process; it cannot be written")
    if isinstance(fact, Fact):
        if _KINDS.get(fact.kind) is not type(fact):
            raise InvalidFact(f"invalid fact: {type(fact).__name__} is not the class of kind {fact.kind!r}")
        return fact
    if isinstance(fact, dict):
        return parse_fact(fact)
    raise InvalidFact(f"invalid fact: expected a Fact (one of {fact_kinds()}), got {type(fact).__name__}")
