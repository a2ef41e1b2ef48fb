"""Typed memory facts: what the outer loop believes about a user, and why.

Each fact is a pydantic model tagged by ``kind`` (a discriminated union), so a fact read back
from Redis is validated into the right class and a malformed one is rejected with a message
naming the field. Every fact carries its ``evidence`` (event ids or a short text), a
``confidence`` in [0, 1], the agent that wrote it (``source``) and ``version``: the user's
memory version at which the fact was last written (stamped by the store on commit).

A fact's :attr:`key` is its identity in the user's memory: one ``GenreBackoff`` per genre, one
``RuntimePreference`` per daypart, and so on. Writing a fact with an existing key replaces it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from outerloop.errors import OuterloopError

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


class _Fact(BaseModel):
    """Fields every fact has."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    evidence: Evidence = Field(description="event ids, or a short text, that justify the fact")
    confidence: float = Field(ge=0.0, le=1.0, description="how sure the writing agent is")
    source: Name = Field(description="name of the agent that wrote the fact")
    version: int = Field(default=0, ge=0, description="memory version when last written")

    @property
    def key(self) -> str:  # pragma: no cover - every concrete fact overrides it
        raise NotImplementedError


class GenreAffinity(_Fact):
    """How much the user likes a genre (positive) or avoids it (negative)."""

    kind: Literal["genre_affinity"] = "genre_affinity"
    genre: Name
    score: float

    @property
    def key(self) -> str:
        return f"genre_affinity:{self.genre.lower()}"


class GenreBackoff(_Fact):
    """Stop pushing a genre until ``until`` (e.g. "dropped three crime dramas in a row")."""

    kind: Literal["genre_backoff"] = "genre_backoff"
    genre: Name
    until: AwareDatetime

    @property
    def key(self) -> str:
        return f"genre_backoff:{self.genre.lower()}"


class RuntimePreference(_Fact):
    """Preferred runtime in a daypart (e.g. 45-minute episodes on weekday nights)."""

    kind: Literal["runtime_preference"] = "runtime_preference"
    daypart: Daypart
    minutes: int = Field(ge=1, le=600)

    @property
    def key(self) -> str:
        return f"runtime_preference:{self.daypart}"


class ContinueWatching(_Fact):
    """The next episode of a series the user is in the middle of."""

    kind: Literal["continue_watching"] = "continue_watching"
    series_id: Name
    next_item_id: int = Field(ge=1, description="dense catalog id of the next episode")
    next_episode: int = Field(ge=1, description="episode number within the series")

    @property
    def key(self) -> str:
        return f"continue_watching:{self.series_id}"


Fact = Annotated[
    GenreAffinity | GenreBackoff | RuntimePreference | ContinueWatching,
    Field(discriminator="kind"),
]
FACT_TYPES: tuple[type[_Fact], ...] = (GenreAffinity, GenreBackoff, RuntimePreference, ContinueWatching)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Fact)


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or (
            "kind" if err["type"].startswith("union_tag") else "fact")
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_fact(data: dict[str, Any] | str | bytes) -> Fact:
    """Validate a dict or JSON into the right fact class; :class:`InvalidFact` otherwise.

    The message leads with the kind and the field path, e.g.
    ``invalid fact: genre_backoff.confidence: Input should be less than or equal to 1``.
    """
    try:
        if isinstance(data, str | bytes):
            return _ADAPTER.validate_json(data)
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidFact(f"invalid fact: {_explain(exc)}") from exc


def dump_fact(fact: Fact) -> str:
    """JSON of a fact (with its ``kind``), the form stored in Redis."""
    return fact.model_dump_json()


def check_fact(fact: Any) -> Fact:
    """Accept a fact instance (or a dict) from an agent; reject anything else clearly."""
    if isinstance(fact, FACT_TYPES):
        return fact  # type: ignore[return-value]
    if isinstance(fact, dict):
        return parse_fact(fact)
    raise InvalidFact(f"invalid fact: expected one of {[t.__name__ for t in FACT_TYPES]}, "
                      f"got {type(fact).__name__}")
