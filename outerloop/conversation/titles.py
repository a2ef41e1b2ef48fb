"""Resolve a title someone typed ("toy story", "the matrix 1999", "Star Wars") to a catalog item.

Why not just ``difflib`` over every title: MovieLens writes "Matrix, The (1999)" and adds
alternate titles in parentheses, people drop articles and years, and a fuzzy ratio alone
prefers a short wrong title over a long right one ("Star Wars" vs "Star Wars: Episode IV").
So matching goes exact -> prefix (whole words) -> fuzzy, each on a normalised form, and ties
are broken by the year the user gave, then by popularity.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

_YEAR_PAREN = re.compile(r"\((\d{4})\)\s*$")
_TRAILING_YEAR = re.compile(r"(?:^|\s)\(?((?:19|20)\d\d)\)?\s*$")
_PARENS = re.compile(r"\([^)]*\)")
_ARTICLE_SUFFIX = re.compile(r",\s*(the|a|an|les|la|le|il|das|der|die|el|l')\s*$", re.IGNORECASE)
_NON_WORD = re.compile(r"[^a-z0-9 ]+")
_SPACES = re.compile(r"\s+")
_LEADING_ARTICLE = re.compile(r"^(the|a|an) ")
FUZZY_CUTOFF = 0.84


def split_year(text: str) -> tuple[str, int | None]:
    """``"Heat (1995)"`` -> ``("Heat", 1995)``; a bare trailing year counts too ("heat 1995")."""
    text = text.strip()
    m = _YEAR_PAREN.search(text) or _TRAILING_YEAR.search(text)
    if m and m.start() > 0:
        return text[: m.start()].strip(), int(m.group(1))
    return text, None


def normalise_title(title: str) -> str:
    """Lower case, article moved back to the front, parentheses and punctuation dropped."""
    base = _PARENS.sub(" ", split_year(title)[0]).strip()
    m = _ARTICLE_SUFFIX.search(base)
    if m:
        base = f"{m.group(1)} {base[: m.start()]}"
    base = unicodedata.normalize("NFKD", base)
    base = "".join(ch for ch in base if not unicodedata.combining(ch))  # "Amélie" -> "Amelie"
    base = base.lower().replace("&", " and ").replace("'", "")
    return _SPACES.sub(" ", _NON_WORD.sub(" ", base)).strip()


def _without_article(norm: str) -> str:
    return _LEADING_ARTICLE.sub("", norm)


class TitleIndex:
    """Normalised titles of one catalog (built once; lookups are dictionary hits or one scan)."""

    def __init__(self, titles: Sequence[str], years: Sequence[int | None],
                 popularity: np.ndarray | None = None) -> None:
        # position i holds item id i + 1
        self._years = list(years)
        self._pop = None if popularity is None else np.asarray(popularity, dtype=np.float64)
        self._norms = [_without_article(normalise_title(t)) for t in titles]
        self._exact: dict[str, list[int]] = defaultdict(list)
        for i, norm in enumerate(self._norms):
            if norm:
                self._exact[norm].append(i + 1)
        self._by_word: dict[str, set[str]] = defaultdict(set)  # word (3+ chars) -> titles with it
        for norm in self._exact:
            for w in norm.split():
                if len(w) >= 3:
                    self._by_word[w].add(norm)
                    self._by_word[w[:3] + "*"].add(norm)

    def resolve(self, text: str, year: int | None = None, *, loose: bool = True) -> int | None:
        """The item id ``text`` most likely names, or ``None`` when nothing is close enough.

        ``loose=False``: exact (normalised) matches only; otherwise a whole-word prefix
        ("star wars" -> "Star Wars: Episode IV") and then a fuzzy match (typos) are tried.
        """
        query, typed_year = split_year(text)
        year = year if year is not None else typed_year
        norm = _without_article(normalise_title(query))
        if len(norm) < 2:
            return None
        ids = self._exact.get(norm)
        if not ids and not loose:
            return None
        if not ids:
            several = len(norm.split()) >= 2  # "star wars" may open a title; "last" alone may not
            ids = [i + 1 for i, t in enumerate(self._norms) if t.startswith(norm + " ")] if several else []
        if not ids:
            ids = [i for c in self._fuzzy(norm) for i in self._exact[c]]
        if not ids:
            return None
        return self._best(ids, year)

    def _fuzzy(self, norm: str) -> list[str]:
        """Close titles (typos), compared only with titles sharing a word or a word's first three
        letters with the query: a full scan of 10k titles costs ~100x more for the same answer."""
        pool: set[str] = set()
        for w in norm.split():
            if len(w) >= 3:
                pool |= self._by_word.get(w, set()) | self._by_word.get(w[:3] + "*", set())
        return difflib.get_close_matches(norm, sorted(pool), n=3, cutoff=FUZZY_CUTOFF)

    def _best(self, ids: list[int], year: int | None) -> int | None:
        if year is not None:
            dated = [i for i in ids if self._years[i - 1] is not None and abs(int(self._years[i - 1]) - year) <= 1]
            if not dated:
                return None  # the user named a year and no such title has it: do not guess another
            ids = sorted(dated, key=lambda i: abs(int(self._years[i - 1]) - year))
        if self._pop is not None:
            return max(ids, key=lambda i: (float(self._pop[i]) if i < self._pop.shape[0] else 0.0, -i))
        return min(ids)
