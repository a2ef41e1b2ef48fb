"""Numbers written in words, rewritten as digits before any other pass reads the message.

"ninety minutes" -> "90 minutes", "a hundred and twenty" -> "120", "nineteen eighty-five" ->
"1985", "twenty fifteen" -> "2015", "two thousand and five" -> "2005", "the nineteen-eighties"
-> "the 1980s", "the two thousands" -> "the 2000s". After this the quantity patterns only ever see
digits (plus "an hour and a half", "half an hour", which they read themselves).

"one" becomes "1" only where it counts something ("one hour", "one hundred"): in "the second
one" or "one of those" it is a pronoun.
"""

from __future__ import annotations

import re

UNITS: dict[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
TENS: dict[str, int] = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}
# decades said as a number word in the plural: "the nineteen-eighties", "the two thousands"
_PLURAL_TENS = {w + "ies": v for w, v in (("twent", 20), ("thirt", 30), ("fort", 40), ("fift", 50), ("sixt", 60),
                                          ("sevent", 70), ("eight", 80), ("ninet", 90))}

_NUMBER_WORD = "|".join(sorted([*UNITS, *TENS, "hundred", "thousand", "oh"], key=len, reverse=True))
_WORD = rf"(?:{_NUMBER_WORD})"
# a run of number words, joined by spaces, hyphens or "and" ("a hundred and twenty")
_RUN = re.compile(rf"\b(?:an?\s+(?=(?:hundred|thousand)\b))?{_WORD}(?:(?:\s+and\s+|[\s-]+){_WORD})*\b")
_COUNTED_ONE = re.compile(r"^\s*(?:hours?|hrs?|minutes?|mins?|hundred|thousand|and\s+a\s+half)\b")
_PLURAL_DECADE = re.compile(
    r"\b(?P<head>nineteen|twenty|two\s+thousand)?[\s-]*(?P<tens>" + "|".join(_PLURAL_TENS) + r"|thousands|hundreds)\b")


def _value(words: list[str]) -> int | None:
    """The number a list of number words says, or None when it is not one number
    ("nineteen eighty" is a year: 19 * 100 + 80)."""
    if not words:
        return None
    # years said in two halves: "nineteen eighty(-five)", "twenty fifteen", "nineteen oh five"
    if len(words) >= 2 and words[0] in ("nineteen", "twenty", "eighteen") and words[1] not in ("hundred", "thousand"):
        rest = words[1:]
        if words[0] == "twenty" and len(rest) == 1 and rest[0] in UNITS and UNITS[rest[0]] < 10:
            return 20 + UNITS[rest[0]]  # "twenty five" is 25
        if rest[0] == "oh" and len(rest) == 2 and rest[1] in UNITS and UNITS[rest[1]] < 10:
            return UNITS[words[0]] * 100 + UNITS[rest[1]] if words[0] in UNITS else 2000 + UNITS[rest[1]]
        tail = _small(rest)
        if tail is not None and 10 <= tail <= 99:
            head = UNITS.get(words[0]) or TENS[words[0]]
            return head * 100 + tail
    total, current = 0, 0
    for w in words:
        if w in UNITS:
            if current % 10 or (current and current < 10) or (10 <= current % 100 <= 19):
                return None  # "five six": two numbers, not one
            current += UNITS[w]
        elif w in TENS:
            if current % 100:
                return None
            current += TENS[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w == "thousand":
            total += max(current, 1) * 1000
            current = 0
        else:
            return None
    return total + current


def _small(words: list[str]) -> int | None:
    """1..99 from one or two words ("eighty", "eighty five", "fifteen")."""
    if len(words) == 1:
        return UNITS.get(words[0], TENS.get(words[0]))
    if len(words) == 2 and words[0] in TENS and words[1] in UNITS and 0 < UNITS[words[1]] < 10:
        return TENS[words[0]] + UNITS[words[1]]
    return None


def _replace_run(m: re.Match[str]) -> str:
    text = m.group(0)
    words = [w for w in re.split(r"[\s-]+", text) if w and w != "and"]
    if words and words[0] in ("a", "an"):  # "a hundred"
        words = words[1:]
    if words == ["one"] and not _COUNTED_ONE.match(m.string[m.end():]):
        return text  # "the second one"
    if words[:1] == ["oh"]:
        return text  # "oh, something funny"
    value = _value(words)
    return text if value is None else str(value)


def _replace_decade(m: re.Match[str]) -> str:
    """ "the nineteen-eighties" -> "the 1980s" (a decade word alone, "the eighties", is left to
    the era patterns)."""
    head, tens = m.group("head"), m.group("tens")
    if head is None or tens in ("thousands", "hundreds"):
        return m.group(0)
    head = re.sub(r"\s+", " ", head)
    if head == "two thousand":
        return m.group(0)
    return f"{(1900 if head == 'nineteen' else 2000) + _PLURAL_TENS[tens]}s"


def digits(text: str) -> str:
    """``text`` (lower case) with number words rewritten as digits."""
    text = re.sub(r"\b(?:two[\s-]+thousands|twenty[\s-]+hundreds)\b", "2000s", text)
    text = re.sub(r"\bnineteen[\s-]+hundreds\b", "1900s", text)
    text = re.sub(r"\btwenty[\s-]+tens\b", "2010s", text)
    text = _PLURAL_DECADE.sub(_replace_decade, text)
    return _RUN.sub(_replace_run, text)
