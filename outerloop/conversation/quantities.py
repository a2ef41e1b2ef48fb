"""Runtimes and release years in words: "under 90 minutes", "an hour and a half", "1h30 max",
"from the 80s", "late 90s", "before 2000", "between 1990 and 1995", "the 80s or 90s".

Each parser returns ``(low, high)`` bounds and masks what it read. Words without numbers
("short", "recent") are read later by the word pass, since they can be negated.
"""

from __future__ import annotations

import re

from outerloop.conversation.lexicon import ABOUT_SLACK_MIN, DECADE_WORDS, NUMBER_WORDS
from outerloop.conversation.masking import MaskedText

Bound = tuple[int | None, int | None]

_NUM = r"(?:\d+(?:\.\d+)?|an?|one|two|three|four)"
_DURATION = (
    r"(?:(?P<h1>\d+)\s*h(?:ours?|rs?)?\s*(?:and\s*)?(?P<m1>\d+)\s*(?:m(?:in(?:ute)?s?)?\b)?"
    r"|(?P<hh>an?|one|two|three|\d+)\s+(?:hours?|hrs?)\s+and\s+a\s+half"
    r"|(?P<hh2>one|two|three|\d+)\s+and\s+a\s+half\s+(?:hours?|hrs?)"
    r"|(?P<half>half\s+an\s+hour)"
    rf"|(?:a\s+couple\s+of\s+|couple\s+of\s+)?(?P<h>{_NUM})\s*(?:hours?|hrs?|h)\b"
    r"|(?P<m>\d+)\s*(?:minutes?|mins?|m)\b)"
)


def _number(word: str) -> float:
    return float(NUMBER_WORDS[word]) if word in NUMBER_WORDS else float(word)


def duration_minutes(m: re.Match[str], prefix: str = "") -> int:
    """Minutes of a :data:`_DURATION` match whose groups carry ``prefix`` (when a pattern holds two)."""
    g = {k[len(prefix):]: v for k, v in m.groupdict().items() if k.startswith(prefix) and v is not None}
    if "h1" in g:
        return int(g["h1"]) * 60 + int(g["m1"])
    if "hh" in g:
        return int(round((_number(g["hh"]) + 0.5) * 60))
    if "hh2" in g:
        return int(round((_number(g["hh2"]) + 0.5) * 60))
    if "half" in g:
        return 30
    if "h" in g:
        hours = 2.0 if "couple" in m.group(0) else _number(g["h"])
        return int(round(hours * 60))
    return int(g["m"])


def _dur(prefix: str) -> str:
    """The duration pattern with its group names prefixed (a pattern may hold two durations)."""
    return re.sub(r"\(\?P<(\w+)>", rf"(?P<{prefix}\1>", _DURATION)


_MAX_WORDS = (r"under|less\s+than|below|at\s+most|no\s+(?:more|longer)\s+than|not\s+(?:more|longer)\s+than"
              r"|shorter\s+than|max(?:imum)?|up\s+to|within|not\s+over|no\s+longer\s+than|<")
_MIN_WORDS = r"over|more\s+than|longer\s+than|at\s+least|minimum|above|no\s+(?:less|shorter)\s+than|>"
_RUNTIME_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("range", re.compile(rf"\bbetween\s+(?:{_dur('a')}|(?P<anum>\d+))\s+and\s+{_dur('b')}")),
    ("range", re.compile(rf"{_dur('a')}\s*(?:to|-)\s*{_dur('b')}")),
    ("range", re.compile(rf"\b(?P<anum>\d+)\s*(?:to|-)\s*{_dur('b')}")),
    ("max", re.compile(rf"(?:\b|(?<=<))(?:{_MAX_WORDS})\s*(?:an?\s+)?{_dur('a')}")),
    ("max", re.compile(rf"{_dur('a')}\s+(?:or\s+(?:less|shorter|under)|max(?:imum)?|tops|at\s+most)\b")),
    ("min", re.compile(rf"(?:\b|(?<=>))(?:{_MIN_WORDS})\s*(?:an?\s+)?{_dur('a')}")),
    ("min", re.compile(rf"{_dur('a')}\s*(?:or\s+(?:more|longer|over)|plus|\+|minimum|at\s+least)")),
    ("about", re.compile(rf"\b(?:about|around|roughly|approximately|~)\s*(?:an?\s+)?{_dur('a')}")),
    ("about", re.compile(rf"(?:\ban?\s+)?{_dur('a')}(?:\s+|-)(?:long\b|movie\b|film\b|show\b|episode\b)")),
)


def parse_runtime(t: MaskedText) -> Bound:
    """Runtime bounds in minutes."""
    lo: int | None = None
    hi: int | None = None
    for kind, pattern in _RUNTIME_PATTERNS:
        for m in t.finditer(pattern):
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
            elif kind == "max":
                hi = duration_minutes(m, "a")
            elif kind == "min":
                lo = duration_minutes(m, "a")
            else:
                x = duration_minutes(m, "a")
                lo, hi = max(1, x - ABOUT_SLACK_MIN), x + ABOUT_SLACK_MIN
            t.consume(m.start(), m.end())
    return lo, hi


# --- years and decades --------------------------------------------------------------------------

YEAR = r"(?:19|20)\d\d"
_DECADE = (r"(?:the\s+)?(?P<part>early|late|mid)?[\s-]*(?:'?(?P<d2>\d)0'?s\b|(?P<d4>(?:19|20)\d0)'?s\b"
           r"|(?P<dw>" + "|".join(DECADE_WORDS) + r")\b)")


def _decade_bounds(m: re.Match[str], prefix: str = "") -> Bound:
    if m.group(prefix + "d4"):
        start = int(m.group(prefix + "d4"))
    elif m.group(prefix + "d2"):
        d = int(m.group(prefix + "d2"))
        start = 2000 + d * 10 if d <= 1 else 1900 + d * 10  # 00s, 10s -> 2000s, 2010s
    else:
        start = DECADE_WORDS[m.group(prefix + "dw")]
    part = m.group(prefix + "part")
    if part == "early":
        return start, start + 3
    if part == "mid":
        return start + 3, start + 6
    if part == "late":
        return start + 6, start + 9
    return start, start + 9


_WHEN = rf"(?:(?P<year>{YEAR})\b|{_DECADE})"
_DECADE_B = re.sub(r"\(\?P<(\w+)>", r"(?P<b_\1>", _DECADE)
_ERA_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("decades", re.compile(rf"{_DECADE}\s*(?:or|and|to|through|-)\s*{_DECADE_B}")),
    ("range", re.compile(rf"\b(?:between|from)\s+(?P<y1>{YEAR})\s+(?:and|to|till|until)\s+(?P<y2>{YEAR})\b")),
    ("range", re.compile(rf"\b(?P<y1>{YEAR})\s*(?:-|to)\s*(?P<y2>{YEAR})\b")),
    ("not_before", re.compile(rf"\b(?:nothing|no|not)\s+(?:\w+\s+)?(?:before|older\s+than|earlier\s+than|prior\s+to)"
                              rf"\s+{_WHEN}")),
    ("not_after", re.compile(rf"\b(?:nothing|no|not)\s+(?:\w+\s+)?(?:after|newer\s+than|later\s+than)\s+{_WHEN}")),
    ("before", re.compile(rf"\b(?:before|pre-?|earlier\s+than|older\s+than|prior\s+to)\s*{_WHEN}")),
    ("until", re.compile(rf"\b(?:until|till|through|up\s+to|by|no\s+later\s+than)\s+{_WHEN}")),
    ("until", re.compile(rf"{_WHEN}\s+(?:or|and)\s+(?:earlier|before|older)\b")),
    ("after", re.compile(rf"\b(?:after|post-?|later\s+than|newer\s+than)\s*{_WHEN}")),
    ("since", re.compile(rf"\b(?:since|starting(?:\s+(?:in|from))?|from)\s+{_WHEN}\s+(?:on(?:wards?)?|and\s+up)\b")),
    ("since", re.compile(rf"\b(?:since|starting(?:\s+(?:in|from))?)\s+{_WHEN}")),
    ("since", re.compile(rf"{_WHEN}\s*(?:(?:or|and)\s+(?:later|newer|after|up)\b|onwards?\b|\+)")),
    ("in", re.compile(rf"\b(?:in|from|of|made\s+in|released\s+in)\s+{_WHEN}")),
    ("in", re.compile(_WHEN)),
)
_CENTURY = (
    (re.compile(r"\b(?:this|21st)\s+century\b"), (2000, None)),
    (re.compile(r"\b(?:last|20th)\s+century\b"), (None, 1999)),
)


def _when_bounds(m: re.Match[str]) -> Bound:
    if m.groupdict().get("year"):
        y = int(m.group("year"))
        return y, y
    return _decade_bounds(m)


def parse_era(t: MaskedText) -> Bound:
    """Release-year bounds."""
    lo: int | None = None
    hi: int | None = None
    for pattern, (a, b) in _CENTURY:
        for m in t.finditer(pattern):
            lo, hi = a if a is not None else lo, b if b is not None else hi
            t.consume(m.start(), m.end())
    for kind, pattern in _ERA_PATTERNS:
        for m in t.finditer(pattern):
            if kind == "range":
                y1, y2 = int(m.group("y1")), int(m.group("y2"))
                lo, hi = min(y1, y2), max(y1, y2)
            elif kind == "decades":  # "the 80s or 90s": both, as one range
                a, b = _decade_bounds(m), _decade_bounds(m, "b_")
                lo, hi = min(a[0] or 0, b[0] or 0), max(a[1] or 0, b[1] or 0)
            else:
                first, last = _when_bounds(m)
                if kind in ("before",):
                    hi = (first or 0) - 1
                elif kind in ("until", "not_after"):
                    hi = last
                elif kind == "after":
                    lo = (last or 0) + 1
                elif kind in ("since", "not_before"):
                    lo = first
                else:
                    lo, hi = first, last
            t.consume(m.start(), m.end())
    return lo, hi

