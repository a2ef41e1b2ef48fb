"""What one catalog can answer: its genre names, which metadata it has, and arrays for filtering.

Built once per catalog (a few milliseconds for 10k items) and shared by the parser (genre names,
the newest year, title lookup) and the filter (vectorised masks). It also says what cannot be
checked: MovieLens has no runtimes and ML-1M no tags, and a constraint on those is refused out
loud rather than pretended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from outerloop.conversation.lexicon import GENRE_NAMES, GENRE_WORDS
from outerloop.conversation.titles import TitleIndex
from outerloop.data.schema import Catalog, Item


def tag_matches(word: str, tag: str) -> bool:
    """A tag matches a tag word when equal or when it contains it as whole words
    ("stupid" matches "stupid humor", not "stupidity-free")."""
    return word == tag or re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", tag) is not None


@dataclass
class CatalogFacts:
    """Arrays indexed by dense item id (row 0 = padding, never eligible)."""

    catalog: Catalog
    name: str = "catalog"
    popularity: np.ndarray | None = None
    _tag_cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        items = self.catalog.items
        n = len(items) + 1
        self.genre_index = {g: j for j, g in enumerate(self.catalog.genres)}
        self.genre_matrix = np.zeros((n, len(self.genre_index)), dtype=bool)  # (N+1, G)
        self.years = np.full(n, -1, dtype=np.int32)
        self.runtimes = np.full(n, -1, dtype=np.int32)
        self.is_episode = np.zeros(n, dtype=bool)
        self.tag_sets: list[frozenset[str]] = [frozenset()]
        self._tag_items: dict[str, list[int]] = {}
        for it in items:
            for g in it.genres:
                if g in self.genre_index:
                    self.genre_matrix[it.item_id, self.genre_index[g]] = True
            if it.year is not None:
                self.years[it.item_id] = it.year
            if it.runtime_min is not None:
                self.runtimes[it.item_id] = it.runtime_min
            self.is_episode[it.item_id] = it.kind == "episode"
            tags = frozenset(t.lower() for t in it.tags)
            self.tag_sets.append(tags)
            for t in tags:
                self._tag_items.setdefault(t, []).append(it.item_id)
        known_years = self.years[1:][self.years[1:] >= 0]
        self.latest_year = int(known_years.max()) if known_years.size else None
        self.earliest_year = int(known_years.min()) if known_years.size else None

    # -- what the catalog has ----------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.catalog)

    @property
    def has_runtimes(self) -> bool:
        return bool((self.runtimes[1:] >= 0).any())

    @property
    def has_years(self) -> bool:
        return self.latest_year is not None

    @property
    def has_tags(self) -> bool:
        return bool(self._tag_items)

    @property
    def has_episodes(self) -> bool:
        return bool(self.is_episode[1:].any())

    @property
    def has_films(self) -> bool:
        return bool((~self.is_episode[1:]).any())

    @cached_property
    def titles(self) -> TitleIndex:
        return TitleIndex([it.title for it in self.catalog.items], [it.year for it in self.catalog.items],
                          self.popularity)

    def item(self, item_id: int) -> Item:
        return self.catalog.get(item_id)

    @cached_property
    def _series(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {}
        for it in self.catalog.items:
            if it.series_id is not None:
                out.setdefault(it.series_id, []).append(it)
        return out

    def series_episodes(self, series_id: str) -> list[Item]:
        """Every episode of a series (empty for an unknown id)."""
        return self._series.get(series_id, [])

    # -- genre names -------------------------------------------------------------------------
    def genres_for(self, canonical: str) -> list[str]:
        """The catalog's names for a canonical genre, or the catalog's own genre name itself
        (empty when it has none of them)."""
        if canonical in self.genre_index:
            return [canonical]
        return [g for g in GENRE_NAMES.get(canonical, ()) if g in self.genre_index]

    @cached_property
    def genre_words(self) -> dict[str, tuple[str, ...]]:
        """Words for genres, for this catalog: the everyday lexicon (canonical genres) plus the
        catalog's own genre names, as written, in the plural and with spaces for hyphens ("Sci-Fi",
        "sci fi", "Film-Noir", "biographies"), so a catalog with a genre the lexicon lacks can still
        be asked for it by name."""
        words: dict[str, tuple[str, ...]] = {}
        for name in self.catalog.genres:
            base = name.lower()
            if not re.fullmatch(r"[a-z0-9' \-]+", base) or base in ("(no genres listed)",):
                continue
            forms = {base, base.replace("-", " "), base.replace("-", "")}
            forms |= {f + "s" for f in list(forms) if not f.endswith("s")}
            forms |= {f[:-1] + "ies" for f in list(forms) if f.endswith("y")}
            for f in forms:
                words[f] = (name,)
        words.update(GENRE_WORDS)  # the lexicon's readings win ("romantic" -> romance)
        return words

    def resolve_genre(self, text: str) -> list[str]:
        """Catalog genre names for free text ("sci fi", "Children's", "comedy"): the exact name
        (any case) first, then the synonym table. Empty when the catalog has no such genre."""
        t = text.strip().lower()
        for g in self.genre_index:
            if g.lower() == t:
                return [g]
        out: list[str] = []
        for canonical in GENRE_WORDS.get(t, ()):
            out += self.genres_for(canonical)
        return out

    # -- masks -------------------------------------------------------------------------------
    def genre_mask(self, genres: list[str], how: str) -> np.ndarray:
        """(N+1,) bool: items with all (``how="all"``) or any (``"any"``) of ``genres``."""
        cols = [self.genre_index[g] for g in genres if g in self.genre_index]
        if len(cols) < len(genres):  # a genre the catalog lacks: nothing has it
            if how == "all" or not cols:
                return np.zeros(self.n_items + 1, dtype=bool)
        sub = self.genre_matrix[:, cols]
        return sub.all(axis=1) if how == "all" else sub.any(axis=1)

    def tag_mask(self, words: list[str]) -> np.ndarray:
        """(N+1,) bool: items carrying a tag that matches any of ``words``."""
        out = np.zeros(self.n_items + 1, dtype=bool)
        for w in words:
            out |= self._word_mask(w.lower())
        return out

    def tag_hits(self, item_id: int, words: list[str]) -> list[str]:
        """The item's tags that match any of ``words`` (for explanations and scoring)."""
        tags = self.tag_sets[item_id]
        return sorted(t for t in tags if any(tag_matches(w.lower(), t) for w in words))

    def _word_mask(self, word: str) -> np.ndarray:
        cached = self._tag_cache.get(word)
        if cached is None:
            cached = np.zeros(self.n_items + 1, dtype=bool)
            for tag, ids in self._tag_items.items():
                if tag_matches(word, tag):
                    cached[ids] = True
            self._tag_cache[word] = cached
        return cached
