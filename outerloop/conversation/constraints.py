"""The structured form of a conversational request, and the turns it is rebuilt from.

:class:`Constraints` is the one type both parsers produce: the rule parser builds it from words,
an LLM fills it through structured output. Everything downstream (the catalog filter, the
reranker, the explanation) reads only this type, so a parser can be swapped without touching
retrieval, and an LLM can never widen what the filter enforces beyond these fields.

Hard constraints (never violated by a returned item): the genre lists, the runtime and year
bounds, ``kind`` and ``exclude_tags``. Soft preferences (they reorder, never filter):
``prefer_tags``, the tones' soft genres, anchors and suggestions.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_MESSAGE_CHARS = 1000
MAX_TURNS = 50


class TitleRef(BaseModel):
    """A title someone mentioned ("like Toy Story", "Heat (1995)"), resolved to a catalog item.

    ``item_id`` is set once the title was found in the catalog; an unresolved reference never
    leaves the parser (it is dropped with a note), so a model cannot smuggle in titles the
    catalog does not have.
    """

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=300, description="the title as in the catalog once resolved")
    year: int | None = Field(None, ge=1800, le=2100, description="release year, when the user gave one")
    item_id: int | None = Field(None, ge=1, description="catalog item id; None until resolved")


class Constraints(BaseModel):
    """What the user asked for, in catalog terms (genre names are the catalog's own)."""

    model_config = ConfigDict(extra="forbid")

    include_genres: list[str] = Field(default_factory=list, description="every one of these genres (a horror comedy)")
    any_genres: list[str] = Field(default_factory=list, description="at least one of these genres (comedy or drama)")
    exclude_genres: list[str] = Field(default_factory=list, description="none of these genres")
    min_runtime_min: int | None = Field(None, ge=1, le=1000, description="shortest runtime wanted, minutes")
    max_runtime_min: int | None = Field(None, ge=1, le=1000, description="longest runtime wanted, minutes")
    min_year: int | None = Field(None, ge=1800, le=2100, description="earliest release year")
    max_year: int | None = Field(None, ge=1800, le=2100, description="latest release year")
    kind: Literal["film", "episode"] | None = Field(None, description="films only or series episodes only")
    tones: list[str] = Field(default_factory=list, description="tone words understood, e.g. 'funny', 'not stupid'")
    prefer_tags: list[str] = Field(default_factory=list, description="tags that make a title a better fit")
    exclude_tags: list[str] = Field(default_factory=list, description="tags a title must not carry")
    anchors: list[TitleRef] = Field(default_factory=list, description="'more like X': titles to steer towards")
    suggestions: list[TitleRef] = Field(
        default_factory=list,
        description="titles proposed by a language model; resolved to catalog items or dropped")

    @field_validator("include_genres", "any_genres", "exclude_genres", "tones", "prefer_tags", "exclude_tags")
    @classmethod
    def _clean(cls, values: list[str]) -> list[str]:
        """Sorted and de-duplicated, so two parses of one request compare equal."""
        out = sorted({v.strip() for v in values if v and v.strip()})
        if any(len(v) > 100 for v in out):
            raise ValueError("each entry must have at most 100 characters")
        if len(out) > 50:
            raise ValueError("at most 50 entries")
        return out

    @model_validator(mode="after")
    def _consistent(self) -> "Constraints":
        if self.min_runtime_min is not None and self.max_runtime_min is not None \
                and self.min_runtime_min > self.max_runtime_min:
            raise ValueError(f"min_runtime_min {self.min_runtime_min} is above max_runtime_min {self.max_runtime_min}")
        if self.min_year is not None and self.max_year is not None and self.min_year > self.max_year:
            raise ValueError(f"min_year {self.min_year} is after max_year {self.max_year}")
        clash = sorted((set(self.include_genres) | set(self.any_genres)) & set(self.exclude_genres))
        if clash:
            raise ValueError(f"genre(s) {', '.join(clash)} both wanted and excluded")
        return self

    def hard_fields(self) -> dict[str, object]:
        """The fields the filter enforces (what "never violated" is checked against)."""
        return self.model_dump(include={"include_genres", "any_genres", "exclude_genres", "min_runtime_min",
                                        "max_runtime_min", "min_year", "max_year", "kind", "exclude_tags"})

    @property
    def has_runtime(self) -> bool:
        return self.min_runtime_min is not None or self.max_runtime_min is not None

    @property
    def has_era(self) -> bool:
        return self.min_year is not None or self.max_year is not None


class Turn(BaseModel):
    """One earlier turn of the conversation, as the client kept it.

    User turns carry the text; assistant turns carry the item ids that were shown (from the
    ``turn`` field of the previous response), which is what "the second one" refers to.
    """

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    text: str = Field("", max_length=MAX_MESSAGE_CHARS)
    item_ids: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, max_length=100)  # in the schema


class Unapplied(BaseModel):
    """Part of a message that reads like a constraint but did not become one: words the parser
    did not understand, a genre the catalog lacks, a title it does not have, a reading it could
    not express. Named in the reply and returned here, never dropped."""

    phrase: str = Field(description="the words of the message, as understood (lower case)")
    reason: str


class Refusal(BaseModel):
    """A constraint that was understood but not applied, and why (never silently dropped)."""

    field: str
    value: object
    reason: str
