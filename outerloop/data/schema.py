"""The data contracts shared by loaders, the model, the API and the agents.

Items carry a dense integer id (1..N; 0 is the padding token the model reserves) and the
source's own id (``source_id``) so results can be joined back to the original files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# ACTION_ID, the model's action-token vocabulary (an event type's index in EVENT_TYPES + 1, 0 =
# unknown / padding), is defined with the event types and re-exported here
from outerloop.contracts.events import ACTION_ID, EVENT_TYPES  # noqa: F401


@dataclass(frozen=True, slots=True)
class Item:
    """One catalog entry. Optional fields are ``None`` when the source does not have them."""

    item_id: int  # dense id, 1..N
    source_id: str  # the id in the source files (MovieLens movieId, synthetic id, ...)
    title: str
    genres: tuple[str, ...] = ()
    year: int | None = None
    runtime_min: int | None = None
    tags: tuple[str, ...] = ()
    kind: Literal["film", "episode"] = "film"
    series_id: str | None = None
    season: int | None = None
    episode: int | None = None
    release_ts: int | None = None  # ms since epoch


@dataclass(slots=True)
class Catalog:
    """All items of a dataset, indexed by dense id. ``items[i]`` has ``item_id == i + 1``."""

    items: list[Item]
    genres: list[str] = field(default_factory=list)  # vocabulary, sorted

    def __post_init__(self) -> None:
        for i, it in enumerate(self.items):
            if it.item_id != i + 1:
                raise ValueError(f"catalog item at position {i} has item_id {it.item_id}, expected {i + 1}")
        if not self.genres:
            self.genres = sorted({g for it in self.items for g in it.genres})

    def __len__(self) -> int:
        return len(self.items)

    def get(self, item_id: int) -> Item:
        """The item with this dense id; ``KeyError`` when there is none."""
        if not 1 <= item_id <= len(self.items):
            raise KeyError(item_id)
        return self.items[item_id - 1]

    def genres_of(self, item_id: int) -> tuple[str, ...] | None:
        """The item's genres, or None when there is no such item (what trigger rules look up)."""
        return self.items[item_id - 1].genres if 1 <= item_id <= len(self.items) else None


@dataclass(slots=True)
class UserSequence:
    """One user's interactions in time order (dense item ids)."""

    user_id: str
    items: np.ndarray  # int32, (L,)
    ts: np.ndarray | None = None  # int64 ms since epoch, (L,); None when the source has no time
    actions: np.ndarray | None = None  # int8 action ids (ACTION_ID), (L,); None = unknown

    def __len__(self) -> int:
        return int(self.items.shape[0])


@dataclass(slots=True)
class InteractionData:
    """A dataset as the model sees it: a catalog and every user's ordered sequence."""

    name: str
    catalog: Catalog
    users: list[UserSequence]

    @property
    def n_interactions(self) -> int:
        return sum(len(u) for u in self.users)
