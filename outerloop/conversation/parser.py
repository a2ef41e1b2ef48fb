"""The deterministic parser: one message -> what it asks for, with no model.

It reads a message in passes, each one consuming (masking, :mod:`.masking`) what it understood
so later passes cannot misread it: title anchors first (:mod:`.anchors`; "like Scary Movie" must
not read as *scary*), then runtimes and years (:mod:`.quantities`; "under 90 minutes", "from the
80s"), then follow-up words ("shorter", "newer", "start over"), and last the genre, tone and kind
words, each checked for a negation in its clause ("no romance", "funny but not stupid",
"nothing too dark").

The result, :class:`ParsedMessage`, is a *delta*: what this message alone says. Merging it into
the conversation's running state (replace, accumulate, "romance is fine after all") is
:mod:`outerloop.conversation.session`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from outerloop.conversation.anchors import parse_anchors
from outerloop.conversation.catalog_facts import CatalogFacts
from outerloop.conversation.constraints import TitleRef
from outerloop.conversation.lexicon import (
    CLASSIC_AGE_YEARS,
    CLAUSE_BREAKS,
    CONNECTORS,
    FILLERS,
    GENRE_WORDS,
    KIND_WORDS,
    LONG_MIN_MIN,
    NOT_TOO_LONG_MAX_MIN,
    NOT_TOO_SHORT_MIN_MIN,
    RECENT_SPAN_YEARS,
    SHORT_MAX_MIN,
    TONE_WORDS,
    TONES,
)
from outerloop.conversation.masking import MaskedText, normalise
from outerloop.conversation.quantities import Bound, parse_era, parse_runtime


@dataclass
class ParsedMessage:
    """What one message says on its own. Genre names are the catalog's."""

    include_genres: list[str] = field(default_factory=list)
    any_genres: list[str] = field(default_factory=list)
    exclude_genres: list[str] = field(default_factory=list)
    allow_genres: list[str] = field(default_factory=list)  # "romance is fine": lift an exclusion
    runtime: Bound = (None, None)
    years: Bound = (None, None)
    kind: str | None = None
    tones: list[str] = field(default_factory=list)
    anchors: list[TitleRef] = field(default_factory=list)
    relative: list[str] = field(default_factory=list)  # shorter, longer, newer, older
    reset: bool = False  # "start over"
    additive: bool = False  # "also", "too": add genres instead of replacing them
    clear: list[str] = field(default_factory=list)  # "any genre", "any length", "any year"
    notes: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.include_genres or self.any_genres or self.exclude_genres or self.allow_genres
                    or self.runtime != (None, None) or self.years != (None, None) or self.kind or self.tones
                    or self.anchors or self.relative or self.reset or self.clear)


# --- follow-up words ----------------------------------------------------------------------------

_RELATIVE = (
    ("shorter", re.compile(r"\b(?:shorter|quicker|less\s+long|not\s+as\s+long)\b")),
    ("longer", re.compile(r"\blonger\b")),
    ("newer", re.compile(r"\b(?:newer|more\s+recent|more\s+modern|later\s+ones?)\b")),
    ("older", re.compile(r"\b(?:older|earlier\s+ones?|more\s+classic|less\s+recent)\b")),
)
_RESET = re.compile(r"\b(?:start\s+over|forget\s+(?:that|it|all|everything|about\s+it)|new\s+search|never\s*mind"
                    r"|from\s+scratch|reset|something\s+(?:completely|totally|entirely)\s+different)\b")
_ADDITIVE = re.compile(r"\b(?:also|too|as\s+well|in\s+addition)\b")
_CLEAR = (
    ("genres", re.compile(r"\bany\s+genre\b|\bgenre\s+doesn'?t\s+matter\b")),
    ("runtime", re.compile(r"\bany\s+(?:length|runtime|duration)\b"
                           r"|\b(?:length|runtime|duration)\s+doesn'?t\s+matter\b")),
    ("years", re.compile(r"\bany\s+(?:year|era|decade)\b|\b(?:year|era|age)\s+doesn'?t\s+matter\b")),
)
_ALLOW_AFTER = re.compile(r"^\s*(?:is|are|'s)\s+(?:fine|ok|okay|alright|all\s+right|good|allowed)\b"
                          r"|^\s*(?:after\s+all|again)\b")
_ALLOW_BEFORE = re.compile(r"(?:\ballow|\bdon't\s+mind|\bdont\s+mind|\bfine\s+with|\bok\s+with|\bokay\s+with"
                           r"|\bopen\s+to|\binclude)\s*(?:some\s+)?$")


# --- genre, tone, kind and word-level runtime/era ----------------------------------------------

_TOKEN = re.compile(r"[a-z0-9][a-z0-9'\-]*|[,.;!?/&§]")
# single tokens: "do not" was rewritten to "don't", "anything but" / "other than" to "except"
_NEGATOR_TOKENS = frozenset({
    "no", "not", "without", "except", "excluding", "nothing", "none", "never", "avoid", "skip", "minus",
    "hate", "isn't", "less", "nor", "neither", "don't", "dont", "doesn't", "hates", "avoiding", "skipping",
})
_RUNTIME_WORDS = {"short": "short", "quick": "short", "brief": "short", "long": "long", "lengthy": "long"}
_ERA_WORDS = {"recent": "recent", "new": "recent", "latest": "recent", "modern": "recent",
              "contemporary": "recent", "classic": "old", "classics": "old", "old": "old", "vintage": "old",
              "old-school": "old", "oldies": "old", "golden age": "old"}


@dataclass(frozen=True, slots=True)
class _Hit:
    start: int  # token positions [start, end)
    end: int
    category: str  # genre, tone, kind, runtime, era
    value: str | tuple[str, ...]


def _phrases() -> dict[tuple[str, ...], tuple[str, str | tuple[str, ...]]]:
    table: dict[tuple[str, ...], tuple[str, str | tuple[str, ...]]] = {}
    for source, cat in ((_ERA_WORDS, "era"), (_RUNTIME_WORDS, "runtime"), (KIND_WORDS, "kind"),
                        (TONE_WORDS, "tone"), (GENRE_WORDS, "genre")):
        for phrase, value in source.items():  # later sources win: "romantic" is a genre word
            table[tuple(_TOKEN.findall(phrase))] = (cat, value)
    return table


_PHRASES = _phrases()
_MAX_PHRASE = max(len(k) for k in _PHRASES)


def _scan(tokens: list[str]) -> list[_Hit]:
    hits: list[_Hit] = []
    i = 0
    while i < len(tokens):
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            entry = _PHRASES.get(tuple(tokens[i:i + n]))
            if entry is not None:
                hits.append(_Hit(i, i + n, entry[0], entry[1]))
                i += n
                break
        else:
            i += 1
    return hits


_FAMILY = {"genre": "content", "tone": "content", "kind": "kind", "runtime": "runtime", "era": "era"}


def _negated(hit: _Hit, tokens: list[str], covered: dict[int, str]) -> bool:
    """True when a negator governs ``hit`` within its clause. Only fillers, connectors and hits of
    the same family, joined by a connector, may stand between them: "no romance or horror"
    negates both; "nothing too dark, recent" and "non-violent action" leave the last word alone."""
    j = hit.start - 1
    family = _FAMILY[hit.category]
    joined = False  # a connector since the last hit: "no romance or horror", not "non-violent action"
    while j >= 0:
        tok = tokens[j]
        if j in covered:
            if covered[j] != family or not joined:
                return False
            while j >= 0 and j in covered:
                j -= 1
            joined = False
            continue
        if tok in CONNECTORS:
            joined = True
        if tok in _NEGATOR_TOKENS:
            return not (tok == "no" and j + 1 < len(tokens) and tokens[j + 1] in {",", ".", "!", "§"})
        if tok in CLAUSE_BREAKS or tok == "§":
            return False
        if tok in FILLERS or tok in CONNECTORS:
            j -= 1
            continue
        return False
    return False


def _allowed(hit: _Hit, tokens: list[str]) -> bool:
    """ "romance is fine", "ok with horror": the genre is allowed again, not asked for."""
    after = " ".join(tokens[hit.end:hit.end + 4])
    before = " ".join(tokens[max(0, hit.start - 3):hit.start])
    return bool(_ALLOW_AFTER.search(after) or _ALLOW_BEFORE.search(before))


def _genre_names(canonicals: Sequence[str], facts: CatalogFacts, notes: list[str], ask: bool) -> list[str]:
    out: list[str] = []
    for c in canonicals:
        names = facts.genres_for(c)
        if not names and ask:
            notes.append(f"this catalog has no '{c}' genre; that part was ignored")
        out += names
    return out


def _apply_words(t: MaskedText, facts: CatalogFacts, out: ParsedMessage) -> None:
    tokens = _TOKEN.findall(t.s)
    hits = _scan(tokens)
    covered = {k: _FAMILY[h.category] for h in hits for k in range(h.start, h.end)}
    positive_genres: list[tuple[_Hit, list[str]]] = []
    latest = facts.latest_year
    for hit in hits:
        neg = _negated(hit, tokens, covered)
        if hit.category == "genre":
            assert isinstance(hit.value, tuple)
            if _allowed(hit, tokens):
                out.allow_genres += _genre_names(hit.value, facts, out.notes, ask=False)
            elif neg:
                out.exclude_genres += _genre_names(hit.value, facts, out.notes, ask=False)
            else:
                positive_genres.append((hit, _genre_names(hit.value, facts, out.notes, ask=True)))
        elif hit.category == "tone":
            tone = TONES[str(hit.value)]
            if not neg:
                out.tones.append(tone.name)
                out.include_genres += _genre_names(tone.genres, facts, out.notes, ask=True)
            elif tone.negation:
                out.tones.append(tone.negation)
                out.exclude_genres += _genre_names(tone.genres, facts, out.notes, ask=False)
            elif tone.genres:
                out.exclude_genres += _genre_names(tone.genres, facts, out.notes, ask=False)
        elif hit.category == "kind":
            kind = str(hit.value)
            if neg:
                kind = "film" if kind == "episode" else "episode"
            if kind == "episode" or facts.has_episodes:  # "movie" says nothing on a films-only catalog
                out.kind = kind
        elif hit.category == "runtime":
            if hit.value == "short":
                out.runtime = (NOT_TOO_SHORT_MIN_MIN, out.runtime[1]) if neg else (out.runtime[0], SHORT_MAX_MIN)
            else:
                out.runtime = (out.runtime[0], NOT_TOO_LONG_MAX_MIN) if neg else (LONG_MIN_MIN, out.runtime[1])
        elif hit.category == "era" and latest is not None:
            if hit.value == "recent":
                cut = latest - RECENT_SPAN_YEARS
                out.years = (out.years[0], cut - 1) if neg else (cut, out.years[1])
            else:
                cut = latest - CLASSIC_AGE_YEARS
                out.years = (cut + 1, out.years[1]) if neg else (out.years[0], cut)
    _group_genres(positive_genres, tokens, out)


def _group_genres(hits: list[tuple[_Hit, list[str]]], tokens: list[str], out: ParsedMessage) -> None:
    """Runs of genres joined by "or" are alternatives (any of); otherwise each is required."""
    i = 0
    while i < len(hits):
        run = [hits[i]]
        joiners: list[str] = []
        while i + 1 < len(hits):
            between = tokens[run[-1][0].end:hits[i + 1][0].start]
            if not between or not all(tok in CONNECTORS or tok in FILLERS for tok in between):
                break
            joiners += between
            run.append(hits[i + 1])
            i += 1
        names = [n for _, ns in run for n in ns]
        if len(run) > 1 and ("or" in joiners or "/" in joiners) and "and" not in joiners:
            out.any_genres += names
        else:
            out.include_genres += names
        i += 1


# --- entry point ----------------------------------------------------------------------------


def parse_message(text: str, facts: CatalogFacts, shown: Sequence[int] = ()) -> ParsedMessage:
    """What ``text`` asks for, on its own. ``shown``: item ids of the previous answer, for
    "the second one"."""
    out = ParsedMessage()
    t = MaskedText(normalise(text))
    out.reset = bool(_RESET.search(t.s))
    out.additive = bool(_ADDITIVE.search(t.s))
    for what, pattern in _CLEAR:
        for m in t.finditer(pattern):
            out.clear.append(what)
            t.consume(m.start(), m.end())
    out.anchors = parse_anchors(t, facts, shown, out.notes)
    out.runtime = parse_runtime(t)
    out.years = parse_era(t)
    for name, pattern in _RELATIVE:
        for m in t.finditer(pattern):
            out.relative.append(name)
            t.consume(m.start(), m.end())
    runtime, years = out.runtime, out.years
    out.runtime, out.years = (None, None), (None, None)
    _apply_words(t, facts, out)
    out.runtime = (runtime[0] if runtime[0] is not None else out.runtime[0],
                   runtime[1] if runtime[1] is not None else out.runtime[1])
    out.years = (years[0] if years[0] is not None else out.years[0],
                 years[1] if years[1] is not None else out.years[1])
    for attr in ("include_genres", "any_genres", "exclude_genres", "allow_genres", "tones"):
        setattr(out, attr, sorted(set(getattr(out, attr))))
    out.relative = sorted(set(out.relative))
    out.clear = sorted(set(out.clear))
    return out
