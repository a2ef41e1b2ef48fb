"""A conversation's state, rebuilt from its turns: each user turn refines the constraints before it.

The server keeps no session: the client sends the earlier turns with each message (the
``turns`` of the previous response), and the state is replayed from them with the rule parser.
Replaying is deterministic, so the same turns always mean the same constraints, whichever
server answers and whether or not an LLM read the latest message.

Merge rules (one place, so "refine" means the same everywhere):

* new genre asks replace the old ones ("make it a thriller"), unless the message says "also";
* exclusions accumulate; "romance is fine" lifts one; a new ask lifts an old exclusion of it
  and a new exclusion drops an old ask;
* a bound given again replaces the old one, and an old opposite bound that contradicts it goes;
* "shorter" / "longer" / "newer" / "older" move a bound past what was shown last (or past the
  current bound) and drop the opposite bound;
* tones accumulate; a tone's opposite ("dark" / "not dark") replaces it;
* new anchors replace old ones ("more like the second one"); "start over" resets everything.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from outerloop.conversation.catalog_facts import CatalogFacts
from outerloop.conversation.constraints import Constraints, Turn, Unapplied
from outerloop.conversation.lexicon import (
    CLASSIC_AGE_YEARS,
    DEFAULT_REFERENCE_RUNTIME_MIN,
    RECENT_SPAN_YEARS,
    RUNTIME_STEP_MIN,
    TONES,
    opposite_tone,
    tone_tags,
)
from outerloop.conversation.parser import ParsedMessage, parse_message
from outerloop.errors import UserInputError


@dataclass
class SessionState:
    """The constraints after a sequence of turns, the ids the last answer showed, and what the
    latest user message could not be used for (notes; the parts that read like a constraint but
    were not applied; the readings taken where a phrase had two)."""

    constraints: Constraints = field(default_factory=Constraints)
    shown: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unapplied: list[Unapplied] = field(default_factory=list)
    readings: list[str] = field(default_factory=list)


def _median(values: list[int]) -> int | None:
    return int(statistics.median(values)) if values else None


def _shown_values(facts: CatalogFacts, shown: Sequence[int], what: str) -> list[int]:
    arr = facts.runtimes if what == "runtime" else facts.years
    return [int(arr[i]) for i in shown if 0 < i < arr.shape[0] and arr[i] >= 0]


def _bounds(lo: int | None, hi: int | None, new: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
    """Apply a message's bounds: given sides replace; an old side that contradicts a new one goes."""
    nlo, nhi = new
    if nlo is not None:
        lo = nlo
        if hi is not None and nhi is None and hi < nlo:
            hi = None
    if nhi is not None:
        hi = nhi
        if lo is not None and nlo is None and lo > nhi:
            lo = None
    return lo, hi


def _relative_runtime(op: str, lo: int | None, hi: int | None, shown_rt: list[int]) -> tuple[int | None, int | None]:
    """ "shorter": an upper bound below the current one (or below what was shown); the lower
    bound goes, since it pointed the other way. "longer" mirrors it."""
    if op == "shorter":
        ref = hi if hi is not None else (_median(shown_rt) or DEFAULT_REFERENCE_RUNTIME_MIN)
        return None, max(10, (ref - RUNTIME_STEP_MIN) // 5 * 5)
    ref = lo if lo is not None else (_median(shown_rt) or DEFAULT_REFERENCE_RUNTIME_MIN)
    return -(-(ref + RUNTIME_STEP_MIN) // 5) * 5, None


def _relative_years(op: str, lo: int | None, hi: int | None, ref_years: list[int],
                    latest: int | None) -> tuple[int | None, int | None]:
    """ "newer": after the reference titles (the anchors, else what was shown), with the upper
    bound dropped ("from the 80s" then "newer" means past the 80s). "older" mirrors it."""
    ref = _median(ref_years)
    if op == "newer":
        if ref is not None:
            return max(ref + 1, lo + 1 if lo is not None else ref + 1), None
        if latest is None:
            return lo, hi
        return (lo + RECENT_SPAN_YEARS if lo is not None else latest - RECENT_SPAN_YEARS), None
    if ref is not None:
        return None, min(ref - 1, hi - 1 if hi is not None else ref - 1)
    if latest is None:
        return lo, hi
    return None, (hi - RECENT_SPAN_YEARS if hi is not None else latest - CLASSIC_AGE_YEARS)


def refine(prev: Constraints, delta: ParsedMessage, facts: CatalogFacts, shown: Sequence[int] = ()) -> Constraints:
    """The constraints after one more user message (see the module docstring for the rules)."""
    c = Constraints() if delta.reset else prev
    include, any_, exclude = set(c.include_genres), set(c.any_genres), set(c.exclude_genres)
    lo_rt, hi_rt, lo_y, hi_y = c.min_runtime_min, c.max_runtime_min, c.min_year, c.max_year
    if "genres" in delta.clear:
        include, any_ = set(), set()
    if "runtime" in delta.clear:
        lo_rt = hi_rt = None
    if "years" in delta.clear:
        lo_y = hi_y = None

    asked = set(delta.include_genres) | set(delta.any_genres)
    if asked:
        if delta.additive:
            include |= set(delta.include_genres)
            any_ |= set(delta.any_genres)
        else:
            include, any_ = set(delta.include_genres), set(delta.any_genres)
    exclude = (exclude - asked - set(delta.allow_genres)) | set(delta.exclude_genres)
    include -= exclude
    any_ -= exclude

    lo_rt, hi_rt = _bounds(lo_rt, hi_rt, delta.runtime)
    lo_y, hi_y = _bounds(lo_y, hi_y, delta.years)
    for op in delta.relative:
        if op in ("shorter", "longer"):
            lo_rt, hi_rt = _relative_runtime(op, lo_rt, hi_rt, _shown_values(facts, shown, "runtime"))
        else:  # "like Heat but newer": newer than the anchor; otherwise than what was shown
            ref_years = [a.year for a in delta.anchors if a.year is not None] or _shown_values(facts, shown, "year")
            lo_y, hi_y = _relative_years(op, lo_y, hi_y, ref_years, facts.latest_year)

    if lo_rt is not None and hi_rt is not None and lo_rt > hi_rt:
        delta.notes.append(f"at least {lo_rt} and at most {hi_rt} minutes contradict each other; kept the upper bound")
        lo_rt = None
    if lo_y is not None and hi_y is not None and lo_y > hi_y:
        delta.notes.append(f"from {lo_y} and until {hi_y} contradict each other; kept the later bound")
        lo_y = None

    tones = set(c.tones)
    for t in delta.tones:
        tones.discard(opposite_tone(t) or "")
        tones.add(t)
    # a tone whose genre is now excluded ("funny", then "no comedy") no longer applies
    tones = {t for t in tones if not any(g in exclude for canon in (TONES[t].genres if t in TONES else ())
                                         for g in facts.genres_for(canon))}
    prefer, avoid = tone_tags(sorted(tones))

    anchors = c.anchors
    if delta.anchors:
        anchors = ([a for a in c.anchors if a.item_id not in {n.item_id for n in delta.anchors}] + delta.anchors
                   if delta.additive else delta.anchors)
    return Constraints(
        include_genres=sorted(include), any_genres=sorted(any_), exclude_genres=sorted(exclude),
        min_runtime_min=lo_rt, max_runtime_min=hi_rt, min_year=lo_y, max_year=hi_y,
        kind=delta.kind if delta.kind is not None else c.kind,
        tones=sorted(tones), prefer_tags=prefer, exclude_tags=avoid, anchors=anchors,
    )


def check_turns(turns: Sequence[Turn], facts: CatalogFacts) -> None:
    """Reject item ids the catalog does not have, naming the turn (a 4xx, not a crash later)."""
    n = facts.n_items
    for i, turn in enumerate(turns):
        bad = [x for x in turn.item_ids if x > n]
        if bad:
            raise UserInputError(f"turns[{i}].item_ids: item {bad[0]} is not in the catalog (1..{n})")


def replay(turns: Sequence[Turn], facts: CatalogFacts) -> SessionState:
    """The state after ``turns`` (oldest first), parsed with the rule parser."""
    check_turns(turns, facts)
    state = SessionState()
    for turn in turns:
        if turn.role == "assistant":
            state.shown = list(turn.item_ids)
            continue
        delta = parse_message(turn.text, facts, state.shown)
        state.constraints = refine(state.constraints, delta, facts, state.shown)
        state.notes, state.unapplied, state.readings = delta.notes, delta.unapplied, delta.readings
    return state


def next_state(prior: SessionState, message: str, facts: CatalogFacts) -> tuple[SessionState, ParsedMessage]:
    """The state after one more user message, and what that message said on its own."""
    delta = parse_message(message, facts, prior.shown)
    constraints = refine(prior.constraints, delta, facts, prior.shown)  # may add notes to delta
    notes = list(delta.notes)
    if delta.is_empty():
        notes.append("no genre, length, era, tone or title was recognised in that message; "
                     "the earlier constraints were kept")
    return SessionState(constraints=constraints, shown=prior.shown, notes=notes, unapplied=list(delta.unapplied),
                        readings=list(delta.readings)), delta
