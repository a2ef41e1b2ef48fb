"""Titles in a message: "like Toy Story", "in the vein of Alien (1979)", "more like the second one".

A trigger phrase ("something like", "similar to", "I loved") is followed by a title span,
which is resolved against the catalog (longest word prefix first, so "toy story under two
hours" resolves "toy story"); "the second one" / "these" point at what the last answer showed.
Unresolved spans are reported, never guessed, and only resolved titles become anchors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from outerloop.conversation.catalog_facts import CatalogFacts
from outerloop.conversation.constraints import TitleRef
from outerloop.conversation.lexicon import FILLERS, GENRE_WORDS, KIND_WORDS, ORDINALS, TONE_WORDS
from outerloop.conversation.masking import MaskedText, rewrite_negations
from outerloop.conversation.quantities import YEAR, negated_before

_TRIGGER = re.compile(
    r"(?:\b(?:more|something|anything|nothing|stuff|movies?|films?|shows?|things?|titles?|ones?|similar|kind\s+of|sort\s+of"
    r"|vibes?|closer\s+to)\s+(?:just\s+|a\s+bit\s+|a\s+little\s+|more\s+)?like"
    r"|\bsimilar\s+to|\bin\s+the\s+(?:vein|style|spirit)\s+of|\balong\s+the\s+lines\s+of|\breminds?\s+me\s+of"
    r"|\bakin\s+to|\bcomparable\s+to|\b(?:i|we)\s+(?:really\s+)?(?:liked|loved|enjoyed)|^\s*like)\s+")
_ORDINAL_WORDS = "|".join(sorted(ORDINALS, key=len, reverse=True))
# "the second one", "the last", "#3"; not "The Last Samurai" (an ordinal must end the phrase)
_ORDINAL = re.compile(rf"^(?:the\s+)?(?P<ord>{_ORDINAL_WORDS})\b"
                      r"(?:\s+(?:one|title|film|movie|pick|suggestion|result|show)\b"
                      r"|(?=\s*(?:[,.;!?§]|$|\s(?:but|and|with|without|please|though)\b)))"
                      r"|^(?:#\s*|number\s+|no\.\s*)(?P<num>\d{1,2})\b")
_PLURAL_REF = re.compile(r"^(?:these|those|them|the\s+(?:ones|picks|results)\s+(?:above|before))\b")
_SINGULAR_REF = re.compile(r"^(?:that|this|it)(?:\s+one)?\b(?!\s+(?:is|was|'s))")
_TITLE_END = re.compile(r"[,.;!?§]|\s(?:but|though|please|except|without)\b|\s-\s")
_TRAILING_YEAR = re.compile(rf"^\s*(?:\(\s*(?P<p>{YEAR})\s*\)|from\s+(?P<f>{YEAR})\b|(?P<b>{YEAR})\b)")
_ANOTHER_TITLE = re.compile(r"^\s*(?:,|or|and|&)\s+(?:or\s+|and\s+)?")
MAX_TITLE_WORDS = 10
_DANGLING = frozenset({"or", "and", "&", "with", "from", "in", "but", "than", "for", "to", "of", "that", "which",
                       "like"})
PLURAL_REF_ITEMS = 3


def _lexicon_words(text: str) -> bool:
    words = set(re.findall(r"[a-z0-9'\-]+", text))
    return bool(words & (set(GENRE_WORDS) | set(TONE_WORDS)))


def _negated_trigger(s: str, start: int) -> bool:
    """ "I don't want anything like Titanic": the trigger is under a negation in its clause."""
    before = rewrite_negations(s[max(0, start - 80):start])
    return negated_before(before + " ", len(before) + 1)


def parse_anchors(t: MaskedText, facts: CatalogFacts, shown: Sequence[int], notes: list[str],
                  unapplied: list[tuple[str, str]] | None = None) -> list[TitleRef]:
    """Resolved anchors of the message (masked in ``t``); ``shown``: ids of the last answer.
    ``unapplied`` receives (phrase, reason) for titles that could not be used."""
    unapplied = unapplied if unapplied is not None else []
    anchors: list[TitleRef] = []
    for trig in t.finditer(_TRIGGER):
        rest = t.s[trig.end():]
        if not rest.strip() or rest.lstrip().startswith("§"):
            continue
        if trig.group(0).lstrip().startswith("nothing") or _negated_trigger(t.s, trig.start()):
            end = _TITLE_END.search(rest)
            span = rest[: end.start()] if end else rest
            found = _resolve_span(span, facts) if span.strip() else None
            if found is not None:  # "nothing like Titanic": not an anchor, and said so
                title = facts.item(found[0]).title
                unapplied.append((span[:found[1]].strip(), f"steering away from a title ({title}) is not supported; "
                                                            "it was not used"))
                t.consume(trig.start(), trig.end() + found[1])
            continue  # "don't want anything like a musical": the word pass reads the negation
        # "the second one", "these": references to what was shown last turn
        ref = _ORDINAL.match(rest) or _PLURAL_REF.match(rest)
        if ref is None and trig.group(0).startswith("more"):
            ref = _SINGULAR_REF.match(rest)  # "more like that"; "something like that" is a filler
        if ref is not None:
            ids = _shown_refs(ref, shown)
            if not ids:
                notes.append(f"'{ref.group(0).strip()}' refers to an earlier list, but "
                             + (f"it had only {len(shown)} title(s)" if shown else "no titles were shown before"))
            anchors += [TitleRef(title=facts.item(i).title, year=facts.item(i).year, item_id=i) for i in ids]
            t.consume(trig.start(), trig.end() + ref.end())
            continue
        end = _TITLE_END.search(rest)
        span = rest[: end.start()] if end else rest
        if not span.strip():
            continue
        found = _resolve_span(span, facts)
        if found is None:
            if not _lexicon_words(span) and not re.match(r"\s*\d", span):
                notes.append(f"no title matching '{span.strip()[:60]}' in this catalog; ignored")
                unapplied.append((span.strip()[:60], "no such title in this catalog"))
                t.consume(trig.start(), trig.end() + len(span))
            continue
        offset = 0
        while found is not None:  # "like Pulp Fiction or Reservoir Dogs": several anchors
            item_id, used = found
            used += offset
            year_m = _TRAILING_YEAR.match(rest[used:])
            if year_m:  # "like Heat (1995)", "like Alien from 1979": the anchor's year, not an era
                year = int(year_m.group("p") or year_m.group("f") or year_m.group("b"))
                dated = facts.titles.resolve(rest[offset:used], year)
                if dated is not None:
                    item_id = dated
                    used += year_m.end()
            it = facts.item(item_id)
            anchors.append(TitleRef(title=it.title, year=it.year, item_id=item_id))
            t.consume(trig.start(), trig.end() + used)
            more = _ANOTHER_TITLE.match(rest[used:])
            if more is None:
                break
            offset = used + more.end()
            tail = rest[offset:]
            end = _TITLE_END.search(tail)
            found = _resolve_span(tail[: end.start()] if end else tail, facts)
    return anchors


def _shown_refs(ref: re.Match[str], shown: Sequence[int]) -> list[int]:
    if not shown:
        return []
    groups = ref.groupdict()
    if groups.get("ord"):
        idx = ORDINALS[groups["ord"]]
        return [shown[idx]] if -len(shown) <= idx < len(shown) else []
    if groups.get("num"):
        idx = int(groups["num"]) - 1
        return [shown[idx]] if 0 <= idx < len(shown) else []
    if _PLURAL_REF.match(ref.group(0)):
        return list(shown[:PLURAL_REF_ITEMS])
    return [shown[0]]


def _resolve_span(span: str, facts: CatalogFacts) -> tuple[int, int] | None:
    """The item a title span names and how many characters of it the title used.

    The longest word prefix wins ("toy story under two hours" resolves "toy story"). Exact
    matches are tried over every prefix first, then prefix and fuzzy matching, which only run on
    pieces that are more than genre and tone words ("horror movies" is not "Horror Express").
    """
    words = list(re.finditer(r"\S+", span))[:MAX_TITLE_WORDS]
    pieces = [span[:words[n - 1].end()] for n in range(len(words), 0, -1)]
    for piece in pieces:
        if len(piece.strip()) < 3:
            continue
        several = len(piece.split()) > 1
        if (_only_lexicon(piece) and not several) or piece.split()[-1] in _DANGLING:
            continue  # a title does not end in "or" ("pulp fiction or" is not a typo of it)
        item_id = facts.titles.resolve(piece, loose=False)
        if item_id is None and several and not _only_lexicon(piece):
            item_id = facts.titles.resolve(piece, loose=True)  # "star wars", "toy stroy"
        if item_id is not None:
            return item_id, len(piece)
    return None


def _only_lexicon(piece: str) -> bool:
    words = re.findall(r"[a-z0-9'\-]+", piece)
    known = set(GENRE_WORDS) | set(TONE_WORDS) | set(KIND_WORDS) | FILLERS
    return all(w in known for w in words)

