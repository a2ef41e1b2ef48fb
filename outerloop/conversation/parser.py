"""The deterministic parser: one message -> what it asks for, with no model.

It reads a message in passes, each one consuming (masking, :mod:`.masking`) what it understood
so later passes cannot misread it:

1. follow-up resets and "any length" / "any genre" clears;
2. title anchors (:mod:`.anchors`; "like Scary Movie" must not read as *scary*; "nothing like
   Titanic" is not an anchor, and is said to be unsupported);
3. negation cues of several words become the one word "no" ("can't stand", "not a fan of",
   "sick of", "steer clear of", "gore-free"), and numbers in words become digits ("ninety",
   "nineteen eighty", "the two thousands");
4. runtimes and years (:mod:`.quantities`), with the direction of each comparison read
   together with the negation before it ("nothing over an hour and a half" is at most 90);
5. follow-up words ("shorter", "newer");
6. genre, tone, kind and length/era words, each checked for a negation that governs it
   (:func:`_negated`): a negation reaches the words of its own phrase ("no romance or horror"),
   not the next phrase ("no romantic stuff, something funny" still wants comedy), and a few cues
   come after the words ("romance? no thanks", "horror is out");
7. whatever is left that is not a function word is reported as not understood
   (:attr:`ParsedMessage.unapplied`), so nothing that reads like a constraint is dropped silently.

Where a phrase has two readings the parser picks one and says which (:attr:`ParsedMessage.readings`).

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
from outerloop.conversation.constraints import TitleRef, Unapplied
from outerloop.conversation.lexicon import (
    CLASSIC_AGE_YEARS,
    CLAUSE_BREAKS,
    COMPOUND_WORDS,
    CONNECTORS,
    FILLERS,
    KIND_WORDS,
    LONG_MIN_MIN,
    NOT_TOO_LONG_MAX_MIN,
    NOT_TOO_SHORT_MIN_MIN,
    POSTPOSED_NEGATION,
    RECENT_SPAN_YEARS,
    SCOPE_STARTERS,
    SHORT_MAX_MIN,
    STOPWORDS,
    TONE_WORDS,
    TONES,
)
from outerloop.conversation.masking import MaskedText, normalise, rewrite_negations, rewrite_numbers
from outerloop.conversation.quantities import Bound, Readings, YearSpan, parse_era, parse_runtime


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
    unapplied: list[Unapplied] = field(default_factory=list)  # read like a constraint, not applied
    readings: list[str] = field(default_factory=list)  # where a phrase had two readings: the one taken

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
_ADDITIVE = re.compile(r"\b(?:also|too|as\s+well|in\s+addition)\b(?!\s+(?:long|short|old|new|dark|much|many|scary"
                       r"|violent|silly|sad|heavy|light|recent)\b)")
_LIMIT = r"(?:limit|constraint|bound|cap|requirement|restriction|filter|thing)s?"
_CLEAR = (
    ("genres", re.compile(r"\bany\s+genre\b|\bgenre\s+(?:doesn'?t|does\s+not|don'?t)\s+matter\b|\bwhatever\s+genre\b"
                          r"|\b(?:drop|forget|ignore|remove|lose)\s+the\s+genres?\b|\bno\s+genre\s+" + _LIMIT)),
    ("runtime", re.compile(r"\bany\s+(?:length|runtime|duration)\b"
                           r"|\b(?:length|runtime|duration)\s+(?:doesn'?t|does\s+not|don'?t)\s+matter\b"
                           r"|\b(?:doesn'?t|does\s+not)\s+matter\s+how\s+long\b|\bhowever\s+long\b"
                           r"|\bno\s+(?:time|length|runtime|duration)\s+" + _LIMIT +
                           r"|\b(?:drop|forget|ignore|remove|lose|skip)\s+the\s+(?:time|length|runtime|duration)\s*"
                           + _LIMIT + r"?\b|\bany\s+(?:length|runtime)\s+is\s+(?:fine|ok|okay)\b")),
    ("years", re.compile(r"\bany\s+(?:year|era|decade|period)\b"
                         r"|\b(?:year|era|age|decade|period)\s+(?:doesn'?t|does\s+not|don'?t)\s+matter\b"
                         r"|\b(?:doesn'?t|does\s+not)\s+matter\s+(?:when|how\s+old)\b"
                         r"|\bno\s+(?:date|year|era)\s+" + _LIMIT +
                         r"|\b(?:drop|forget|ignore|remove|lose)\s+the\s+(?:date|year|era|decade)s?\s*" + _LIMIT + r"?\b")),
)
_ALLOW_AFTER = re.compile(r"^\s*(?:is|are|'s)\s+(?:both\s+|all\s+|also\s+|totally\s+|perfectly\s+)?"
                          r"(?:fine|ok|okay|alright|all\s+right|good|allowed)\b"
                          r"|^\s*(?:after\s+all|again)\b")
_ALLOW_BEFORE = re.compile(r"(?:\ballow|\bdon't\s+mind|\bdont\s+mind|\bfine\s+with|\bok\s+with|\bokay\s+with"
                           r"|\bopen\s+to|\binclude)\s*(?:some\s+)?$")


# --- genre, tone, kind and word-level runtime/era ----------------------------------------------

_TOKEN = re.compile(r"[a-z0-9][a-z0-9'\-]*|[,.;:!?/&§]")
# single tokens: phrases ("can't stand", "not a fan of") were rewritten to "no" (masking.rewrite_negations)
_NEGATOR_TOKENS = frozenset({
    "no", "not", "without", "except", "excluding", "nothing", "none", "never", "avoid", "skip", "minus",
    "hate", "isn't", "aren't", "less", "nor", "neither", "don't", "dont", "doesn't", "hates", "avoiding", "skipping",
    "exclude", "no-one", "nope", "non", "sans", "avoid", "dislike", "hated", "nix", "shouldn't", "mustn't",
})
_RUNTIME_WORDS = {"short": "short", "quick": "short", "brief": "short", "long": "long", "lengthy": "long",
                  "shortish": "short", "not too long": "not long", "epic length": "long", "longish": "long"}
_ERA_WORDS = {"recent": "recent", "new": "recent", "latest": "recent", "modern": "recent", "brand new": "recent",
              "contemporary": "recent", "classic": "old", "classics": "old", "old": "old", "vintage": "old",
              "old-school": "old", "old school": "old", "oldies": "old", "golden age": "old", "older": "old",
              "old-fashioned": "old", "newer": "recent", "newest": "recent", "most recent": "recent",
              "new releases": "recent", "new release": "recent", "oldest": "old"}
_HEDGES = frozenset({"maybe", "perhaps", "preferably", "ideally", "possibly", "probably", "then", "instead", "rather"})
_UNKNOWN_REACH = 2  # words the parser does not know that may stand between a negator and its word


@dataclass(frozen=True, slots=True)
class _Hit:
    start: int  # token positions [start, end)
    end: int
    category: str  # genre, tone, kind, runtime, era
    value: str | tuple[str, ...]


_FAMILY = {"genre": "content", "tone": "content", "kind": "kind", "runtime": "runtime", "era": "era"}


_Entry = tuple[str, "str | tuple[str, ...]"]  # (category, value)
_PhraseTable = dict[tuple[str, ...], tuple[_Entry, ...]]


def _phrase_table(facts: CatalogFacts) -> _PhraseTable:
    """Every phrase the word pass knows, for one catalog (its own genre names included); built
    once per catalog and kept on its facts."""
    cached: _PhraseTable | None = facts.__dict__.get("_phrase_table")
    if cached is not None:
        return cached
    table: _PhraseTable = {}
    sources: list[tuple[str, dict[str, str] | dict[str, tuple[str, ...]]]] = [
        ("era", _ERA_WORDS), ("runtime", _RUNTIME_WORDS), ("kind", KIND_WORDS), ("tone", TONE_WORDS),
        ("genre", facts.genre_words)]
    for cat, source in sources:
        for phrase, value in source.items():  # later sources win: "romantic" is a genre word
            table[tuple(_TOKEN.findall(phrase))] = ((cat, value),)
    for phrase, entries in COMPOUND_WORDS.items():
        table[tuple(_TOKEN.findall(phrase))] = entries
    # a genre phrase that holds a kind word ("war movie", "crime shows") says the kind too
    for key, entries in list(table.items()):
        kinds = [KIND_WORDS[w] for w in key if w in KIND_WORDS]
        if len(key) > 1 and kinds and all(cat == "genre" for cat, _ in entries):
            table[key] = (*entries, ("kind", kinds[-1]))
    facts.__dict__["_phrase_table"] = table
    return table


def _scan(tokens: list[str], table: _PhraseTable) -> list[_Hit]:
    longest = max(len(k) for k in table)
    hits: list[_Hit] = []
    i = 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            entries = table.get(tuple(tokens[i:i + n]))
            if entries is not None:
                hits += [_Hit(i, i + n, cat, value) for cat, value in entries]
                i += n
                break
        else:
            i += 1
    return hits


def _list_continues(tokens: list[str], after: int, family: str, covered: dict[int, str]) -> bool:
    """After a comma-joined word: does the list go on to an "or"/"nor"/"and" ("no horror, war or
    romance")? Then the comma joined a list, not two phrases."""
    k = after
    while k < len(tokens):
        tok = tokens[k]
        if k in covered and covered[k] == family:
            k += 1
            continue
        if tok in ("or", "nor", "and", "&", "/"):
            return k + 1 < len(tokens) and covered.get(k + 1) == family
        if tok == "," or tok in FILLERS:
            k += 1
            continue
        return False
    return False


def _negated(hit: _Hit, tokens: list[str], covered: dict[int, str], readings: list[str]) -> bool:
    """True when a negator governs ``hit`` within its phrase.

    Between the negator and the word may stand fillers ("not too dark"), a few words the parser
    does not know ("no mushy romance"), and other words of the same family joined by a connector
    ("no romance or horror"). A clause break ("but", ".") ends the reach, and so does a new phrase
    after "and" or a comma ("no romance, something funny"). A comma alone between two genre words
    ("no romance, horror") is read as the start of a new phrase unless the list goes on to an "or"
    ("no romance, horror or war"); that reading is said.
    """
    j = hit.start - 1
    family = _FAMILY[hit.category]
    joined = False  # a connector since the last hit: "no romance or horror", not "non-violent action"
    unknown = 0
    comma_join: int | None = None  # position of a comma that alone joins this word to an earlier one
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
            nxt = tokens[j + 1] if j + 1 < len(tokens) else ""
            if tok in ("and", ",") and nxt in SCOPE_STARTERS and j + 1 != hit.start:
                return False
            if tok == "," and not joined and j + 1 == hit.start:
                comma_join = j
            joined = True
            j -= 1
            continue
        if tok in _NEGATOR_TOKENS:
            if tok == "no" and j + 1 < len(tokens) and tokens[j + 1] in {",", ".", "!", "§", ";", ":"}:
                return False  # "no, something newer": an interjection
            if comma_join is not None and not _list_continues(tokens, hit.end, family, covered):
                phrase = re.sub(r" ([,;:])", r"\1", " ".join(tokens[j:hit.end]))
                readings.append(f"read '{phrase}' as {tokens[hit.start]} wanted; the '{tok}' only reaches the "
                                f"word before the comma (say '{tok} {' '.join(tokens[hit.start:hit.end])}' to leave "
                                f"it out too)")
                return False
            return True
        if tok in CLAUSE_BREAKS or tok == "§":
            return False
        if tok in FILLERS:
            j -= 1
            continue
        if tok in _HEDGES or tok[0].isdigit():  # "no horror maybe a thriller"
            return False
        unknown += 1  # a word the parser does not know, or a function word: "never liked horror"
        if unknown > _UNKNOWN_REACH:
            return False
        j -= 1
    return False


_POSTPOSED = re.compile(POSTPOSED_NEGATION)


def _run_end(hit: _Hit, hits: list[_Hit], tokens: list[str]) -> int:
    """Where the list ``hit`` starts ends ("romance and horror are out": after "horror")."""
    end = hit.end
    family = _FAMILY[hit.category]
    for other in hits:
        if other.start < end or _FAMILY[other.category] != family:
            continue
        between = tokens[end:other.start]
        if between and all(t in CONNECTORS or t in FILLERS for t in between) and any(t in CONNECTORS for t in between):
            end = other.end
        elif not between:
            end = other.end
        else:
            break
    return end


def _post_negated(hit: _Hit, hits: list[_Hit], tokens: list[str]) -> bool:
    """ "romance? no thanks", "horror is out", "musicals are not my thing"."""
    end = _run_end(hit, hits, tokens)
    rest = " ".join(tokens[end:end + 8])
    rest = re.sub(r"\s+([,.;:!?])", r"\1", rest)
    return bool(_POSTPOSED.match(" " + rest if rest and rest[0].isalnum() else rest))


def _allowed(hit: _Hit, tokens: list[str]) -> bool:
    """ "romance is fine", "ok with horror": the genre is allowed again, not asked for."""
    after = " ".join(tokens[hit.end:hit.end + 4])
    before = " ".join(tokens[max(0, hit.start - 3):hit.start])
    return bool(_ALLOW_AFTER.search(after) or _ALLOW_BEFORE.search(before))


def _genre_names(canonicals: Sequence[str], facts: CatalogFacts, out: ParsedMessage, ask: bool,
                 said: str) -> list[str]:
    names: list[str] = []
    for c in canonicals:
        found = facts.genres_for(c)
        if not found and ask:
            out.notes.append(f"this catalog has no '{c}' genre; that part was ignored")
            out.unapplied.append(Unapplied(phrase=said, reason=f"{facts.name} has no '{c}' genre"))
        names += found
    return names


def _apply_words(t: MaskedText, facts: CatalogFacts, out: ParsedMessage) -> set[int]:
    """The word pass; returns the token positions it used (for the leftover check)."""
    tokens = _TOKEN.findall(t.s)
    hits = _scan(tokens, _phrase_table(facts))
    covered = {k: _FAMILY[h.category] for h in hits for k in range(h.start, h.end)}
    positive_genres: list[tuple[_Hit, list[str]]] = []
    latest = facts.latest_year
    negated_spans: set[tuple[int, int]] = set()
    for hit in sorted(hits, key=lambda h: (h.start, h.category == "kind")):
        said = " ".join(tokens[hit.start:hit.end])
        neg = _negated(hit, tokens, covered, out.readings) or _post_negated(hit, hits, tokens)
        if hit.category != "kind" and neg:
            negated_spans.add((hit.start, hit.end))
        if hit.category == "kind" and any(h is not hit and (h.start, h.end) == (hit.start, hit.end) for h in hits):
            # the kind of a genre phrase ("war movies", "sitcom"): said with the genre, not negated
            # with it ("no war movies" is no war, not "no films"; "no sitcoms" leaves the kind open)
            if (hit.start, hit.end) in negated_spans:
                continue
            neg = False
        if hit.category == "genre":
            assert isinstance(hit.value, tuple)
            if _allowed(hit, tokens):
                out.allow_genres += _genre_names(hit.value, facts, out, False, said)
            elif neg:
                out.exclude_genres += _genre_names(hit.value, facts, out, False, said)
            else:
                positive_genres.append((hit, _genre_names(hit.value, facts, out, True, said)))
        elif hit.category == "tone":
            tone = TONES[str(hit.value)]
            if not neg:
                out.tones.append(tone.name)
                out.include_genres += _genre_names(tone.genres, facts, out, True, said)
            elif tone.negation:
                out.tones.append(tone.negation)
                out.exclude_genres += _genre_names(tone.genres, facts, out, False, said)
            elif tone.genres:
                out.exclude_genres += _genre_names(tone.genres, facts, out, False, said)
            else:
                out.unapplied.append(Unapplied(phrase=f"not {said}", reason="there is no opposite of this tone to "
                                                                              "filter by"))
        elif hit.category == "kind":
            kind = str(hit.value)
            if neg:
                kind = "film" if kind == "episode" else "episode"
            if kind == "episode" or facts.has_episodes:  # "movie" says nothing on a films-only catalog
                out.kind = kind
        elif hit.category == "runtime":
            if hit.value == "not long":
                out.runtime = (out.runtime[0], NOT_TOO_LONG_MAX_MIN)
            elif hit.value == "short":
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
    return set(covered)


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


# --- what is left -------------------------------------------------------------------------------

_GLUE = frozenset({"and", "of", "by", "the", "with", "in", "on", "about", "&", "starring", "from", "set", "a", "an"})
_KNOWN = (STOPWORDS | FILLERS | SCOPE_STARTERS | CLAUSE_BREAKS | CONNECTORS | _NEGATOR_TOKENS
          | frozenset({"§", "like", "than", "please", "short", "long", "minutes", "minute", "mins", "hours", "hour",
                       "year", "years", "decade", "era", "ago", "older", "newer", "earlier", "later", "released",
                       "came", "made", "era", "fine", "ok", "okay", "matter", "doesn't", "limit", "genre", "length",
                       "runtime", "also", "too", "either", "neither", "thanks", "less", "more", "most"}))


def _leftovers(t: MaskedText, used: set[int]) -> list[str]:
    """Runs of words no pass used and that are not function words ("tom hanks", "subtitles")."""
    tokens = _TOKEN.findall(t.s)
    phrases: list[str] = []
    run: list[str] = []
    for k, tok in enumerate(tokens + ["§"]):
        content = k not in used and tok not in _KNOWN and not re.fullmatch(r"[,.;:!?/&§]", tok)
        if content:
            run.append(tok)
        elif run and tok in _GLUE and k not in used:
            run.append(tok)
        else:
            while run and run[-1] in _GLUE:
                run.pop()
            if run:
                phrases.append(" ".join(run))
            run = []
    return phrases


def _short(phrase: str, limit: int = 60) -> str:
    return phrase if len(phrase) <= limit else phrase[:limit].rsplit(" ", 1)[0] + " ..."


# --- entry point ----------------------------------------------------------------------------


def parse_message(text: str, facts: CatalogFacts, shown: Sequence[int] = ()) -> ParsedMessage:
    """What ``text`` asks for, on its own. ``shown``: item ids of the previous answer, for
    "the second one"."""
    out = ParsedMessage()
    t = MaskedText(normalise(text))
    out.reset = bool(_RESET.search(t.s))
    for m in t.finditer(_RESET):
        t.consume(m.start(), m.end())
    out.additive = bool(_ADDITIVE.search(t.s))
    for what, pattern in _CLEAR:
        for m in t.finditer(pattern):
            out.clear.append(what)
            t.consume(m.start(), m.end())
    unapplied: list[tuple[str, str]] = []
    out.anchors = parse_anchors(t, facts, shown, out.notes, unapplied)
    t.s = rewrite_numbers(rewrite_negations(t.s))
    found = Readings()
    out.runtime = parse_runtime(t, found)
    out.years = parse_era(t, YearSpan(facts.earliest_year, facts.latest_year), found)
    unapplied += found.unapplied
    out.readings += found.readings
    for name, pattern in _RELATIVE:
        for m in t.finditer(pattern):
            out.relative.append(name)
            t.consume(m.start(), m.end())
    runtime, years = out.runtime, out.years
    out.runtime, out.years = (None, None), (None, None)
    used = _apply_words(t, facts, out)
    out.runtime = (runtime[0] if runtime[0] is not None else out.runtime[0],
                   runtime[1] if runtime[1] is not None else out.runtime[1])
    out.years = (years[0] if years[0] is not None else out.years[0],
                 years[1] if years[1] is not None else out.years[1])
    out.unapplied = [Unapplied(phrase=_short(p), reason=r) for p, r in unapplied] + out.unapplied
    for phrase in map(_short, _leftovers(t, used)):
        if not any(phrase in u.phrase or u.phrase in phrase for u in out.unapplied):
            out.unapplied.append(Unapplied(phrase=phrase, reason="not understood; no constraint was made from it"))
    for attr in ("include_genres", "any_genres", "exclude_genres", "allow_genres", "tones"):
        setattr(out, attr, sorted(set(getattr(out, attr))))
    out.relative = sorted(set(out.relative))
    out.clear = sorted(set(out.clear))
    return out
