"""Runtimes and release years in words: "under 90 minutes", "an hour and a half", "1h30 max",
"from the 80s", "late 90s", "before 2000", "between 1990 and 1995", "the 80s or 90s".

Each parser returns ``(low, high)`` bounds and masks what it read. Number words were rewritten
as digits before (:mod:`.number_words`), so "under ninety minutes" arrives as "under 90 minutes".
Words without numbers ("short", "recent") are read later by the word pass, since they can be
negated.

Comparison direction: a comparison is read with the negation before it in its clause, so
"nothing over an hour and a half" is *at most* 90 minutes, "not older than 1990" is *from* 1990
and "nothing after 2000" is *up to* 2000. A negated period ("nothing from the 80s") cannot be
expressed as one range; it is reported, not turned into its opposite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from outerloop.conversation.lexicon import ABOUT_SLACK_MIN, DECADE_WORDS, GENRE_WORDS, NUMBER_WORDS, TONE_WORDS
from outerloop.conversation.masking import MaskedText

Bound = tuple[int | None, int | None]

_NUM = r"(?:\d+(?:\.\d+)?|an?|one|two|three|four)"
_DURATION = (
    r"(?:(?P<h1>\d+|an?|one)\s*h(?:ours?|rs?)?(?![a-z])\s*(?:and\s*)?(?P<m1>\d+)\s*(?:m(?:in(?:ute)?s?)?\b)?"
    r"|(?P<hh>an?|one|two|three|\d+)\s+(?:hours?|hrs?)\s+and\s+a\s+half"
    r"|(?P<hq>an?|one|two|three|\d+)\s+(?:hours?|hrs?)\s+and\s+(?P<q>a|1|3)\s+quarters?"
    r"|(?P<hh2>one|two|three|\d+)\s+and\s+a\s+half\s+(?:hours?|hrs?)"
    r"|(?P<half>half\s+an\s+hour)"
    rf"|(?:a\s+couple\s+of\s+|couple\s+of\s+)?(?P<h>{_NUM})\s*(?:hours?|hrs?|h)\b"
    r"|(?P<m>\d+)\s*(?:minutes?|mins?|m)\b)"
)
# a bare number after a comparison ("under 90"): read as minutes when it is a plausible runtime
_BARE_MIN, _BARE_MAX = 30, 300


@dataclass
class Readings:
    """What the quantity passes decided where a phrase had two readings, and what they could
    not express (both reported to the user)."""

    readings: list[str] = field(default_factory=list)
    unapplied: list[tuple[str, str]] = field(default_factory=list)  # (phrase, reason)


def _number(word: str) -> float:
    return float(NUMBER_WORDS[word]) if word in NUMBER_WORDS else float(word)


def duration_minutes(m: re.Match[str], prefix: str = "") -> int:
    """Minutes of a :data:`_DURATION` match whose groups carry ``prefix`` (when a pattern holds two)."""
    g = {k[len(prefix):]: v for k, v in m.groupdict().items() if k.startswith(prefix) and v is not None}
    if "h1" in g:
        return int(_number(g["h1"])) * 60 + int(g["m1"])
    if "hh" in g:
        return int(round((_number(g["hh"]) + 0.5) * 60))
    if "hq" in g:
        return int(round((_number(g["hq"]) + (0.75 if g["q"] == "3" else 0.25)) * 60))
    if "hh2" in g:
        return int(round((_number(g["hh2"]) + 0.5) * 60))
    if "half" in g:
        return 30
    if "h" in g:
        hours = 2.0 if "couple" in m.group(0) else _number(g["h"])
        return int(round(hours * 60))
    if "bare" in g:
        return int(g["bare"])
    return int(g["m"])


def _dur(prefix: str, bare: bool = False) -> str:
    """The duration pattern with its group names prefixed (a pattern may hold two durations);
    ``bare``: a number without a unit counts too ("under 90")."""
    pattern = re.sub(r"\(\?P<(\w+)>", rf"(?P<{prefix}\1>", _DURATION)
    if bare:
        pattern = pattern[:-1] + rf"|(?P<{prefix}bare>\d{{2,3}})(?![\d.:]|\s*(?:'?s\b|%|st\b|nd\b|rd\b|th\b)))"
    return pattern


# comparison words: "max" (at most), "min" (at least); a negation before them flips them
_MAX_WORDS = (r"under|less\s+than|fewer\s+than|below|at\s+most|no\s+(?:more|longer)\s+than|not\s+(?:more|longer)\s+than"
              r"|shorter\s+than|max(?:imum)?|up\s+to|within|not\s+over|no\s+longer\s+than|tops|not\s+exceeding|<|≤")
_MIN_WORDS = (r"over|more\s+than|longer\s+than|at\s+least|minimum|min|above|no\s+(?:less|shorter)\s+than|exceeding"
              r"|upwards\s+of|in\s+excess\s+of|past|beyond|>|≥")
_POST_MAX = r"or\s+(?:less|shorter|under|below)|max(?:imum)?|tops|at\s+most|at\s+the\s+most|or\s+so\s+max|long\s+max"
_POST_MIN = r"or\s+(?:more|longer|over|above)|plus|\+|minimum|at\s+least|and\s+up|or\s+upwards"
_RUNTIME_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("range", re.compile(rf"\bbetween\s+(?:{_dur('a')}|(?P<anum>\d+))\s+and\s+{_dur('b')}")),
    ("range", re.compile(rf"\bfrom\s+{_dur('a')}\s+to\s+{_dur('b')}")),
    ("range", re.compile(rf"{_dur('a')}\s*(?:to|-)\s*{_dur('b')}")),
    ("range", re.compile(rf"\b(?P<anum>\d+)\s*(?:to|-)\s*{_dur('b')}")),
    ("max", re.compile(rf"(?:\b|(?<=[<≤]))(?:{_MAX_WORDS})\s*(?:an?\s+)?{_dur('a')}")),
    ("max", re.compile(rf"{_dur('a')}\s*(?:long\s+)?(?:{_POST_MAX})(?:\b|(?<=\+))")),
    ("max", re.compile(r"\b(?:doesn't|don't|does\s+not|do\s+not|no|not|nothing)\s+(?:\w+\s+)?(?:exceed|exceeds|exceeding"
                       rf"|run\s+(?:over|past|longer\s+than)|go\s+(?:over|past|beyond))\s+(?:an?\s+)?{_dur('a')}")),
    ("min", re.compile(rf"(?:\b|(?<=[>≥]))(?:{_MIN_WORDS})\s*(?:an?\s+)?{_dur('a')}")),
    ("min", re.compile(rf"{_dur('a')}\s*(?:long\s+)?(?:{_POST_MIN})(?:\b|(?<=\+)|$)")),
    ("about", re.compile(rf"\b(?:about|around|roughly|approximately|approx\.?|circa|~|more\s+or\s+less|give\s+or\s+take)"
                         rf"\s*(?:an?\s+)?{_dur('a')}")),
    ("about", re.compile(rf"{_dur('a')}\s+or\s+so\b")),
    ("about", re.compile(rf"(?:\ban?\s+)?{_dur('a')}(?:(?:\s+|-)long\b|(?=(?:\s+|-)(?:movies?|films?|shows?|episodes?"
                         r"|runtime|features?|flicks?|ones?)\b))")),
    # a duration alone ("a comedy, 90 minutes"): about that long, and the reading is said
    ("alone", re.compile(rf"(?<![\w-]){_dur('a')}")),
    # a comparison with a bare number: "under 90", "nothing over 120" (minutes; the reading is said)
    ("max_bare", re.compile(rf"(?:\b|(?<=[<≤]))(?:{_MAX_WORDS})\s*{_dur('a', bare=True)}")),
    ("min_bare", re.compile(rf"(?:\b|(?<=[>≥]))(?:{_MIN_WORDS})\s*{_dur('a', bare=True)}")),
)

# a negation that governs the comparison after it, in the same clause: "nothing over", "no older than"
_NEGATOR = re.compile(r"\b(?:no|not|nothing|never|none|without|don't|dont|doesn't|isn't|aren't|shouldn't|can't"
                      r"|cannot|mustn't|won't|neither)\b")
_CLAUSE_END = re.compile(r"[,.;:!?§]|\b(?:but|and|or|though|although|however|just)\b")
_CONTENT_WORDS = frozenset(GENRE_WORDS) | frozenset(TONE_WORDS)
_NEGATION_REACH_WORDS = 5


def negated_before(s: str, start: int) -> bool:
    """True when a negation in the same clause, a few words before ``start``, governs what starts
    there ("nothing made after 2000"), and no genre or tone word stands between them (in "no
    horror over 2 hours" the negation is the horror's)."""
    before = s[max(0, start - 60):start]
    cut = list(_CLAUSE_END.finditer(before))
    if cut:
        before = before[cut[-1].end():]
    words = before.split()[-_NEGATION_REACH_WORDS:]
    for i in range(len(words) - 1, -1, -1):
        if _NEGATOR.fullmatch(words[i]):
            between = words[i + 1:]
            return not any(w in _CONTENT_WORDS for w in between)
    return False


MAX_RUNTIME_MIN = 1000  # what Constraints accepts


def _minutes_out_of_range(m: re.Match[str], prefix: str) -> bool:
    if not any(v is not None and k.startswith(prefix) for k, v in m.groupdict().items()):
        return False
    try:
        x = duration_minutes(m, prefix)
    except (KeyError, ValueError):
        return False
    return not 1 <= x <= MAX_RUNTIME_MIN


def parse_runtime(t: MaskedText, notes: Readings | None = None) -> Bound:
    """Runtime bounds in minutes."""
    notes = notes if notes is not None else Readings()
    lo: int | None = None
    hi: int | None = None
    said: list[str] = []
    for kind, pattern in _RUNTIME_PATTERNS:
        for m in t.finditer(pattern):
            if any(_minutes_out_of_range(m, p) for p in ("a", "b")):
                notes.unapplied.append((m.group(0).strip(), f"a runtime must be 1 to {MAX_RUNTIME_MIN} minutes"))
                t.consume(m.start(), m.end())
                continue
            if kind.endswith("_bare"):
                if m.groupdict().get("abare") is not None:
                    x = int(m.group("abare"))
                    if not _BARE_MIN <= x <= _BARE_MAX:
                        continue
                    notes.readings.append(f"read '{m.group(0).strip()}' as {x} minutes")
                kind = kind[:-5]
            if kind == "range":
                b = duration_minutes(m, "b")
                anum = m.groupdict().get("anum")
                if anum is None:
                    a = duration_minutes(m, "a")
                elif m.group("bm") is None:  # the unit is the second number's: "1 to 2 hours"
                    a = int(round(_number(anum) * 60))
                else:
                    a = int(anum)
                lo, hi = min(a, b), max(a, b)
            elif kind in ("max", "min"):
                x = duration_minutes(m, "a")
                flip = negated_before(t.s, m.start()) and not re.match(r"\s*(?:no|not|nothing|doesn't|don't|does|do)\b",
                                                                     m.group(0))
                if (kind == "max") != flip:
                    hi = x
                else:
                    lo = x
            else:
                x = duration_minutes(m, "a")
                lo, hi = max(1, x - ABOUT_SLACK_MIN), x + ABOUT_SLACK_MIN
                if kind == "alone":
                    notes.readings.append(f"read '{m.group(0).strip()}' as about that long ({lo}-{hi} minutes); "
                                          "say 'under' or 'at least' for a bound")
            said.append(m.group(0).strip())
            t.consume(m.start(), m.end())
    for x in (lo, hi):
        if x is not None and not 1 <= x <= MAX_RUNTIME_MIN:
            notes.unapplied.append((", ".join(said), f"a runtime must be 1 to {MAX_RUNTIME_MIN} minutes"))
            return None, None
    return lo, hi


# --- years and decades --------------------------------------------------------------------------

YEAR = r"(?:19|20)\d\d"
_DECADE = (r"(?:the\s+)?(?P<part>early|late|mid)?[\s-]*(?:(?<!\d)'?(?P<d2>\d)0'?s\b|(?P<d4>(?:19|20)\d0)'?s\b"
           r"|(?P<dw>" + "|".join(DECADE_WORDS) + r")\b)")


@dataclass(frozen=True, slots=True)
class YearSpan:
    """The catalog's years (for two-digit decades: "the 20s" is the 1920s on MovieLens)."""

    earliest: int | None = None
    latest: int | None = None


def _century(tens: int, span: YearSpan, said: str, notes: Readings) -> int:
    """The start of the decade ``tens`` (0..9) said without a century ("the 20s", "the twenties")."""
    old, new = 1900 + tens * 10, 2000 + tens * 10
    if span.earliest is None or span.latest is None:
        return new if tens <= 2 else old
    has_old = span.earliest <= old + 9 and old <= span.latest
    has_new = span.earliest <= new + 9 and new <= span.latest
    if has_old and has_new:
        notes.readings.append(f"read '{said.strip()}' as the {new}s (say '{old}s' for the other one)")
        return new
    return new if has_new else old


def _decade_bounds(m: re.Match[str], span: YearSpan, notes: Readings, prefix: str = "") -> Bound:
    if m.group(prefix + "d4"):
        start = int(m.group(prefix + "d4"))
    elif m.group(prefix + "d2"):
        d = int(m.group(prefix + "d2"))
        start = _century(d, span, m.group(0), notes) if d <= 2 else 1900 + d * 10
    else:
        start = DECADE_WORDS[m.group(prefix + "dw")]
        if start in (1900, 1910, 1920):
            start = _century((start - 1900) // 10, span, m.group(0), notes)
    part = m.group(prefix + "part")
    if part == "early":
        return start, start + 3
    if part == "mid":
        return start + 3, start + 6
    if part == "late":
        return start + 6, start + 9
    return start, start + 9


_YY = r"'(?P<yy>\d\d)(?!\d|'?s\b)"
_WHEN = rf"(?:(?P<year>{YEAR})\b|{_YY}|{_DECADE})"
_DECADE_B = re.sub(r"\(\?P<(\w+)>", r"(?P<b_\1>", _DECADE)
_BEFORE = r"before|pre-?|earlier\s+than|older\s+than|prior\s+to|made\s+before|released\s+before"
_AFTER = r"after|post-?|later\s+than|newer\s+than|more\s+recent\s+than|younger\s+than"
_ERA_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("decades", re.compile(rf"{_DECADE}\s*(?:or|and|to|through|-)\s*{_DECADE_B}")),
    ("range", re.compile(rf"\b(?:between|from)\s+(?P<y1>{YEAR})\s+(?:and|to|till|until)\s+(?P<y2>{YEAR})\b")),
    ("range", re.compile(rf"\b(?P<y1>{YEAR})\s*(?:-|to)\s*(?P<y2>{YEAR})\b")),
    ("before", re.compile(rf"\b(?:{_BEFORE})\s*(?:the\s+year\s+)?{_WHEN}")),
    ("until", re.compile(rf"\b(?:until|till|through|up\s+to|by|no\s+later\s+than|not\s+later\s+than"
                         rf"|no\s+newer\s+than|not\s+newer\s+than|at\s+the\s+latest)\s+{_WHEN}")),
    ("until", re.compile(rf"{_WHEN}\s+(?:or|and)\s+(?:earlier|before|older)\b")),
    ("not_before", re.compile(rf"\b(?:no\s+earlier\s+than|not\s+earlier\s+than|no\s+older\s+than|not\s+older\s+than"
                              rf"|not\s+before)\s+{_WHEN}")),
    ("after", re.compile(rf"\b(?:{_AFTER})\s*(?:the\s+year\s+)?{_WHEN}")),
    ("since", re.compile(rf"\b(?:since|starting(?:\s+(?:in|from))?|from)\s+{_WHEN}\s+(?:on(?:wards?)?|and\s+up)\b")),
    ("since", re.compile(rf"\b(?:since|starting(?:\s+(?:in|from))?|as\s+of|at\s+the\s+earliest)\s+{_WHEN}")),
    ("since", re.compile(rf"{_WHEN}\s*(?:(?:or|and)\s+(?:later|newer|after|up|beyond)\b|onwards?\b|\+|and\s+on\b)")),
    ("in", re.compile(rf"\b(?:in|from|of|made\s+in|released\s+in|out\s+in|came\s+out\s+in)\s+{_WHEN}")),
    ("in", re.compile(_WHEN)),
)
_CENTURY = (
    (re.compile(r"\b(?:this|21st|the\s+21st)\s+century\b"), (2000, None)),
    (re.compile(r"\b(?:last|20th|the\s+20th)\s+century\b"), (None, 1999)),
)


def _when_bounds(m: re.Match[str], span: YearSpan, notes: Readings) -> Bound:
    if m.groupdict().get("year"):
        y = int(m.group("year"))
        return y, y
    if m.groupdict().get("yy"):
        yy = int(m.group("yy"))
        y = 2000 + yy if span.latest is not None and 2000 + yy <= span.latest else 1900 + yy
        return y, y
    return _decade_bounds(m, span, notes)


def parse_era(t: MaskedText, span: YearSpan | None = None, notes: Readings | None = None) -> Bound:
    """Release-year bounds."""
    span = span or YearSpan()
    notes = notes if notes is not None else Readings()
    lo: int | None = None
    hi: int | None = None
    for pattern, (a, b) in _CENTURY:
        for m in t.finditer(pattern):
            lo, hi = a if a is not None else lo, b if b is not None else hi
            t.consume(m.start(), m.end())
    for kind, pattern in _ERA_PATTERNS:
        for m in t.finditer(pattern):
            flip = negated_before(t.s, m.start())
            if kind == "range":
                y1, y2 = int(m.group("y1")), int(m.group("y2"))
                new = (min(y1, y2), max(y1, y2))
            elif kind == "decades":  # "the 80s or 90s": both, as one range
                a, b = _decade_bounds(m, span, notes), _decade_bounds(m, span, notes, "b_")
                new = (min(a[0] or 0, b[0] or 0), max(a[1] or 0, b[1] or 0))
            else:
                first, last = _when_bounds(m, span, notes)
                if kind == "before":  # "nothing before 1980": from 1980 on
                    new = (first, None) if flip else (None, (first or 0) - 1)
                elif kind == "until":
                    new = (None, last)
                elif kind == "not_before":
                    new = (first, None)
                elif kind == "after":  # "nothing after 2000": up to 2000
                    new = (None, last) if flip else ((last or 0) + 1, None)
                elif kind == "since":
                    new = (first, None)
                else:
                    new = (first, last)
            if flip and kind in ("range", "decades", "in"):
                said = m.group(0).strip()
                notes.unapplied.append((said, "leaving out one period is not supported; say 'before ...' or "
                                              "'after ...' instead"))
                t.consume(m.start(), m.end())
                continue
            lo = new[0] if new[0] is not None else lo
            hi = new[1] if new[1] is not None else hi
            t.consume(m.start(), m.end())
    return lo, hi
