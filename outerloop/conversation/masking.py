"""The message text as the parser passes see it: normalised, with understood spans masked.

Each pass consumes what it understood, so a later pass cannot read it again: a title's words
are not tones, a runtime's number is not a year. A masked span becomes ``§`` and blanks, which
also ends a negation's reach ("no horror under 90 minutes" does not negate what follows).
"""

from __future__ import annotations

import re

from outerloop.conversation.lexicon import NEGATION_PHRASES
from outerloop.conversation.number_words import digits

_REWRITES = (
    (re.compile(r"[\u2018\u2019\u02bc`]"), "'"),
    (re.compile(r"[\u201c\u201d]"), '"'),
    (re.compile(r"\bnon-"), "not "),
    (re.compile(r"\b(?:anything|everything|all|any)\s+but\b"), "except"),
    (re.compile(r"\bother\s+than\b"), "except"),
    (re.compile(r"\bdo\s+not\b"), "don't"),
    (re.compile(r"\bwon't\b|\bwont\b"), "don't"),
    (re.compile(r"\bcan\s*not\b"), "can't"),
    (re.compile(r"\b(do|does|is|are|was|were|should|could|would|must|ca|did)n'?t\b"), r"\1n't"),
    (re.compile(r"\bi\s*'?\s*m\b"), "i'm"),
    (re.compile(r"\bshow\s+(me|us)\b"), r"give \1"),  # the verb, not "a show"
    (re.compile(r"\s+[-\u2013\u2014]+\s+|\s*[\u2013\u2014]\s*"), " ; "),
    (re.compile(r"\s+"), " "),
)
_NEGATION = re.compile(r"\b(?:" + "|".join(NEGATION_PHRASES) + r")\b")
_FREE = re.compile(r"\b([a-z]+)-free\b")  # "gore-free", "romance-free"


def rewrite_negations(s: str) -> str:
    """Negation cues of several words ("can't stand", "not a fan of", "sick of", "steer clear of")
    as the one word "no", and "X-free" as "no X"; the word pass then reads one kind of negator."""
    s = _FREE.sub(r"no \1", s)
    return _NEGATION.sub("no", s)


def rewrite_numbers(s: str) -> str:
    """Number words as digits ("ninety" -> "90", "nineteen eighty" -> "1980")."""
    return digits(s)


def normalise(text: str) -> str:
    s = text.lower()
    for pattern, repl in _REWRITES:
        s = pattern.sub(repl, s)
    return s.strip()


class MaskedText:
    """The message with consumed spans blanked out (a ``§`` keeps clause structure)."""

    def __init__(self, s: str) -> None:
        self.s = s

    def consume(self, start: int, end: int) -> None:
        if end > start:
            self.s = self.s[:start] + "§" + " " * (end - start - 1) + self.s[end:]

    def finditer(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return list(pattern.finditer(self.s))

